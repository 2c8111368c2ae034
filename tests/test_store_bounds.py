"""The state stores stay bounded whatever clients send, and a hung Redis costs one timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from load_balancing_module import FakeClock
from load_balancing_module.state import MemoryStore, RedisStore
from redis_helpers import MakeStore, keys_under, start_private_server


async def test_a_flood_of_one_shot_sessions_keeps_the_memory_store_bounded_and_the_sessions_in_use() -> None:
    clock = FakeClock()
    store = MemoryStore(clock, max_sessions=1000)
    await store.bind_session("regular", "b1", 3600)
    for i in range(200_000):  # a client inventing a new session id per request
        await store.bind_session(f"one-shot-{i}", "b2", 3600)
        if i % 500 == 0:  # the regular client comes back now and then
            assert await store.get_session("regular", 3600) == "b1"
    assert len(store._probation) + len(store._protected) <= 1000
    assert store.evicted_sessions >= 199_000
    assert await store.get_session("regular", 3600) == "b1"
    assert await store.session_count() <= 1000


async def test_the_least_recently_used_session_in_use_goes_first_when_all_are_in_use() -> None:
    store = MemoryStore(FakeClock(), max_sessions=10)
    for i in range(10):
        await store.bind_session(f"s{i}", "b", 60)
        await store.get_session(f"s{i}", 60)  # all protected
    await store.get_session("s0", 60)  # s1 is now the least recently used
    await store.bind_session("new", "b", 60)
    assert await store.get_session("s1", 60) is None and await store.get_session("s0", 60) == "b"
    assert store.evicted_sessions == 1


async def test_the_memory_stores_shared_secret_is_made_once_per_name() -> None:
    store = MemoryStore(FakeClock())
    first = await store.shared_secret("affinity")
    assert len(first) == 32 and await store.shared_secret("affinity") == first
    assert await store.shared_secret("other") != first


async def test_the_redis_store_caps_its_sessions(make_store: MakeStore, redis_url: str, redis_prefix: str) -> None:
    store = await make_store(max_sessions=20)
    for i in range(50):
        await store.bind_session(f"s{i}", "b", 60 + i)  # later ones expire later: the first go
    assert await store.session_count() == 20 and store.evicted_sessions == 30
    assert await store.get_session("s0", 60) is None and await store.get_session("s49", 60) == "b"
    assert sum(1 for key in keys_under(redis_url, redis_prefix) if key.startswith("session:")) == 20


async def test_balancers_on_one_redis_share_their_secret(make_store: MakeStore) -> None:
    one, two = await make_store(), await make_store()
    key = await one.shared_secret("affinity")
    assert len(key) == 32 and await two.shared_secret("affinity") == key


async def test_a_hung_redis_costs_only_the_calls_already_waiting() -> None:
    """SIGSTOP the Redis: the calls on their way wait their timeout, every later one fails open
    at once; SIGCONT: the store answers again."""
    proc, url = start_private_server()
    store = RedisStore(url, timeout=0.25, retry_interval=0.2)
    try:
        assert await store.take_token("warm", 100, 10) == 0.0
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            stuck = [asyncio.create_task(store.take_token(f"c{i}", 100, 10)) for i in range(5)]
            await asyncio.sleep(0.06)  # past doubt_after: the calls on their way are in doubt
            waits = []
            for i in range(50):
                before = time.monotonic()
                assert await store.take_token(f"later{i}", 100, 10) == 0.0  # admitted: fail open
                waits.append(time.monotonic() - before)
            assert max(waits) < 0.01
            await asyncio.gather(*stuck)
            assert time.monotonic() - started < 0.5
            assert store.fallbacks >= 55
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        for _ in range(100):  # the back-off ends and one probe finds Redis again
            await asyncio.sleep(0.01)
            await store.take_token("again", 100, 10)
            if store.available:
                break
        assert store.available
    finally:
        await store.close()
        proc.terminate()
        proc.wait(10)
