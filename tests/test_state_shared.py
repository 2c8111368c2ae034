"""Several balancers sharing one Redis: two modules, two in-process servers, two ``omnixan-lb serve`` processes.

Every balancer here has its own module (its own round-robin position, its own
process in the last test); only the Redis and the key prefix are shared.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Probes, config
from load_balancing_module import (
    BackendConfig,
    FakeClock,
    HealthState,
    LoadBalancingModule,
    RateLimitConfig,
    RateLimitExceededError,
    Request,
)
from load_balancing_module.server.app import Server
from load_balancing_module.server.config import load_config
from load_balancing_module.state.redis import RedisStore
from proxy_helpers import AioBackend
from redis_helpers import MakeStore, Now, free_port

BACKENDS = [BackendConfig(host=f"s{i}.test", port=80) for i in range(3)]
COOKIE = "OMNIXAN_AFFINITY"


async def balancer(store: RedisStore, probes: Probes | None = None, **fields: object) -> LoadBalancingModule:
    lb = LoadBalancingModule(config(**fields), clock=FakeClock(), rng=random.Random(0), state_store=store, probe=probes)
    for backend in BACKENDS:
        await lb.add_backend(backend)
    return lb


async def route(lb: LoadBalancingModule, session: str | None = None, ip: str = "10.1.1.1") -> str:
    result = await lb.route_request(Request(client_ip=ip, session_id=session))
    await lb.complete_request(result, success=True)
    return result.backend_id


# -- two modules -----------------------------------------------------------------------------------


async def test_a_session_bound_through_one_balancer_is_honoured_by_the_other(make_store: MakeStore) -> None:
    now = Now()
    one = await balancer(await make_store(now=now), session_affinity=True)
    two = await balancer(await make_store(now=now), session_affinity=True)
    addresses = [b.address for b in BACKENDS]
    bound = [await route(one, f"user-{i}") for i in range(3)]
    assert bound == addresses  # round robin on one: each session on another backend
    assert await route(two) == addresses[0]  # two's own round robin is now one step on from one's
    for _ in range(2):
        assert [await route(two, f"user-{i}") for i in range(3)] == bound
    assert [await route(two) for _ in range(3)] == addresses[1:] + addresses[:1]  # stickiness did not pick
    assert (await one.get_load_distribution()).active_sessions == 3


async def test_a_rebind_on_one_balancer_moves_the_session_for_both(make_store: MakeStore) -> None:
    now = Now()
    probes = Probes(FakeClock())
    one = await balancer(await make_store(now=now), session_affinity=True)
    two = await balancer(await make_store(now=now), probes, session_affinity=True)
    first = await route(one, "user")
    await probes.set(two, first, HealthState.UNHEALTHY)  # only two sees it down
    moved = await route(two, "user")
    assert moved != first
    assert await route(one, "user") == moved


async def test_one_token_bucket_limits_a_client_across_balancers(make_store: MakeStore) -> None:
    now = Now()
    limits = RateLimitConfig(enabled=True, requests_per_second=2, burst_size=4, ddos_threshold=1000)
    one = await balancer(await make_store(now=now), rate_limit=limits)
    two = await balancer(await make_store(now=now), rate_limit=limits)
    for lb in (one, two, one, two):
        await route(lb)
    for lb in (one, two):
        with pytest.raises(RateLimitExceededError) as info:
            await route(lb)
        assert info.value.retry_after == pytest.approx(0.5) and not info.value.blocked
    await route(one, ip="10.9.9.9")  # another client has its own bucket
    now.advance(0.5)
    await route(two)  # refilled: one token, for whichever balancer asks first
    with pytest.raises(RateLimitExceededError):
        await route(one)
    assert one.counters["rate_limited"] + two.counters["rate_limited"] == 3


async def test_a_flood_block_from_one_balancer_applies_to_the_other(make_store: MakeStore) -> None:
    now = Now(1_000_000.0)
    limits = RateLimitConfig(
        enabled=True, requests_per_second=1000, burst_size=1000, ddos_threshold=3, ddos_block_seconds=30
    )
    one = await balancer(await make_store(now=now), rate_limit=limits)
    two = await balancer(await make_store(now=now), rate_limit=limits)
    for lb in (one, two, one):
        await route(lb)
    with pytest.raises(RateLimitExceededError) as info:
        await route(two)  # the fourth attempt within a second, counted across both
    assert info.value.blocked and info.value.retry_after == 30.0
    now.advance(10.0)
    with pytest.raises(RateLimitExceededError) as info:
        await route(one)
    assert info.value.blocked and info.value.retry_after == pytest.approx(20.0)
    now.advance(20.0)
    await route(one)


async def test_balancers_keep_serving_when_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        store = RedisStore(f"redis://127.0.0.1:{closed.getsockname()[1]}/0")
        limits = RateLimitConfig(enabled=True, requests_per_second=1, burst_size=1)
        lb = await balancer(store, session_affinity=True, rate_limit=limits)
        caplog.set_level(logging.WARNING, logger="load_balancing_module")
        started = time.monotonic()
        try:
            routed = [await route(lb, "user") for _ in range(6)]  # over the limit, and sticky: neither applies
            assert routed == [b.address for b in BACKENDS] * 2
            assert (await lb.get_load_distribution()).active_sessions == 0
        finally:
            await store.close()
        assert time.monotonic() - started < 1.0
    assert [getattr(r, "event", None) for r in caplog.records].count("state_store_unavailable") == 1


# -- two servers (config file -> Server -> proxy) ------------------------------------------------------


def shared(url: str, prefix: str) -> str:
    """The ``state:`` value for a Redis under ``prefix``."""
    return f"{{url: '{url}', prefix: '{prefix}'}}"


def write_config(path: Path, backends: list[AioBackend], state: str, *extra: str) -> Path:
    lines = [
        'listen: "127.0.0.1:0"',
        'admin: {listen: "127.0.0.1:0", token_env: null}',
        "health_check: {enabled: false}",
        "session_affinity: true",
        f"state: {state}",
        "backends:",
    ]
    lines += [f"  - {{host: 127.0.0.1, port: {b.port}}}" for b in backends]
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


@pytest.fixture
async def named_backends() -> AsyncIterator[list[AioBackend]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(AioBackend(name)) for name in ("a", "b", "c")]


async def fetch(port: int, cookie: str | None = None) -> tuple[str, str | None]:
    """(the backend that answered, the affinity cookie the proxy set, if any)."""
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.get(f"http://127.0.0.1:{port}/", headers=headers) as response,
    ):
        assert response.status == 200
        body = await response.json()
        morsel = response.cookies.get(COOKIE)
        return body["backend"], morsel.value if morsel else None


async def sticky_across(first_port: int, second_port: int) -> None:
    """Sessions started on the first proxy are served by the same backends through the second.

    Both proxies start fresh (round robin from the first backend); the second is moved one step
    on first, so that a session it bound on its own would land on another backend."""
    started = [await fetch(first_port) for _ in range(3)]
    assert [name for name, _ in started] == ["a", "b", "c"] and all(cookie for _, cookie in started)
    assert (await fetch(second_port))[0] == "a"
    for name, cookie in started:
        assert [(await fetch(second_port, cookie))[0] for _ in range(3)] == [name] * 3


async def test_two_servers_share_sticky_sessions_through_redis(
    tmp_path: Path, named_backends: list[AioBackend], redis_url: str, redis_prefix: str
) -> None:
    paths = [write_config(tmp_path / f"lb{i}.yaml", named_backends, shared(redis_url, redis_prefix)) for i in (1, 2)]
    servers = [Server(path, load_config(path)) for path in paths]
    for server in servers:
        await server.start()
    try:
        assert all(isinstance(s.lb.store, RedisStore) and s.lb.store is s.store for s in servers)
        await sticky_across(servers[0].proxy.port, servers[1].proxy.port)
    finally:
        for server in servers:
            await server.shutdown()


async def test_a_reload_that_changes_state_keeps_the_running_store(
    tmp_path: Path,
    named_backends: list[AioBackend],
    redis_url: str,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_config(tmp_path / "lb.yaml", named_backends, shared(redis_url, redis_prefix))
    server = Server(path, load_config(path))
    await server.start()
    store = server.store
    try:
        name, cookie = await fetch(server.proxy.port)
        write_config(path, named_backends, "memory", "algorithm: least_connections")
        caplog.set_level(logging.INFO, logger="load_balancing_module")
        assert await server.reload()
        assert server.lb.router.kind.value == "least_connections"  # the rest of the reload applied
        assert server.lb.store is store and server.config.state.prefix == redis_prefix
        assert (await fetch(server.proxy.port, cookie))[0] == name
        needs = [r for r in caplog.records if getattr(r, "event", None) == "reload_needs_restart"]
        assert needs and "state" in needs[0].fields["settings"]  # type: ignore[attr-defined]
    finally:
        await server.shutdown()


async def test_shutdown_closes_the_store(
    tmp_path: Path, named_backends: list[AioBackend], redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "lb.yaml", named_backends, shared(redis_url, redis_prefix))
    server = Server(path, load_config(path))
    assert server.store is not None
    closed: list[bool] = []
    close = server.store.close

    async def recording_close() -> None:
        closed.append(True)
        await close()

    monkeypatch.setattr(server.store, "close", recording_close)
    await server.start()
    await fetch(server.proxy.port)
    await server.shutdown()
    assert closed == [True]


async def test_a_server_starts_and_serves_while_redis_is_down(
    tmp_path: Path, named_backends: list[AioBackend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="load_balancing_module")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        path = write_config(tmp_path / "lb.yaml", named_backends, f"redis://127.0.0.1:{closed.getsockname()[1]}/0")
        server = Server(path, load_config(path))
        await server.start()
        try:
            answers = [await fetch(server.proxy.port, "same-cookie") for _ in range(3)]
            assert sorted(name for name, _ in answers) == ["a", "b", "c"]  # served, unsticky
            text = generate_latest(server.registry).decode()
            metrics = {
                s.name: s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name.startswith("omnixan_lb_state_store")
            }
            assert metrics["omnixan_lb_state_store_up"] == 0
            assert metrics["omnixan_lb_state_store_errors_total"] >= 1
            assert metrics["omnixan_lb_state_store_fallbacks_total"] >= metrics["omnixan_lb_state_store_errors_total"]
        finally:
            await server.shutdown()
    assert any(getattr(r, "event", None) == "state_store_unavailable" for r in caplog.records)


# -- two omnixan-lb serve processes ---------------------------------------------------------------------


async def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()
        assert time.monotonic() < deadline, "omnixan-lb serve did not start"
        await asyncio.sleep(0.02)


async def test_two_serve_processes_share_sticky_sessions(
    tmp_path: Path,
    named_backends: list[AioBackend],
    redis_url: str,
    redis_prefix: str,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    exe = Path(sys.executable).parent / "omnixan-lb"
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports):
        path = write_config(tmp_path / f"lb{i}.yaml", named_backends, shared(redis_url, redis_prefix))
        path.write_text(path.read_text().replace('listen: "127.0.0.1:0"', f'listen: "127.0.0.1:{port}"', 1))
        processes.append(
            subprocess.Popen(
                [str(exe), "serve", "--config", str(path), "--log-level", "warning"],
                stderr=subprocess.PIPE,
                env={**os.environ},
            )
        )
    for port, proc in zip(ports, processes, strict=True):
        await wait_for_port(port, proc)
    await sticky_across(ports[0], ports[1])
    for proc in processes:
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0
