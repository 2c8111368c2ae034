"""``omnixan-lb serve``: start, reload (SIGHUP), drain (SIGTERM), admin health and metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from load_balancing_module import ConfigurationError
from load_balancing_module.server.admin import admin_token
from load_balancing_module.server.app import Server
from load_balancing_module.server.config import AdminConfig, load_config


class Backend:
    """A real aiohttp backend on 127.0.0.1 that names itself and can answer slowly."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.port = 0
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Backend:
        async def handle(request: web.Request) -> web.Response:
            self.hits += 1
            await asyncio.sleep(self.delay)
            return web.Response(text=self.name)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def write_config(path: Path, backends: list[Backend], **extra: str) -> Path:
    lines = [
        'listen: "127.0.0.1:0"',
        'admin: {listen: "127.0.0.1:0", token_env: null}',
        "health_check: {enabled: false}",
        "backends:",
    ]
    lines += [f"  - {{host: 127.0.0.1, port: {b.port}}}" for b in backends]
    lines += [f"{key}: {value}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    started = [await Backend(name).start() for name in ("a", "b", "c")]
    yield started
    for backend in started:
        await backend.stop()


async def get(port: int, path: str = "/") -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def test_serves_through_the_proxy_with_admin_health_and_metrics(tmp_path: Path, backends: list[Backend]) -> None:
    path = write_config(tmp_path / "lb.yaml", backends[:2])
    server = Server(path, load_config(path))
    await server.start()
    try:
        answers = {(await get(server.proxy.port))[1] for _ in range(4)}
        assert answers == {"a", "b"}
        status, body = await get(server.admin.port, "/healthz")
        assert status == 200 and '"healthy_backends": 2' in body
        status, body = await get(server.admin.port, "/metrics")
        assert status == 200 and "omnixan_lb_requests_total" in body
        assert 'omnixan_lb_completed_requests_total{backend="127.0.0.1:' in body
        assert 'outcome="success",pool="default"} 2.0' in body
        assert 'code_class="2xx",pool="default"} 2.0' in body
    finally:
        await server.shutdown()


async def test_reload_applies_backend_changes_without_dropping_requests(
    tmp_path: Path, backends: list[Backend]
) -> None:
    path = write_config(tmp_path / "lb.yaml", backends[:2])
    server = Server(path, load_config(path))
    await server.start()
    try:
        backends[0].delay = 0.2
        slow = asyncio.create_task(get(server.proxy.port))  # round robin: the first goes to "a"
        await asyncio.sleep(0.05)
        write_config(path, backends[1:], algorithm="least_connections")
        assert await server.reload()
        assert await slow == (200, "a")  # in flight on the removed backend: finished
        assert sorted(server.lb.backends) == sorted(f"127.0.0.1:{b.port}" for b in backends[1:])
        assert server.lb.router.kind.value == "least_connections"
        answers = {(await get(server.proxy.port))[1] for _ in range(6)}
        assert answers == {"b", "c"}
    finally:
        await server.shutdown()


async def test_a_bad_reload_keeps_the_old_config(tmp_path: Path, backends: list[Backend]) -> None:
    path = write_config(tmp_path / "lb.yaml", backends[:1])
    server = Server(path, load_config(path))
    await server.start()
    try:
        path.write_text("backends: [{host: 127.0.0.1, port: 0}]\n")
        assert not await server.reload()
        assert list(server.lb.backends) == [f"127.0.0.1:{backends[0].port}"]
        assert await get(server.proxy.port) == (200, "a")
    finally:
        await server.shutdown()


def test_a_non_loopback_admin_listener_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LB_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match=r"admin\.listen"):
        admin_token(AdminConfig(listen="0.0.0.0:9090", token_env="LB_TEST_TOKEN"))
    assert admin_token(AdminConfig(listen="127.0.0.1:9090", token_env="LB_TEST_TOKEN")) is None
    monkeypatch.setenv("LB_TEST_TOKEN", "s3cret")
    assert admin_token(AdminConfig(listen="0.0.0.0:9090", token_env="LB_TEST_TOKEN")) == "s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path, backends: list[Backend]) -> None:
    port = free_port()
    for b in backends:
        b.delay = 0.3  # long enough that every request is still at a backend when SIGTERM lands
    path = write_config(tmp_path / "lb.yaml", backends)
    path.write_text(path.read_text().replace('listen: "127.0.0.1:0"', f'listen: "127.0.0.1:{port}"', 1))
    exe = Path(sys.executable).parent / "omnixan-lb"
    proc = subprocess.Popen(
        [str(exe), "serve", "--config", str(path), "--log-level", "warning"], stderr=subprocess.PIPE, env={**os.environ}
    )
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "the server did not start"
            await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as session:

            async def one() -> int:
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    await response.read()
                    return response.status

            load = [asyncio.create_task(one()) for _ in range(30)]
            while sum(b.hits for b in backends) < 30:  # every request has reached a backend
                assert time.monotonic() < deadline + 10, "requests did not reach the backends"
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            statuses = await asyncio.gather(*load)
        assert statuses == [200] * 30
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
