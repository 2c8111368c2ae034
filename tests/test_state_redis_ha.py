"""The Redis store through a failover: real Sentinels and a real Cluster, a node SIGKILLed under load.

A module with sticky sessions and a rate limit serves a request every few milliseconds through a
:class:`RedisStore` on a Sentinel-watched primary (or a 3-primary Cluster) while the test kills the
primary (or the node holding the sessions, then restarts it). Every request must be served (the
store fails open meanwhile), the store must find the new primary, and sessions and rate limits
must work through Redis again. Each test prints what the outage cost; with ``-s`` they show:

    PYTHONPATH=src pytest -s -q -p no:cacheprovider tests/test_state_redis_ha.py
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from conftest import config
from load_balancing_module import (
    BackendConfig,
    FakeClock,
    LoadBalancingModule,
    RateLimitConfig,
    RateLimitExceededError,
    Request,
)
from load_balancing_module.server.app import Server
from load_balancing_module.server.config import StateConfig, load_config
from load_balancing_module.server.stores import open_store
from load_balancing_module.state.redis import RedisStore
from proxy_helpers import AioBackend
from redis_ha_helpers import SERVICE, ClusterGroup, SentinelGroup, client

BACKENDS = [BackendConfig(host=f"s{i}.test", port=80) for i in range(3)]
PREFIX = "ha:"
LOAD_INTERVAL = 0.005  # seconds between requests under load
RECOVERY_TIMEOUT = 15.0  # seconds: a failover that takes longer fails the test
STEADY = 5  # requests in a row answered by Redis: recovered


@dataclass
class Outage:
    served: int = 0  # requests served from the kill to the recovery
    fail_open: int = 0  # of those, requests answered (at least in part) by the failure policy
    failed: int = 0  # requests that raised (must stay 0)
    seconds: float = 0.0  # from the kill to the first of STEADY requests in a row answered by Redis

    def report(self, what: str) -> str:
        return (
            f"{what}: {self.served} requests during the outage, {self.fail_open} served fail-open, "
            f"{self.failed} failed, recovered in {self.seconds:.2f} s"
        )


async def balancer(store: RedisStore, **fields: object) -> LoadBalancingModule:
    lb = LoadBalancingModule(config(**fields), clock=FakeClock(), rng=random.Random(0), state_store=store)
    for backend in BACKENDS:
        await lb.add_backend(backend)
    return lb


async def route(lb: LoadBalancingModule, session: str | None = None, ip: str = "10.1.1.1") -> str:
    result = await lb.route_request(Request(client_ip=ip, session_id=session))
    await lb.complete_request(result, success=True)
    return result.backend_id


async def through_outage(send: Callable[[int], Awaitable[None]], store: RedisStore, kill: Callable[[], None]) -> Outage:
    """``send(i)`` every LOAD_INTERVAL, ``kill()`` after a few, until Redis answers again."""
    outage = Outage()
    for i in range(20):  # steady traffic first
        await send(i)
    killed_at = time.monotonic()
    kill()
    steady = 0
    i = 0
    while steady < STEADY:
        assert time.monotonic() - killed_at < RECOVERY_TIMEOUT, outage.report("no recovery")
        before = store.fallbacks
        began = time.monotonic()
        try:
            await send(i)
        except Exception:  # counted, and asserted on by the caller
            outage.failed += 1
        i += 1
        fell_back = store.fallbacks > before
        steady = 0 if fell_back or not store.available else steady + 1
        if steady == 1:
            outage.seconds = began - killed_at
        outage.served += 1
        outage.fail_open += fell_back
        await asyncio.sleep(LOAD_INTERVAL)
    outage.served -= STEADY  # the steady run after recovery is not the outage's
    return outage


def module_load(lb: LoadBalancingModule) -> Callable[[int], Awaitable[None]]:
    """One request through the module: ten sessions, ten clients."""

    async def send(i: int) -> None:
        await route(lb, f"load-{i % 10}", ip=f"10.2.0.{i % 10}")

    return send


async def rate_limit_holds(store: RedisStore, ip: str) -> bool:
    """A fresh client gets its burst of 3 through Redis, then is refused (the 4th request)."""
    strict = await balancer(store, rate_limit=RateLimitConfig(enabled=True, requests_per_second=1, burst_size=3))
    fallbacks = store.fallbacks
    for _ in range(3):
        await route(strict, ip=ip)
    try:
        await route(strict, ip=ip)
    except RateLimitExceededError:
        return store.fallbacks == fallbacks
    return False


LOAD_LIMIT = RateLimitConfig(enabled=True, requests_per_second=10_000, burst_size=10_000, ddos_threshold=100_000)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path)
    try:
        group.up()
        yield group
    finally:
        group.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterGroup]:
    group = ClusterGroup(tmp_path)
    try:
        group.up()
        yield group
    finally:
        group.close()


@pytest.fixture
async def stores() -> AsyncIterator[list[RedisStore]]:
    made: list[RedisStore] = []
    yield made
    for store in made:
        await store.close()


async def test_sentinel_failover_under_load(sentinels: SentinelGroup, stores: list[RedisStore]) -> None:
    # as the proxy makes it from its file: state: {sentinels: [...], service: mymaster, prefix: ...}
    state = StateConfig(sentinels=[f"127.0.0.1:{p}" for p in sentinels.sentinels], service=SERVICE, prefix=PREFIX)
    store = open_store(state, 100_000)
    assert store is not None
    stores.append(store)
    lb = await balancer(store, session_affinity=True, rate_limit=LOAD_LIMIT)
    kept = {f"kept-{i}": await route(lb, f"kept-{i}") for i in range(6)}  # untouched during the outage
    assert len(set(kept.values())) == 3
    assert client(sentinels.master).wait(1, 2000) == 1  # the replica has the bindings

    old = sentinels.master
    outage = await through_outage(module_load(lb), store, lambda: sentinels.kill(old))
    print("\n" + outage.report("sentinel: primary SIGKILLed"))

    assert outage.failed == 0
    assert sentinels.primary() == sentinels.replica  # promoted, and the store followed it
    assert {sid: await route(lb, sid) for sid in kept} == kept  # the sessions bound before the kill
    assert await route(lb, "after") == await route(lb, "after")  # new bindings stick
    assert await rate_limit_holds(store, "10.9.9.9")
    assert store.available


async def test_cluster_node_restart_under_load(cluster: ClusterGroup, stores: list[RedisStore]) -> None:
    store = open_store(StateConfig(url=cluster.url, prefix=PREFIX), 100_000)  # state: {url: redis+cluster://...}
    assert store is not None
    stores.append(store)
    assert store.cluster
    lb = await balancer(store, session_affinity=True, rate_limit=LOAD_LIMIT)
    sessions_node = cluster.owner(f"{{{PREFIX}sessions}}")

    def restart() -> None:
        cluster.kill(sessions_node)
        cluster.restart(sessions_node)  # at once: its data is gone (no persistence), its slots are back

    outage = await through_outage(module_load(lb), store, restart)
    print("\n" + outage.report("cluster: the sessions' node SIGKILLed and restarted"))

    assert outage.failed == 0
    assert outage.fail_open > 0  # the node was missed
    assert await route(lb, "after") == await route(lb, "after")  # sessions stick again, on the restarted node
    with client(sessions_node) as node:
        assert node.execute_command("CLUSTER COUNTKEYSINSLOT", node.execute_command("CLUSTER KEYSLOT", "{ha:sessions}"))
    assert await rate_limit_holds(store, "10.9.9.9")
    assert store.available


async def test_the_proxy_serves_through_a_sentinel_failover(tmp_path: Path, sentinels: SentinelGroup) -> None:
    """``omnixan-lb serve``'s server, its state from the file: every request answered 200 meanwhile,
    X-Session-ID bindings made before the kill honoured after it."""
    nodes = ", ".join(f"'127.0.0.1:{p}'" for p in sentinels.sentinels)
    async with AsyncExitStack() as stack:
        backends = [await stack.enter_async_context(AioBackend(name)) for name in ("a", "b", "c")]
        path = tmp_path / "lb.yaml"
        path.write_text(
            'listen: "127.0.0.1:0"\nadmin: {listen: "127.0.0.1:0", token_env: null}\n'
            "health_check: {enabled: false}\nsession_affinity: true\n"
            f"state: {{sentinels: [{nodes}], service: {SERVICE}, prefix: '{PREFIX}'}}\nbackends:\n"
            + "".join(f"  - {{host: 127.0.0.1, port: {b.port}}}\n" for b in backends)
        )
        server = Server(path, load_config(path))
        await server.start()
        stack.push_async_callback(server.shutdown)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        url = f"http://127.0.0.1:{server.proxy.port}/"

        async def fetch(session: str) -> str:
            async with http.get(url, headers={"X-Session-ID": session}) as response:
                assert response.status == 200
                return str((await response.json())["backend"])

        kept = {f"kept-{i}": await fetch(f"kept-{i}") for i in range(3)}
        assert sorted(kept.values()) == ["a", "b", "c"]
        assert client(sentinels.master).wait(1, 2000) == 1

        async def send(i: int) -> None:
            await fetch(f"load-{i % 10}")

        assert server.store is not None
        outage = await through_outage(send, server.store, lambda: sentinels.kill(sentinels.master))
        print("\n" + outage.report("proxy, sentinel: primary SIGKILLed"))
        assert outage.failed == 0
        assert {sid: await fetch(sid) for sid in kept} == kept
