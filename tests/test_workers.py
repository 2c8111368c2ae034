"""``workers: 2``: real ``omnixan-lb serve`` processes, real backends, real traffic on 127.0.0.1.

Each test starts a supervisor and its two workers, sends requests on fresh connections (so
that the kernel spreads them over both workers' sockets) and reads the admin API, which the
supervisor serves as one endpoint for all workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import async_playwright

from admin_helpers import CHROMIUM, CHROMIUM_ARGS
from load_balancing_module.server.http import AFFINITY_COOKIE
from proxy_helpers import AioBackend
from redis_helpers import free_port

COOKIE = AFFINITY_COOKIE.decode()
Serve = Callable[..., Awaitable["Running"]]


class Running:
    """A running ``omnixan-lb serve`` with workers: its process, proxy port and admin URL."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, admin: str, config: Path) -> None:
        self.proc = proc
        self.port = port
        self.admin = admin
        self.config = config

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(self.admin + path) as response:
            assert response.status == 200, await response.text()
            return await response.json() if response.content_type == "application/json" else await response.text()

    async def send(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.request(method, self.admin + path, json=body) as response:
            return response.status, await response.json()

    async def workers(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (await self.get("/distribution"))["workers"]
        return rows

    async def metric(self, name: str) -> float:
        """The sum of a family's samples named ``name`` in ``/metrics``."""
        text = await self.get("/metrics")
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name))

    def log(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode() if self.proc.poll() is not None else ""


def config_text(port: int, admin: int, backends: list[AioBackend], *extra: str) -> str:
    lines = [
        f'listen: "127.0.0.1:{port}"',
        "workers: 2",
        f'admin: {{listen: "127.0.0.1:{admin}", token_env: null}}',
        "access_log: false",
        "drain_timeout: 5",
        "backends:" if backends else "backends: []",
        *(f"  - {{host: 127.0.0.1, port: {b.port}}}" for b in backends),
        *extra,
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def serve(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> Serve:
    async def start(backends: list[AioBackend], *extra: str) -> Running:
        port, admin = free_port(), free_port()
        path = tmp_path / "lb.yaml"
        path.write_text(config_text(port, admin, backends, *extra))
        exe = Path(sys.executable).parent / "omnixan-lb"
        proc = subprocess.Popen(
            [str(exe), "serve", "--config", str(path), "--log-level", "warning"],
            stderr=subprocess.PIPE,
            env={**os.environ},
        )
        processes.append(proc)
        running = Running(proc, port, f"http://127.0.0.1:{admin}", path)
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, running.log()
            assert time.monotonic() < deadline, "omnixan-lb serve with 2 workers did not start"
            try:
                rows = await running.workers()
            except (aiohttp.ClientError, AssertionError):
                rows = []
            if len(rows) == 2 and all(row["up"] for row in rows):
                return running
            await asyncio.sleep(0.02)

    return start


@pytest.fixture
async def backends() -> AsyncIterator[list[AioBackend]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(AioBackend(name)) for name in ("a", "b", "c")]


async def fetch_many(port: int, count: int, headers: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """``count`` GETs, each on a connection of its own: (status, backend name or '')."""
    out = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:
        for _ in range(count):
            async with http.get(f"http://127.0.0.1:{port}/", headers=headers) as response:
                body = await response.json() if response.status == 200 else {}
                out.append((response.status, body.get("backend", "")))
    return out


async def test_two_workers_serve_and_the_admin_api_sums_them_exactly(serve: Serve, backends: list[AioBackend]) -> None:
    running = await serve(backends[:2])
    answers = await fetch_many(running.port, 200)
    assert {status for status, _ in answers} == {200}
    rows = await running.workers()
    assert len({row["pid"] for row in rows}) == 2
    assert all(row["total_requests"] > 0 for row in rows), rows  # both workers served
    assert sum(row["total_requests"] for row in rows) == 200
    distribution = await running.get("/distribution")
    assert distribution["total_requests"] == 200
    assert sum(b["total_requests"] for b in distribution["backends"].values()) == 200
    assert await running.metric("omnixan_lb_requests_total{") == 200
    assert await running.metric("omnixan_lb_routed_requests_total{") == 200
    assert await running.metric('omnixan_lb_backends{pool="default"}') == 2  # a fact, not summed
    assert await running.metric('omnixan_lb_workers{state="up"}') == 2
    exe = Path(sys.executable).parent / "omnixan-lb"
    shown = await asyncio.to_thread(
        subprocess.run, [str(exe), "status", "--admin", running.admin], capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    assert "Workers" in shown.stdout and all(str(row["pid"]) in shown.stdout for row in rows)


async def test_a_killed_worker_is_replaced_and_a_steady_load_of_gets_loses_none(
    serve: Serve, backends: list[AioBackend]
) -> None:
    """Idempotent GETs on keep-alive connections; a connection the dead worker held is retried
    once elsewhere, as browsers and HTTP clients retry an idempotent request on a dropped
    connection. Every request gets its 200, none a 5xx."""
    running = await serve(backends[:2])
    victim = (await running.workers())[0]
    statuses: list[int] = []
    retried = 0
    stop = time.monotonic() + 1.5

    async def client() -> None:
        nonlocal retried
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < stop:
                for attempt in range(3):
                    try:
                        async with http.get(f"http://127.0.0.1:{running.port}/") as response:
                            await response.read()
                            statuses.append(response.status)
                            break
                    except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
                        assert attempt < 2, "a GET failed three times"
                        retried += 1

    async def kill_later() -> None:
        await asyncio.sleep(0.4)
        os.kill(victim["pid"], signal.SIGKILL)

    await asyncio.gather(*(client() for _ in range(8)), kill_later())
    assert statuses and set(statuses) == {200}, set(statuses)
    assert retried <= 8  # at most the connections the dead worker held
    deadline = time.monotonic() + 15
    while True:
        rows = await running.workers()
        if all(row["up"] for row in rows) and rows[0]["pid"] != victim["pid"]:
            break
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.05)
    assert rows[0]["restarts"] == 1 and rows[1]["restarts"] == 0
    assert await running.metric("omnixan_lb_worker_restarts_total") == 1
    assert {status for status, _ in await fetch_many(running.port, 20)} == {200}


async def test_admin_changes_reach_every_worker(serve: Serve, backends: list[AioBackend]) -> None:
    running = await serve(backends[:1])
    status, added = await running.send("POST", "/backends", {"host": "127.0.0.1", "port": backends[1].port})
    assert status == 201, added
    status, _ = await running.send("DELETE", f"/backends/127.0.0.1:{backends[0].port}")
    assert status == 200
    answers = await fetch_many(running.port, 40)
    assert answers == [(200, "b")] * 40  # both workers dropped a and took b
    assert all(row["total_requests"] > 0 for row in await running.workers())
    status, _ = await running.send("PUT", "/algorithm", {"algorithm_type": "least_connections"})
    assert status == 200
    assert {row["algorithm"] for row in await running.workers()} == {"least_connections"}
    status, result = await running.send("POST", f"/backends/{added['backend_id']}/drain", {"timeout": 1})
    assert status == 200 and result["completed"] is True, result
    assert [b for b in await running.get("/backends")] == []
    assert {status for status, _ in await fetch_many(running.port, 6)} == {503}  # no worker has a backend left


async def test_discovery_runs_in_the_supervisor_and_every_worker_follows(
    serve: Serve, backends: list[AioBackend], tmp_path: Path
) -> None:
    listed = tmp_path / "backends.yaml"
    listed.write_text(f"- {{host: 127.0.0.1, port: {backends[0].port}}}\n")
    running = await serve([], f'discovery: {{file: "{listed}", interval: 0.05}}')
    assert await fetch_many(running.port, 20) == [(200, "a")] * 20
    moved = tmp_path / "next.yaml"
    moved.write_text(f"backends: [{{host: 127.0.0.1, port: {backends[1].port}}}]\n")
    os.replace(moved, listed)
    deadline = time.monotonic() + 10
    while {b["port"] for b in await running.get("/backends")} != {backends[1].port}:  # a drained, b added
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    answers = await fetch_many(running.port, 40)
    assert answers == [(200, "b")] * 40  # both workers took b and dropped a
    assert all(row["total_requests"] > 0 for row in await running.workers())
    listed.write_text("backends: [{host: 127.0.0.1}]\n")  # bad: counted once, b stays
    while await running.metric("omnixan_lb_discovery_errors_total{") < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert await fetch_many(running.port, 10) == [(200, "b")] * 10


async def test_reload_and_drain_reach_every_worker(serve: Serve, backends: list[AioBackend]) -> None:
    slow = AioBackend("slow", handler=_slow_answer)
    async with slow:
        running = await serve([backends[0], slow])
        running.config.write_text(
            running.config.read_text().replace(f"port: {backends[0].port}", f"port: {backends[1].port}")
        )
        running.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while {b["port"] for b in await running.get("/backends")} != {backends[1].port, slow.port}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        # The supervisor's list changes first, then each worker applies the reload: wait for both.
        while "a" in {name for _, name in await fetch_many(running.port, 10)}:
            assert time.monotonic() < deadline, "a worker did not reload"
            await asyncio.sleep(0.02)
        names = {name for _, name in await fetch_many(running.port, 30)}
        assert "a" not in names and "b" in names  # every worker reloaded

        async def slow_get() -> int:
            async with aiohttp.ClientSession() as http:
                for _ in range(10):  # until the slow backend takes one
                    async with http.get(f"http://127.0.0.1:{running.port}/") as response:
                        if (await response.json())["backend"] == "slow":
                            return response.status
            return 0

        in_flight = asyncio.ensure_future(slow_get())
        await asyncio.sleep(0.1)
        running.proc.send_signal(signal.SIGTERM)
        assert await in_flight == 200  # drained, not cut off
        assert await asyncio.to_thread(running.proc.wait, 15) == 0


async def _slow_answer(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(0.3)
    return web.json_response({"backend": "slow"})


async def test_sticky_sessions_hold_across_workers(serve: Serve, backends: list[AioBackend]) -> None:
    running = await serve(backends, "session_affinity: true")
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:
        for _ in range(3):
            async with http.get(f"http://127.0.0.1:{running.port}/") as response:
                first = (await response.json())["backend"]
                cookie = response.cookies[COOKIE].value
            for _ in range(20):  # fresh connections: both workers see the cookie
                async with http.get(
                    f"http://127.0.0.1:{running.port}/", headers={"Cookie": f"{COOKIE}={cookie}"}
                ) as response:
                    assert (await response.json())["backend"] == first
        # A session id (X-Session-ID) binds through the store the workers share.
        for session in ("s-1", "s-2", "s-3"):
            names = {name for _, name in await fetch_many(running.port, 12, {"X-Session-ID": session})}
            assert len(names) == 1, names
    assert all(row["total_requests"] > 0 for row in await running.workers())


async def test_the_rate_limit_is_one_budget_across_workers(serve: Serve, backends: list[AioBackend]) -> None:
    running = await serve(
        backends[:1], "rate_limit: {enabled: true, requests_per_second: 0.001, burst_size: 10, ddos_threshold: 1000}"
    )
    answers = await fetch_many(running.port, 30)
    assert [status for status, _ in answers].count(200) == 10
    assert [status for status, _ in answers].count(429) == 20
    assert all(row["total_requests"] > 0 for row in await running.workers())  # both workers took part


async def test_health_checks_run_once_and_every_worker_follows(serve: Serve, backends: list[AioBackend]) -> None:
    running = await serve(
        backends[:2], "health_check: {type: http, path: /health, interval: 0.1, unhealthy_threshold: 1, jitter: 0}"
    )
    before = sum(1 for _, path in backends[0].requests if path == "/health")
    await asyncio.sleep(0.5)
    probes = sum(1 for _, path in backends[0].requests if path == "/health") - before
    assert 2 <= probes <= 7, probes  # one prober (every 0.1 s), not three
    await backends[1].__aexit__(None, None, None)  # b goes down
    deadline = time.monotonic() + 10
    while (await running.get("/distribution"))["backends"][f"127.0.0.1:{backends[1].port}"]["health_status"] != (
        "unhealthy"
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    answers = await fetch_many(running.port, 20)
    assert answers == [(200, "a")] * 20  # neither worker sends to b


async def test_with_redis_every_worker_shares_one_budget_and_one_session_table(
    serve: Serve, backends: list[AioBackend], redis_url: str, redis_prefix: str
) -> None:
    running = await serve(
        backends,
        f"state: {{url: '{redis_url}', prefix: '{redis_prefix}'}}",
        "session_affinity: true",
        "rate_limit: {enabled: true, requests_per_second: 0.001, burst_size: 30, ddos_threshold: 1000}",
    )
    answers = await fetch_many(running.port, 24, {"X-Session-ID": "one"})
    assert len({name for _, name in answers}) == 1 and {status for status, _ in answers} == {200}
    answers = await fetch_many(running.port, 12)
    assert [status for status, _ in answers].count(200) == 6  # 30 tokens for this client, all workers
    assert all(row["total_requests"] > 0 for row in await running.workers())


async def test_the_dashboard_shows_a_row_per_worker(serve: Serve, backends: list[AioBackend]) -> None:
    running = await serve(backends[:2])
    await fetch_many(running.port, 20)
    pids = sorted(str(row["pid"]) for row in await running.workers())
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(running.admin + "/")
            await page.wait_for_selector("#workers tbody tr[data-worker='1']", timeout=10_000)
            shown = await page.eval_on_selector_all(
                "#workers tbody tr td:nth-child(2)", "cells => cells.map(c => c.textContent)"
            )
            assert sorted(shown) == pids
            assert await page.is_visible("#workers-section")
        finally:
            await browser.close()


async def _fetch_paths(port: int, paths: list[str]) -> list[tuple[int, str]]:
    out = []
    connector = aiohttp.TCPConnector(force_close=True)  # a connection each: both workers take some
    async with aiohttp.ClientSession(connector=connector) as http:
        for path in paths:
            async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                body = await response.json() if response.status == 200 else {}
                out.append((response.status, body.get("backend", "")))
    return out


async def test_routes_and_pools_in_every_worker_with_health_per_pool_and_reload(
    serve: Serve, backends: list[AioBackend]
) -> None:
    """Every worker routes /api/ to pool api; the supervisor probes each pool and tells the
    workers per pool; a reload that adds a route reaches every worker."""
    a, b, c = backends
    running = await serve(
        [a],
        "health_check: {type: http, path: /health, interval: 0.05, unhealthy_threshold: 1, healthy_threshold: 1}",
        "pools:",
        f"  api: {{backends: [{{host: 127.0.0.1, port: {b.port}}}]}}",
        f"  other: {{backends: [{{host: 127.0.0.1, port: {c.port}}}]}}",
        "routes:",
        "  - {match: {path_prefix: /api/}, pool: api}",
    )
    answers = await _fetch_paths(running.port, ["/api/x", "/"] * 15)
    assert answers == [(200, "b"), (200, "a")] * 15
    assert all(row["total_requests"] > 0 for row in await running.workers())

    await b.stop()  # pool api's only backend goes down: every worker hears it from the supervisor
    deadline = time.monotonic() + 10
    while {status for status, _ in await _fetch_paths(running.port, ["/api/x"] * 6)} != {503}:
        assert time.monotonic() < deadline, "the workers still send to a backend the supervisor found down"
        await asyncio.sleep(0.05)
    assert {s for s, _ in await _fetch_paths(running.port, ["/"] * 6)} == {200}  # the default pool is fine

    running.config.write_text(running.config.read_text() + "  - {match: {path_prefix: /other/}, pool: other}\n")
    running.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while await _fetch_paths(running.port, ["/other/y"] * 6) != [(200, "c")] * 6:
        assert time.monotonic() < deadline, "a worker did not take the reloaded routes"
        await asyncio.sleep(0.05)


async def test_a_sticky_pool_shares_its_sessions_across_workers(serve: Serve, backends: list[AioBackend]) -> None:
    """Sessions of a pool other than the default live in the workers' shared region too, under the
    pool's name: the same session id in another pool is another session."""
    a, b, c = backends
    async with AioBackend("d") as d:
        running = await serve(
            [a, b],
            "algorithm: round_robin",
            "pools:",
            f"  api: {{session_affinity: true, backends: [{{host: 127.0.0.1, port: {c.port}}}, "
            f"{{host: 127.0.0.1, port: {d.port}}}]}}",
            "routes:",
            "  - {match: {path_prefix: /api/}, pool: api}",
        )
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            for session in ("s-1", "s-2", "s-3", "s-4"):
                names = set()
                for _ in range(12):  # fresh connections: both workers see the session
                    async with http.get(
                        f"http://127.0.0.1:{running.port}/api/x", headers={"X-Session-ID": session}
                    ) as response:
                        names.add((await response.json())["backend"])
                assert len(names) == 1 and names <= {"c", "d"}, names
            # the default pool is not sticky: the same session id there is round robin
            defaults = {name for _, name in await fetch_many(running.port, 6, {"X-Session-ID": "s-1"})}
            assert defaults == {"a", "b"}
        assert all(row["total_requests"] > 0 for row in await running.workers())
