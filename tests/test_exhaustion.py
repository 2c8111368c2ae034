"""The proxy's own descriptor exhaustion is its own: counted, logged, backed off, never a backend's.

``omnixan-lb serve`` (uvloop, as in production) runs with a soft limit of 48 open files; a
flood of idle client connections uses them all. Meanwhile its health probes and its connects
to backends fail with EMFILE. Neither may mark a backend unhealthy or count against its
breaker, accepting must back off rather than spin, and once the flood ends every request
succeeds again on both backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from test_serve import Backend, free_port

FD_LIMIT = 48  # the idle server holds about 17


def limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


async def test_descriptor_exhaustion_marks_no_backend_unhealthy(tmp_path: Path) -> None:
    backends = [await Backend(name).start() for name in ("a", "b")]
    port, admin = free_port(), free_port()
    path = tmp_path / "lb.yaml"
    path.write_text(
        "\n".join(
            [
                f'listen: "127.0.0.1:{port}"',
                f'admin: {{listen: "127.0.0.1:{admin}", token_env: null}}',
                "health_check: {interval: 0.05, timeout: 0.5, unhealthy_threshold: 2}",
                "circuit_breaker: {failure_threshold: 2}",
                "limits: {header_timeout: 5}",
                "backends:",
                *(f"  - {{host: 127.0.0.1, port: {b.port}}}" for b in backends),
            ]
        )
        + "\n"
    )
    exe = Path(sys.executable).parent / "omnixan-lb"
    proc = subprocess.Popen(
        [str(exe), "serve", "--config", str(path)],
        stderr=subprocess.PIPE,
        env={**os.environ},
        preexec_fn=limit_descriptors,
    )
    flood: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 10
        for listening in (port, admin):  # both listeners are up before the flood
            while socket.socket().connect_ex(("127.0.0.1", listening)) != 0:
                assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
                await asyncio.sleep(0.02)
        for _ in range(80):  # idle connections: more than the server has descriptors for
            flood.append(socket.create_connection(("127.0.0.1", port)))
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(5):  # while exhausted: answered 503 by the proxy, or not accepted in time
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(f"http://127.0.0.1:{port}/", timeout=aiohttp.ClientTimeout(total=0.2)) as r:
                        statuses.append(r.status)
            for _ in range(3):  # the admin listener is exhausted too: it must come back after
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(
                        f"http://127.0.0.1:{admin}/healthz", timeout=aiohttp.ClientTimeout(total=0.2)
                    ):
                        pass
            await asyncio.sleep(0.5)  # ten probe intervals with no descriptor to probe with
            for sock in flood:
                sock.close()
            flood.clear()
            await asyncio.sleep(0.3)
            answers = []
            for _ in range(20):
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    answers.append((response.status, await response.text()))
            async with session.get(f"http://127.0.0.1:{admin}/backends") as response:
                listed = await response.json()
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
                metrics = await response.text()
        assert all(status == 503 for status in statuses)
        assert {status for status, _ in answers} == {200} and {text for _, text in answers} == {"a", "b"}
        assert [b["health_status"] for b in listed] == ["healthy", "healthy"]
        assert [b["failed_requests"] for b in listed] == [0, 0]
        assert all(b["circuit_state"] == "closed" for b in listed)
        counted = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in metrics.splitlines()
            if line.startswith(("omnixan_lb_resource_exhaustion_total", "omnixan_lb_probes_not_run_total"))
        }
        assert counted['omnixan_lb_resource_exhaustion_total{where="accept"}'] > 0, counted
        assert counted['omnixan_lb_probes_not_run_total{pool="default"}'] > 0
    finally:
        for sock in flood:
            sock.close()
        proc.terminate()
        _, err = await asyncio.to_thread(proc.communicate, timeout=10)
        for backend in backends:
            await backend.stop()
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    names = [e.get("event") for e in events]
    assert "proxy_out_of_resources" in names, names
    assert "health_probe_not_run" in names
    assert "health_state_changed" not in names
    # back-off, not a spin: the exhaustion log is rate-limited and accepting paused, so a handful of lines
    assert names.count("proxy_out_of_resources") <= 10
