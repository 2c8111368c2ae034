"""contrib/omnixan-lb.service and the Dockerfile: what can be checked without systemd as PID 1 or
a container registry (docs/deploy.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "omnixan-lb.service"
DOCKERFILE = ROOT / "Dockerfile"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_runs_serve_as_a_notify_service_that_reloads_on_sighup() -> None:
    unit = unit_settings()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == ["/usr/bin/omnixan-lb serve --config /etc/omnixan-lb/config.yaml"]
    assert unit["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "Restart": "on-failure",
    }.items():
        assert unit[key] == [value], key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """Offline (no systemd running needed). verify also checks that the commands exist: the copy
    points at this environment's omnixan-lb, the rest of the unit is as shipped."""
    exe = Path(sys.executable).parent / "omnixan-lb"
    unit = tmp_path / "omnixan-lb.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/omnixan-lb", str(exe)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # An unknown or misspelt key is only a warning to verify: none is allowed.
    assert done.stderr.strip() == "", done.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_dockerfile_builds_the_compiled_wheel_and_runs_it_as_non_root() -> None:
    instructions = dockerfile_instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    builder = " ".join(args for op, args in instructions if op == "RUN")
    assert "gcc" in builder and "OMNIXAN_LB_COMPILE=1 pip wheel" in builder
    assert "'omnixan-lb[server,redis]'" in builder
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    assert any(op == "USER" for op, _ in last_stage)
    health = [args for op, args in instructions if op == "HEALTHCHECK"]
    assert len(health) == 1 and "http://127.0.0.1:9090/healthz" in health[0] and "curl" not in health[0]
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    assert any(op == "EXPOSE" and "8080" in args.split() for op, args in instructions)
    assert any(op == "VOLUME" and "/etc/omnixan-lb" in args for op, args in instructions)
    cmd = dict(instructions)["CMD"]
    assert cmd == '["serve", "--config", "/etc/omnixan-lb/config.yaml"]'


def test_the_health_check_command_passes_on_200_and_fails_on_503(tmp_path: Path) -> None:
    """The HEALTHCHECK's own command, run against a real admin listener (on a free port for 9090)."""
    health = next(args for op, args in dockerfile_instructions() if op == "HEALTHCHECK")
    argv = json.loads(health.split("CMD", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        admin = s.getsockname()[1]
    config = tmp_path / "lb.yaml"
    config.write_text(
        'listen: "127.0.0.1:0"\n'
        f'admin: {{listen: "127.0.0.1:{admin}", token_env: null}}\n'
        "health_check: {enabled: false}\n"
        "backends:\n  - {host: 127.0.0.1, port: 9}\n"
    )
    exe = Path(sys.executable).parent / "omnixan-lb"
    proc = subprocess.Popen([str(exe), "serve", "--config", str(config), "--log-level", "warning"])
    check = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    check = [arg.replace("127.0.0.1:9090", f"127.0.0.1:{admin}") for arg in check]
    try:
        deadline = time.monotonic() + 20
        while not listening(admin):
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        assert subprocess.run(check, capture_output=True, timeout=30).returncode == 0
        request = urllib.request.Request(f"http://127.0.0.1:{admin}/backends/127.0.0.1:9", method="DELETE")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        # No backend left: /healthz answers 503, and the container would show unhealthy.
        assert subprocess.run(check, capture_output=True, timeout=30).returncode != 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
