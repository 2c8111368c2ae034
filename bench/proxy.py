"""Proxy throughput and latency: omnixan-lb against nginx, behind the same wrk load.

A benchmark, not a test. It installs what it needs (Debian ``nginx`` and
``wrk``, as root), starts two nginx backends that answer a small body, then
measures in one run, alternating, ``--reps`` times each:

- ``direct``: wrk straight to one backend (the ceiling);
- ``nginx``: nginx as reverse proxy (1 worker, upstream keepalive, least_conn,
  access log off);
- ``omnixan``: ``omnixan-lb serve`` (1 process, uvloop if installed,
  least_connections, TCP health checks every 5 s, metrics on, access log off);
- ``omnixan+log``: the same with the JSON access log on (to a file).

Same wrk settings for all (1 thread, 50 and 200 connections, ``--duration``
seconds). CPU pinning: the proxy under test on CPU 0; wrk and the backends on
CPU 1 (this machine has two cores). Prints requests/s, p50 and p99 latency
(medians over the repetitions) and the ratios omnixan/nginx.

    .venv/bin/python bench/proxy.py                 # 3 reps x 10 s (about 5 minutes)
    .venv/bin/python bench/proxy.py --reps 1 --duration 3
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKEND_PORTS = (19101, 19102)
NGINX_PORT = 19180
OMNIXAN_PORT = 19190
OMNIXAN_ADMIN = 19191
OMNIXAN_LOG_PORT = 19192
OMNIXAN_LOG_ADMIN = 19193


def ensure_tools() -> None:
    missing = [tool for tool in ("nginx", "wrk", "taskset") if shutil.which(tool) is None]
    if not missing:
        return
    packages = {"nginx": "nginx", "wrk": "wrk", "taskset": "util-linux"}
    print(f"installing {', '.join(missing)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *(packages[m] for m in missing)], check=True, env=env)


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Processes:
    """Everything this script starts, stopped by PID at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], cpu: int, **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["taskset", "-c", str(cpu), *args], **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc  # type: ignore[no-any-return]

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


NGINX_MAIN = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    {body}
}}
"""

BACKEND_BODY = """server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello from {port}\\n"; }} }}"""

PROXY_BODY = """
upstream backends {{ least_conn; {servers} keepalive 64; }}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://backends;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
}}
"""

OMNIXAN_CONFIG = """
listen: "127.0.0.1:{port}"
algorithm: least_connections
backends:
{backends}
admin: {{listen: "127.0.0.1:{admin}", token_env: null}}
health_check: {{type: tcp, interval: 5, timeout: 1}}
metrics_enabled: true
access_log: {access_log}
"""


def start_nginx(procs: Processes, workdir: Path, name: str, body: str, cpu: int) -> None:
    d = workdir / name
    d.mkdir()
    (d / "nginx.conf").write_text(NGINX_MAIN.format(dir=d, body=body))
    procs.start(["nginx", "-c", str(d / "nginx.conf")], cpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_omnixan(procs: Processes, workdir: Path, port: int, admin: int, access_log: bool) -> None:
    backends = "\n".join(f"  - {{host: 127.0.0.1, port: {p}}}" for p in BACKEND_PORTS)
    path = workdir / f"omnixan-{port}.yaml"
    path.write_text(OMNIXAN_CONFIG.format(port=port, admin=admin, backends=backends,
                                          access_log=str(access_log).lower()))  # fmt: skip
    log = open(workdir / f"omnixan-{port}.log", "wb")  # noqa: SIM115 - kept open for the process's life
    exe = str(Path(sys.executable).parent / "omnixan-lb")
    procs.start([exe, "serve", "--config", str(path), "--log-level", "warning"], 0, stdout=log, stderr=log)


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float


def wrk(port: int, connections: int, duration: int) -> Sample:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
         f"http://127.0.0.1:{port}/"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"    wrk reported errors on port {port}: {errors.group(0)}")
    return Sample(rps, _latency(out, "50%"), _latency(out, "99%"))


def _latency(out: str, pct: str) -> float:
    value, unit = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, nargs="+", default=[50, 200])
    args = parser.parse_args()
    ensure_tools()
    targets = {"direct": BACKEND_PORTS[0], "nginx": NGINX_PORT, "omnixan": OMNIXAN_PORT,
               "omnixan+log": OMNIXAN_LOG_PORT}  # fmt: skip
    procs = Processes()
    results: dict[tuple[str, int], list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="omnixan-bench-") as tmp:
        workdir = Path(tmp)
        try:
            for port in BACKEND_PORTS:
                start_nginx(procs, workdir, f"backend-{port}", BACKEND_BODY.format(port=port), cpu=1)
            servers = " ".join(f"server 127.0.0.1:{p};" for p in BACKEND_PORTS)
            start_nginx(procs, workdir, "proxy", PROXY_BODY.format(servers=servers, port=NGINX_PORT), cpu=0)
            start_omnixan(procs, workdir, OMNIXAN_PORT, OMNIXAN_ADMIN, access_log=False)
            start_omnixan(procs, workdir, OMNIXAN_LOG_PORT, OMNIXAN_LOG_ADMIN, access_log=True)
            for port in (*BACKEND_PORTS, NGINX_PORT, OMNIXAN_PORT, OMNIXAN_LOG_PORT):
                wait_port(port)
            for port in targets.values():  # warm up every path once
                wrk(port, 10, 1)
            for rep in range(args.reps):
                for connections in args.connections:
                    for name, port in targets.items():
                        sample = wrk(port, connections, args.duration)
                        results.setdefault((name, connections), []).append(sample)
                        print(f"  rep {rep + 1} c={connections:<3} {name:<12} {sample.rps:>9.0f} req/s  "
                              f"p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms", flush=True)  # fmt: skip
        finally:
            procs.stop_all()
    print_table(results, args)
    return 0


def print_table(results: dict[tuple[str, int], list[Sample]], args: argparse.Namespace) -> None:
    print()
    print(f"machine:  {_cpu()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"python:   {platform.python_implementation()} {platform.python_version()}")
    print(f"command:  {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"wrk:      1 thread, {args.duration} s per run, {args.reps} runs per cell (median shown), alternating")
    print("pinning:  proxy under test on CPU 0; wrk and the two nginx backends on CPU 1")
    print()
    print(f"{'target':<13} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'rps/nginx':>10} {'p99/nginx':>10}")
    for connections in args.connections:
        base = results.get(("nginx", connections))
        for name in ("direct", "nginx", "omnixan", "omnixan+log"):
            samples = results.get((name, connections))
            if not samples:
                continue
            rps = statistics.median(s.rps for s in samples)
            p50 = statistics.median(s.p50_ms for s in samples)
            p99 = statistics.median(s.p99_ms for s in samples)
            ratio = p99_ratio = ""
            if base:
                ratio = f"{rps / statistics.median(s.rps for s in base):.2f}"
                p99_ratio = f"{p99 / statistics.median(s.p99_ms for s in base):.2f}"
            print(f"{name:<13} {connections:>5} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {ratio:>10} {p99_ratio:>10}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
