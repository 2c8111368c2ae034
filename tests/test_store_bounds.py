"""The state stores stay bounded whatever clients send: sessions (a segmented LRU within
max_sessions, in memory and in Redis), buckets, flood counts and blocks; and the shared secret.

Sizes are asserted as entry counts (deterministic), never as RSS or timings, except one test that
checks the memory store's upkeep does not walk the whole store (CPU time, with a wide margin).
"""

from __future__ import annotations

import logging
import sys
import time
from urllib.parse import urlsplit

import pytest
import redis

from load_balancing_module import FakeClock
from load_balancing_module.state import MemoryStore, RedisStore
from redis_helpers import MakeStore, Now, Relay, keys_under, on_port


def size(store: MemoryStore) -> int:
    """Entries held for sessions, expired or not."""
    return len(store._probation) + len(store._protected)


# -- the memory store ------------------------------------------------------------------------------


async def test_a_flood_of_one_shot_sessions_keeps_the_memory_store_bounded_and_the_sessions_in_use() -> None:
    """1,000,000 session ids used once each (a client inventing one per request) against
    max_sessions=1,000: the store never holds more than 1,000; 100 sessions looked up once after
    their binding, and one looked up now and then, all stay; every one-shot id that went is counted."""
    store = MemoryStore(FakeClock(), max_sessions=1000)
    regulars = [f"regular-{i}" for i in range(100)]
    for session in regulars:
        await store.bind_session(session, "b1", 3600)
        assert await store.get_session(session, 3600) == "b1"
    await store.bind_session("frequent", "b2", 3600)
    sizes = set()
    for i in range(1_000_000):
        await store.bind_session(f"one-shot-{i}", "b3", 3600)
        if i % 10_000 == 0:
            assert await store.get_session("frequent", 3600) == "b2"
            sizes.add(size(store))
    assert max(sizes) <= 1000 and size(store) == 1000
    assert all([await store.get_session(session, 3600) == "b1" for session in regulars])
    assert await store.get_session("frequent", 3600) == "b2"
    assert await store.session_count() == 1000
    assert store.evicted_sessions == 101 + 1_000_000 - 1000  # every binding beyond the 1,000 kept


async def test_the_least_recently_used_session_in_use_goes_first_when_all_are_in_use() -> None:
    store = MemoryStore(FakeClock(), max_sessions=10)
    for i in range(10):
        await store.bind_session(f"s{i}", "b", 60)
        await store.get_session(f"s{i}", 60)  # all protected
    await store.get_session("s0", 60)  # s1 is now the least recently used
    await store.bind_session("new", "b", 60)
    assert await store.get_session("s1", 60) is None and await store.get_session("s0", 60) == "b"
    assert store.evicted_sessions == 1


async def test_sessions_that_expired_are_not_counted_as_evicted() -> None:
    clock = FakeClock()
    store = MemoryStore(clock, max_sessions=10)
    for i in range(10):
        await store.bind_session(f"old{i}", "b", 60)
    clock.set(clock.monotonic() + 61)
    for i in range(10):
        await store.bind_session(f"new{i}", "b", 60)
    assert store.evicted_sessions == 0 and await store.session_count() == 10
    await store.bind_session("one-more", "b", 60)
    assert store.evicted_sessions == 1


async def test_expired_sessions_go_from_the_front_and_are_not_counted() -> None:
    clock = FakeClock()
    store = MemoryStore(clock, max_sessions=100)
    for i in range(30):
        await store.bind_session(f"s{i}", "b", 60)
        if i % 2:
            await store.get_session(f"s{i}", 60)
        clock.set(clock.monotonic() + 1)
    assert await store.session_count() == 30
    clock.set(clock.monotonic() + 49.5)  # s0..s19, bound or last used 60 s ago or more, expired
    assert await store.session_count() == 10 and size(store) == 10
    assert await store.purge_expired() == 0
    clock.set(clock.monotonic() + 100)
    assert await store.purge_expired() == 10 and size(store) == 0


async def test_upkeep_costs_what_it_drops_not_the_stores_size() -> None:
    """session_count (every second, for the dashboard) and purge_expired (every minute) at the
    default bound: they used to walk all 100,000 sessions (about 10 and 34 ms each here)."""
    store = MemoryStore(FakeClock())
    for i in range(100_000):
        await store.bind_session(f"{i:032x}", "b", 3600)
    started = time.process_time()
    for _ in range(500):
        assert await store.session_count() == 100_000
        assert await store.purge_expired() == 0
    assert time.process_time() - started < 0.5  # about 0.02 s; walking the store, about 20 s


async def test_clients_from_ever_new_addresses_leave_a_bounded_number_of_buckets_counts_and_blocks() -> None:
    """100,000 requests, a millisecond apart, each from a new address (an IPv6 /64 has 2**64): only
    the buckets not yet refilled (0.1 s: 100), this second's counts (at most 1,000) and the blocks
    not yet ended (0.05 s: 50) stay, without waiting for purge_expired."""
    clock = FakeClock()
    store = MemoryStore(clock)
    buckets, attempts, blocks = set(), set(), set()
    for i in range(100_000):
        address = f"2001:db8::{i:x}"
        assert await store.take_token(address, 10.0, 1) == 0.0  # refills in 0.1 s
        assert await store.record_attempt(address, 1, 0.05) == (0.0, False)
        assert await store.record_attempt(f"b{address}", 0, 0.05) == (0.05, True)  # blocked at once
        buckets.add(len(store._buckets))
        attempts.add(len(store._attempts))
        blocks.add(len(store._blocked))
        clock.set(clock.monotonic() + 0.001)
    assert max(buckets) <= 102 and max(attempts) <= 1001 and max(blocks) <= 52
    clock.set(clock.monotonic() + 1.0)
    held = len(store._buckets) + len(store._attempts) + len(store._blocked)
    assert await store.purge_expired() == held > 0
    assert len(store._buckets) == len(store._attempts) == len(store._blocked) == 0


async def test_buckets_counts_and_blocks_keep_their_meaning() -> None:
    """What the cleanup drops is only what was over: a bucket mid-refill, this second's count and a
    running block stay, however many other clients come and go."""
    clock = FakeClock()
    store = MemoryStore(clock)
    assert [await store.take_token("a", 1.0, 2) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    await store.record_attempt("f", 5, 10.0)
    assert await store.record_attempt("x", 0, 10.0) == (10.0, True)
    for i in range(1000):  # others, each over at once
        await store.take_token(f"o{i}", 1000.0, 1)
        clock.set(clock.monotonic() + 0.0001)
    assert await store.take_token("a", 1.0, 2) > 0.0  # still empty: not dropped
    assert (await store.record_attempt("x", 0, 10.0))[0] > 9.0  # still blocked
    for _ in range(4):
        await store.record_attempt("f", 5, 10.0)
    assert await store.record_attempt("f", 5, 10.0) == (10.0, True)  # the sixth in the same second


async def test_the_memory_stores_shared_secret_is_made_once_per_name() -> None:
    store = MemoryStore(FakeClock())
    first = await store.shared_secret("affinity")
    assert len(first) == 32 and await store.shared_secret("affinity") == first
    assert await store.shared_secret("other") != first
    assert await MemoryStore(FakeClock()).shared_secret("affinity") != first  # per store


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="MemoryStore: max_sessions must be >= 1, got 0"):
        MemoryStore(FakeClock(), max_sessions=0)
    with pytest.raises(ValueError, match="RedisStore: max_sessions must be >= 1, got -5"):
        RedisStore(max_sessions=-5)
    with pytest.raises(ValueError, match=r"doubt_after=-0\.1"):
        RedisStore(doubt_after=-0.1)


# -- the Redis store -------------------------------------------------------------------------------


async def test_the_redis_store_caps_its_sessions(make_store: MakeStore, redis_url: str, redis_prefix: str) -> None:
    store = await make_store(max_sessions=20)
    for i in range(50):
        await store.bind_session(f"s{i}", "b", 60 + i)  # later ones expire later: the first go
    assert await store.session_count() == 20 and store.evicted_sessions == 30
    assert await store.get_session("s0", 60) is None and await store.get_session("s49", 60) == "b"
    assert sum(1 for key in keys_under(redis_url, redis_prefix) if key.startswith("session:")) == 20


async def test_a_flood_of_one_shot_sessions_keeps_the_sessions_in_use_in_redis(
    make_store: MakeStore, redis_url: str, redis_prefix: str
) -> None:
    """The same segmented rule as in memory: sessions looked up again are protected, and one-shot
    ids churn probation only. (A plain LRU would evict the sessions in use first: they are older.)"""
    flooder, regular = await make_store(max_sessions=50), await make_store(max_sessions=50)
    for i in range(10):
        await regular.bind_session(f"regular-{i}", "b1", 600)
        assert await regular.get_session(f"regular-{i}", 600) == "b1"
    for i in range(1000):
        await flooder.bind_session(f"one-shot-{i}", "b2", 600)
    assert [await regular.get_session(f"regular-{i}", 600) for i in range(10)] == ["b1"] * 10
    assert await flooder.session_count() == 50 and flooder.evicted_sessions == 1010 - 50
    assert sum(1 for key in keys_under(redis_url, redis_prefix) if key.startswith("session:")) == 50


async def test_a_lowered_bound_is_caught_up_with_a_hundred_sessions_a_call(make_store: MakeStore) -> None:
    """A balancer restarted with a smaller max_sessions never runs one long script over the whole
    index (Redis does nothing else meanwhile): each bind demotes and evicts at most 100."""
    before = await make_store(max_sessions=1000)
    for i in range(300):
        await before.bind_session(f"s{i}", "b", 600)
        await before.get_session(f"s{i}", 600)  # protected
    after = await make_store(max_sessions=10)
    counts = []
    for i in range(4):
        await after.bind_session(f"new{i}", "b", 600)
        counts.append(await after.session_count())
    assert counts == [201, 102, 10, 10]
    assert after.evicted_sessions == 300 + 4 - 10
    assert [await after.get_session(f"new{i}", 600) for i in range(4)] == [None, None, "b", "b"]


async def test_redis_counts_only_live_sessions_as_evicted(make_store: MakeStore) -> None:
    now = Now()
    store = await make_store(max_sessions=5, now=now)
    for i in range(5):
        await store.bind_session(f"old{i}", "b", 10)
    now.advance(20)
    for i in range(5):
        await store.bind_session(f"new{i}", "b", 10)
    assert store.evicted_sessions == 0 and await store.session_count() == 5
    await store.bind_session("one-more", "b", 10)
    assert store.evicted_sessions == 1


# -- the shared secret in Redis ---------------------------------------------------------------------


async def test_balancers_on_one_redis_share_their_secret(make_store: MakeStore) -> None:
    one, two = await make_store(), await make_store()
    key = await one.shared_secret("affinity")
    assert len(key) == 32 and await two.shared_secret("affinity") == key
    assert await one.shared_secret("affinity") == key
    assert await one.shared_secret("other") != key


async def test_a_secret_lost_with_redis_is_set_again_to_the_fleets(
    make_store: MakeStore, redis_url: str, redis_prefix: str
) -> None:
    """Redis restarted without persistence: the next balancer to ask (they ask now and then)
    offers the key it knows, so a balancer started afterwards gets the fleet's key, not a new one."""
    one = await make_store()
    key = await one.shared_secret("affinity")
    with redis.Redis.from_url(redis_url) as client:
        assert client.delete(f"{redis_prefix}secret:affinity") == 1
    assert await one.shared_secret("affinity") == key
    assert await (await make_store()).shared_secret("affinity") == key


async def test_without_redis_a_balancer_keeps_one_key_of_its_own_until_redis_answers(
    make_store: MakeStore, redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="load_balancing_module")
    clock = FakeClock()
    async with Relay(urlsplit(redis_url).port or 6379) as relay:
        relay.cut()
        store = await make_store(on_port(redis_url, relay.port), clock=clock)
        local = await store.shared_secret("affinity")  # Redis does not answer: a key of its own
        assert len(local) == 32
        await clock.advance(store.retry_interval)
        assert await store.shared_secret("affinity") == local  # the same one: its cookies stay valid
        assert await store.shared_secret("affinity") == local  # backing off: no I/O
        relay.up = True
        await clock.advance(store.retry_interval)
        assert await store.shared_secret("affinity") == local  # Redis had none: its own becomes the fleet's
        assert await (await make_store()).shared_secret("affinity") == local
    events = [(r.event, r.fields) for r in caplog.records if getattr(r, "event", "").startswith("shared_secret")]
    assert [event for event, _ in events] == ["shared_secret_local", "shared_secret_shared"]  # once each
    assert events[0][1]["reason"] == "the state store did not answer" and events[1][1]["same_as_local"] is True


async def test_a_value_that_is_no_key_is_not_used(
    make_store: MakeStore, redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="load_balancing_module")
    with redis.Redis.from_url(redis_url) as client:
        client.set(f"{redis_prefix}secret:affinity", "not hex")
        client.set(f"{redis_prefix}secret:short", "00ff")
    store = await make_store()
    one = await store.shared_secret("affinity")
    assert len(one) == 32 and await store.shared_secret("affinity") == one
    assert len(await store.shared_secret("short")) == 32
    reasons = [r.fields["reason"] for r in caplog.records if getattr(r, "event", "") == "shared_secret_local"]
    assert reasons == ["the state store holds no usable key"] * 2


async def test_redis_store_defaults() -> None:
    store = RedisStore()  # no connection is made until a call
    try:
        assert (store.max_sessions, store.doubt_after, store.evicted_sessions, store.fallbacks) == (100_000, 0.05, 0, 0)
    finally:
        await store.close()


# -- ``python tests/test_store_bounds.py``: the memory figures in docs/state.md ----------------------------


def session_ids(kind: str, count: int) -> list[str]:
    if kind == "32 hex digits":
        return [f"{i:032x}" for i in range(count)]
    filler = "a" if kind == "512 ASCII characters" else "\U0001f600"
    return [(str(i) + filler * 512)[:512] for i in range(count)]


KINDS = ("32 hex digits", "512 ASCII characters", "512 characters outside the BMP")


async def memory_store_bytes(kind: str, count: int = 100_000) -> float:
    """Bytes per session held by a MemoryStore (tracemalloc), half of them looked up again."""
    import tracemalloc

    ids = session_ids(kind, count)  # made before measuring: a client's ids are the store's to keep only
    store = MemoryStore(FakeClock(), max_sessions=count)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i, session in enumerate(ids):
            await store.bind_session(session, "backend-1.example:8080", 3600)
            if i % 2:
                await store.get_session(session, 3600)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return (used + sum(map(sys.getsizeof, ids))) / count


async def redis_store_bytes(kind: str, count: int = 20_000) -> float:
    """Bytes per session in Redis (growth of used_memory), half of them looked up again."""
    from redis_helpers import PrivateRedis

    server = PrivateRedis()
    store = RedisStore(server.url, max_sessions=count)
    try:
        with redis.Redis.from_url(server.url) as client:
            base = int(client.info("memory")["used_memory"])
            for i, session in enumerate(session_ids(kind, count)):
                await store.bind_session(session, "backend-1.example:8080", 3600)
                if i % 2:
                    await store.get_session(session, 3600)
            return (int(client.info("memory")["used_memory"]) - base) / count
    finally:
        await store.close()
        server.close()


async def report() -> None:
    for kind in KINDS:
        per = await memory_store_bytes(kind)
        print(f"MemoryStore, {kind}: {per:.0f} bytes a session, {per * 100_000 / 1e6:.0f} MB at 100,000")
    for kind in KINDS:
        per = await redis_store_bytes(kind)
        print(f"RedisStore, {kind}: {per:.0f} bytes a session, {per * 100_000 / 1e6:.0f} MB at 100,000")


if __name__ == "__main__":
    import asyncio

    asyncio.run(report())
