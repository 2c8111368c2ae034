"""RedisStore against a real Redis: token buckets, flood blocks, sessions, key layout, failure policy.

Time is injected (``Now``) wherever refill or expiry matters, so nothing here sleeps; the
outage back-off runs on a ``FakeClock``. Each test has its own key prefix (``redis_prefix``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from load_balancing_module import FakeClock
from load_balancing_module.state.redis import RedisStore, redact
from redis_helpers import MakeStore, Now, Relay, keys_under, on_port

IP = "203.0.113.7"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound, never listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A server that accepts connections and never answers: a hung Redis."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()


def port_of(url: str) -> int:
    return urlsplit(url).port or 6379


# -- token buckets ---------------------------------------------------------------------------


async def test_a_bucket_gives_its_burst_then_says_how_long_to_wait(make_store: MakeStore) -> None:
    store = await make_store(now=Now())
    assert [await store.take_token(IP, 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await store.take_token(IP, 2.0, 3) == pytest.approx(0.5)  # 1 token at 2/s
    assert await store.take_token("198.51.100.1", 2.0, 3) == 0.0  # another client, another bucket


async def test_a_bucket_refills_with_time_and_never_above_its_burst(make_store: MakeStore) -> None:
    now = Now()
    store = await make_store(now=now)
    for _ in range(3):
        await store.take_token(IP, 2.0, 3)
    now.advance(0.25)  # half a token
    assert await store.take_token(IP, 2.0, 3) == pytest.approx(0.25)
    now.advance(0.25)
    assert await store.take_token(IP, 2.0, 3) == 0.0
    now.advance(3600)  # an hour refills 3 tokens, not 7200
    assert [await store.take_token(IP, 2.0, 3) for _ in range(4)][3] == pytest.approx(0.5)


async def test_taking_is_atomic_across_stores_and_concurrent_calls(make_store: MakeStore) -> None:
    now = Now()
    # Atomicity, not the breaker: 50 calls opening connections at once took 72 ms here once a GC
    # pass fell among them, and past doubt_after (50 ms) the store fails open, granting them all.
    one, two = await make_store(now=now, doubt_after=1.0), await make_store(now=now, doubt_after=1.0)
    waits = await asyncio.gather(*(store.take_token(IP, 1.0, 20) for _ in range(25) for store in (one, two)))
    assert sum(1 for w in waits if w == 0.0) == 20


async def test_without_an_injected_time_the_redis_servers_clock_is_used(
    make_store: MakeStore, redis_url: str, redis_prefix: str
) -> None:
    store = await make_store()
    assert await store.take_token(IP, 1.0, 1) == 0.0
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        seconds, micros = client.time()
        stamped = float(client.hget(f"{redis_prefix}bucket:{IP}", "at") or 0)
    assert abs(seconds + micros / 1e6 - stamped) < 5.0
    assert 0.9 < await store.take_token(IP, 1.0, 1) < 1.0  # the refill is measured on that clock, which moved


# -- flood blocking ----------------------------------------------------------------------------


async def test_a_flood_blocks_the_client_until_the_block_ends(make_store: MakeStore) -> None:
    now = Now(1_000_000.0)
    store = await make_store(now=now)
    assert [await store.record_attempt(IP, 3, 10.0) for _ in range(3)] == [(0.0, False)] * 3
    assert await store.record_attempt(IP, 3, 10.0) == (10.0, True)  # the fourth in one second
    now.advance(4.0)
    assert await store.record_attempt(IP, 3, 10.0) == (pytest.approx(6.0), False)
    assert await store.record_attempt("198.51.100.1", 3, 10.0) == (0.0, False)
    now.advance(6.0)
    assert await store.record_attempt(IP, 3, 10.0) == (0.0, False)  # the block is over; counting starts again


async def test_attempts_are_counted_per_second(make_store: MakeStore) -> None:
    now = Now(1_000_000.5)
    store = await make_store(now=now)
    for _ in range(3):
        assert await store.record_attempt(IP, 3, 10.0) == (0.0, False)
    now.advance(0.5)  # the next second: a new window
    for _ in range(3):
        assert await store.record_attempt(IP, 3, 10.0) == (0.0, False)


async def test_a_block_of_zero_seconds_never_blocks(make_store: MakeStore) -> None:
    store = await make_store(now=Now())
    assert {await store.record_attempt(IP, 1, 0.0) for _ in range(5)} == {(0.0, False)}


# -- sessions ----------------------------------------------------------------------------------


async def test_sessions_bind_rebind_and_are_counted(make_store: MakeStore) -> None:
    store = await make_store(now=Now())
    assert await store.get_session("s1", 60.0) is None
    await store.bind_session("s1", "10.0.0.1:80", 60.0)
    await store.bind_session("s2", "10.0.0.2:80", 60.0)
    assert await store.get_session("s1", 60.0) == "10.0.0.1:80"
    await store.bind_session("s1", "10.0.0.2:80", 60.0)
    assert await store.get_session("s1", 60.0) == "10.0.0.2:80"
    assert await store.session_count() == 2


async def test_an_idle_session_expires_and_a_used_one_does_not(make_store: MakeStore) -> None:
    now = Now()
    store = await make_store(now=now)
    await store.bind_session("idle", "a:1", 10.0)
    await store.bind_session("busy", "b:1", 10.0)
    for _ in range(3):
        now.advance(6.0)  # each look extends the busy one by 10 s
        assert await store.get_session("busy", 10.0) == "b:1"
    assert await store.session_count() == 1
    assert await store.get_session("idle", 10.0) is None
    now.advance(10.0)
    assert await store.session_count() == 0
    assert await store.get_session("busy", 10.0) is None


async def test_purge_drops_expired_sessions_from_the_index(make_store: MakeStore) -> None:
    now = Now()
    store = await make_store(now=now)
    for i in range(5):
        await store.bind_session(f"s{i}", "a:1", 10.0 if i < 3 else 100.0)
    assert await store.purge_expired() == 0
    now.advance(50.0)
    assert await store.session_count() == 2
    assert await store.purge_expired() == 3
    assert await store.purge_expired() == 0


async def test_every_key_is_under_the_prefix_and_expires(
    make_store: MakeStore, redis_url: str, redis_prefix: str
) -> None:
    store = await make_store(now=Now())
    await store.take_token(IP, 10.0, 5)
    await store.record_attempt(IP, 100, 10.0)
    await store.record_attempt("198.51.100.9", 1, 30.0)
    await store.record_attempt("198.51.100.9", 1, 30.0)  # blocked
    await store.bind_session("s1", "a:1", 120.0)
    await store.bind_session("s2", "a:1", 120.0)
    assert await store.get_session("s1", 120.0) == "a:1"  # looked up again: protected
    await store.shared_secret("affinity")
    ttls = keys_under(redis_url, redis_prefix)
    assert set(ttls) == {
        f"bucket:{IP}",
        f"flood:{IP}",
        "block:198.51.100.9",
        "session:s1",
        "session:s2",
        "sessions",
        "sessions:probation",
        "secret:affinity",
    }
    assert ttls.pop("secret:affinity") == -1  # the one key without a TTL: one per name, never per client
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    assert 30_000 - 1000 < ttls["block:198.51.100.9"] <= 30_000
    assert 119_000 < ttls["session:s1"] <= 120_000 and 119_000 < ttls["sessions"] <= 120_000
    assert 119_000 < ttls["sessions:probation"] <= 120_000
    assert ttls[f"flood:{IP}"] <= 2000 and ttls[f"bucket:{IP}"] <= 1100  # 0.1 s to refill, plus 1 s


async def test_prefixes_keep_clusters_apart(make_store: MakeStore, redis_prefix: str) -> None:
    now = Now()
    one = await make_store(now=now)
    other = await make_store(now=now, prefix=f"{redis_prefix}other:")
    await one.bind_session("s1", "a:1", 60.0)
    assert await one.take_token(IP, 1.0, 1) == 0.0
    assert await other.get_session("s1", 60.0) is None
    assert await other.take_token(IP, 1.0, 1) == 0.0
    assert await one.session_count() == 1 and await other.session_count() == 0


async def test_a_client_of_your_own_works_and_stays_open(redis_url: str, redis_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)  # bytes replies: the store decodes them
    try:
        store = RedisStore(client, prefix=redis_prefix, now=Now())
        await store.bind_session("s1", "a:1", 60.0)
        assert await store.get_session("s1", 60.0) == "a:1"
        assert await store.record_attempt(IP, 5, 1.0) == (0.0, False)
        await store.close()
        assert await client.ping()  # not the store's to close
        db = urlsplit(redis_url).path.strip("/") or "0"
        assert store.url.startswith("redis://") and store.url.endswith(f":{port_of(redis_url)}/{db}")
    finally:
        await client.aclose()


# -- when Redis is unreachable ---------------------------------------------------------------------


async def test_a_redis_that_refuses_connections_fails_open_at_once(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    store = RedisStore(f"redis://127.0.0.1:{closed_port}/0", clock=clock)
    caplog.set_level(logging.WARNING, logger="load_balancing_module")
    started = time.monotonic()
    try:
        assert await store.take_token(IP, 1.0, 1) == 0.0  # tries Redis: fails, and the store backs off
        assert await store.take_token(IP, 1.0, 1) == 0.0  # then it does not try for retry_interval
        assert await store.record_attempt(IP, 1, 60.0) == (0.0, False)
        assert await store.get_session("s1", 60.0) is None
        await store.bind_session("s1", "a:1", 60.0)
        assert await store.session_count() == 0
        assert await store.purge_expired() == 0
        assert not await store.ping()
        assert time.monotonic() - started < 0.5
        assert (store.errors, store.fallbacks, store.available) == (1, 8, False)
        clock.set(clock.monotonic() + store.retry_interval)
        assert await store.take_token(IP, 1.0, 1) == 0.0  # one probe, which fails again
        assert store.errors == 2
    finally:
        await store.close()
    events = [r for r in caplog.records if getattr(r, "event", "").startswith("state_store")]
    assert [r.event for r in events] == ["state_store_unavailable"]  # type: ignore[attr-defined]
    assert events[0].fields["operation"] == "take_token"  # type: ignore[attr-defined]


async def test_an_outage_is_logged_again_only_every_log_interval(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    store = RedisStore(f"redis://127.0.0.1:{closed_port}/0", clock=clock, retry_interval=1.0, log_interval=30.0)
    caplog.set_level(logging.WARNING, logger="load_balancing_module")
    try:
        for _ in range(100):  # 100 s of outage, one try per second
            await store.take_token(IP, 1.0, 1)
            clock.set(clock.monotonic() + 1.0)
    finally:
        await store.close()
    events = [getattr(r, "event", "") for r in caplog.records if getattr(r, "event", "").startswith("state_store")]
    assert events == ["state_store_unavailable"] + ["state_store_still_unavailable"] * 3
    assert store.errors == 100


async def test_a_hung_redis_costs_one_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async with silent_server() as port:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.05, clock=FakeClock())
        started = time.monotonic()
        try:
            assert await store.get_session("s1", 60.0) is None
            for _ in range(10):  # the back-off: no more waiting
                assert await store.take_token(IP, 1.0, 1) == 0.0
        finally:
            await store.close()
        assert 0.04 < time.monotonic() - started < 0.4
        assert store.errors == 1


async def test_the_store_recovers_when_redis_comes_back(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="load_balancing_module")
    clock = FakeClock()
    async with Relay(port_of(redis_url)) as relay:
        store = RedisStore(on_port(redis_url, relay.port), prefix=redis_prefix, clock=clock, now=Now())
        try:
            await store.bind_session("s1", "a:1", 60.0)
            relay.cut()
            assert await store.get_session("s1", 60.0) is None  # down: unsticky
            assert not store.available
            relay.up = True
            assert await store.get_session("s1", 60.0) is None  # still backing off
            clock.set(clock.monotonic() + store.retry_interval)
            assert await store.get_session("s1", 60.0) == "a:1"  # the probe reconnects
            assert store.available and store.errors == 1
        finally:
            await store.close()
    events = [getattr(r, "event", "") for r in caplog.records if getattr(r, "event", "").startswith("state_store")]
    assert events == ["state_store_unavailable", "state_store_recovered"]


async def test_a_cancelled_probe_does_not_leave_the_store_failing_open() -> None:
    async with silent_server() as port:
        clock = FakeClock()
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=5.0, clock=clock)
        try:
            store._failed("test", ConnectionError("simulated"))  # down; the next call after the interval probes
            clock.set(clock.monotonic() + store.retry_interval)
            probe = asyncio.create_task(store.take_token(IP, 1.0, 1))
            await asyncio.sleep(0.02)
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
            assert store._may_try() is True  # another probe may go
        finally:
            await store.close()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        RedisStore(timeout=0)
    with pytest.raises(ValueError, match="retry_interval=-1"):
        RedisStore(retry_interval=-1)


def test_passwords_are_not_logged() -> None:
    assert redact("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact("rediss://app:s3cret@cache/1") == "rediss://app:***@cache/1"
    assert redact("redis://cache:6379/0") == "redis://cache:6379/0"


def test_importing_the_package_does_not_load_redis() -> None:
    code = "import sys, load_balancing_module as lb; lb.RedisStore; assert 'redis' not in sys.modules, 'redis loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_store_given_a_sentinel_or_cluster_client_names_it_in_logs() -> None:
    primary = Sentinel([("127.0.0.1", 26379), ("s2", 26380)]).master_for("mymaster", db=2)
    store = RedisStore(primary)
    assert (store.url, store.cluster) == ("redis+sentinel://127.0.0.1:26379,s2:26380/mymaster/2", False)
    nodes = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", 7000), ClusterNode("n2", 7001)], max_connections=7)
    store = RedisStore(nodes)
    assert (store.url, store.cluster) == ("redis+cluster://127.0.0.1:7000,n2:7001", True)
    assert store._max_pending == 7  # no more calls on their way than a node's pool has connections
