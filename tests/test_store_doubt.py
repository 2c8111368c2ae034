"""The Redis store's breaker: a silent Redis costs its timeout only to the calls already on their way.

Redis is in doubt when a call has gone unanswered for ``doubt_after`` and no call was answered
meanwhile: every new call then fails open at once, without touching Redis, until that call
answers (normal again) or fails (the back-off, then one probe). The unit-level tests freeze a
private ``redis-server`` (SIGSTOP, always SIGCONTed after) or hold one connection's replies, and
move a ``FakeClock`` for doubt and back-off; the last test runs on the real clock and measures.

``python tests/test_store_doubt.py`` prints how long calls waited while a private Redis was
SIGSTOPped (a new call every millisecond for 1.5 s), for the code on ``PYTHONPATH``: the figures
in docs/state.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from urllib.parse import urlsplit

import pytest
import redis.asyncio

from load_balancing_module import FakeClock
from load_balancing_module.state import RedisStore
from redis_helpers import HoldingRelay, PrivateRedis, on_port


async def reaches_redis(store: RedisStore, key: str) -> bool:
    """Whether calls reach Redis now: a bucket of one token refuses a second take only there
    (failing open, the store admits both)."""
    await store.take_token(key, 0.001, 1)
    return await store.take_token(key, 0.001, 1) > 0.0


async def timed(call: Awaitable[object]) -> float:
    started = time.monotonic()
    await call
    return time.monotonic() - started


async def fail_open_at_once(store: RedisStore, calls: int) -> None:
    """``calls`` operations, each answered by the failure policy; within a second altogether, where
    one that went to the frozen Redis would wait its timeout."""

    async def run() -> None:
        for i in range(calls):
            assert await store.take_token(f"later{i}", 0.001, 1) == 0.0
            assert await store.take_token(f"later{i}", 0.001, 1) == 0.0  # admitted twice: not Redis's answer

    await asyncio.wait_for(run(), 1.0)


async def test_while_a_call_is_in_doubt_the_others_fail_open_until_it_answers(private_redis: PrivateRedis) -> None:
    clock = FakeClock()
    store = RedisStore(private_redis.url, timeout=5.0, clock=clock)
    try:
        assert await reaches_redis(store, "warm")
        private_redis.stop()
        try:
            stuck = asyncio.create_task(store.take_token("stuck", 0.001, 1))
            await asyncio.sleep(0.01)  # on its way (real time; the store's clock has not moved)
            await clock.advance(store.doubt_after * 1.1)
            await fail_open_at_once(store, 100)
            assert (store.fallbacks, store.errors, store.available) == (200, 0, True)  # in doubt, not down
        finally:
            private_redis.cont()
        assert await stuck == 0.0 and store.fallbacks == 200  # Redis answered it
        assert await reaches_redis(store, "after")  # normal again at once: no back-off
        assert store.errors == 0
    finally:
        await store.close()


async def test_when_the_call_in_doubt_fails_the_store_backs_off_then_probes_once(private_redis: PrivateRedis) -> None:
    clock = FakeClock()
    store = RedisStore(private_redis.url, timeout=0.2, retry_interval=1.0, clock=clock)
    try:
        assert await reaches_redis(store, "warm")
        private_redis.stop()
        try:
            stuck = asyncio.create_task(store.take_token("stuck", 0.001, 1))
            await asyncio.sleep(0.01)
            await clock.advance(store.doubt_after * 1.1)
            await fail_open_at_once(store, 10)
            assert await stuck == 0.0  # its timeout (0.2 s, real): failed open
            assert store.errors == 1 and not store.available
            await fail_open_at_once(store, 10)  # backing off: no call goes to Redis
            await clock.advance(store.retry_interval)
            probe = asyncio.create_task(store.take_token("probe", 0.001, 1))
            await asyncio.sleep(0.01)  # the probe is on its way to the frozen Redis
            await fail_open_at_once(store, 10)  # only one probe at a time
            assert store.errors == 1
        finally:
            private_redis.cont()
        assert await probe == 0.0 and store.available and store.errors == 1
        assert await reaches_redis(store, "after")
    finally:
        await store.close()


async def test_a_call_cancelled_while_in_doubt_starts_the_back_off(private_redis: PrivateRedis) -> None:
    """Callers with deadlines shorter than the store's timeout (``asyncio.wait_for`` around a
    request) must not clear the doubt and let the next calls queue behind a frozen Redis again."""
    clock = FakeClock()
    store = RedisStore(private_redis.url, timeout=5.0, clock=clock)
    try:
        assert await reaches_redis(store, "warm")
        private_redis.stop()
        try:
            early = asyncio.create_task(store.take_token("early", 0.001, 1))
            await asyncio.sleep(0.01)
            early.cancel()  # before any doubt: nothing is concluded
            with pytest.raises(asyncio.CancelledError):
                await early
            assert store.available and store.errors == 0
            stuck = asyncio.create_task(store.take_token("stuck", 0.001, 1))
            await asyncio.sleep(0.01)
            await clock.advance(store.doubt_after * 1.1)
            stuck.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stuck
            assert not store.available and store.errors == 1
            await fail_open_at_once(store, 10)
        finally:
            private_redis.cont()
        await clock.advance(store.retry_interval)
        assert await reaches_redis(store, "after") and store.available
    finally:
        await store.close()


async def test_a_slow_call_is_no_doubt_while_other_calls_are_answered(redis_url: str, redis_prefix: str) -> None:
    """Doubt needs a silent Redis: one call held up (a slow script, a busy balancer reading its
    reply late, a connection being opened) while others get their answers is not enough."""
    clock = FakeClock()
    port = urlsplit(redis_url).port or 6379
    async with HoldingRelay(port) as relay:
        store = RedisStore(on_port(redis_url, relay.port), prefix=redis_prefix, timeout=5.0, clock=clock)
        try:
            relay.holding = True
            slow = asyncio.create_task(store.take_token("slow", 0.001, 1))  # its connection gets no replies
            await asyncio.sleep(0.02)
            relay.holding = False
            await clock.advance(store.doubt_after * 0.8)
            assert await reaches_redis(store, "a")  # on another connection
            await clock.advance(store.doubt_after * 0.8)  # slow is out for 1.6 doubt_after; an answer came 0.8 ago
            assert await reaches_redis(store, "b")
            assert store.fallbacks == 0
            await clock.advance(store.doubt_after * 1.1)  # no answer for 1.1 doubt_after, slow still out: silence
            assert await store.take_token("c", 0.001, 1) == 0.0 and store.fallbacks == 1
            relay.release()
            assert await slow == 0.0 and store.fallbacks == 1
            assert await reaches_redis(store, "d") and store.errors == 0
        finally:
            await store.close()


async def test_more_calls_at_once_than_connections_fail_open_without_counting_redis_as_down(
    redis_url: str, redis_prefix: str
) -> None:
    """redis-py's pool raises at once when it is out of connections (100 by default since redis-py
    8): the calls beyond it fail open, and a healthy Redis is not taken for a failing one (which
    would fail everything open for retry_interval)."""
    client = redis.asyncio.Redis.from_url(redis_url, max_connections=5)
    store = RedisStore(client, prefix=redis_prefix, clock=FakeClock())
    try:
        waits = await asyncio.gather(*(store.take_token("shared", 0.001, 100) for _ in range(20)))
        assert waits == [0.0] * 20
        assert (store.fallbacks, store.errors, store.available) == (15, 0, True)  # 5 went, one a connection
        assert await reaches_redis(store, "after")
        assert await store.take_token("shared", 0.001, 100) == 0.0
        assert await store.take_token("shared", 0.001, 100) == 0.0 and store.fallbacks == 15
    finally:
        await store.close()
        await client.aclose()
    own = RedisStore(redis_url)
    try:
        assert own._client.connection_pool.max_connections == 100  # explicit, whatever redis-py's default
    finally:
        await own.close()


async def test_a_frozen_redis_costs_its_timeout_only_to_the_calls_on_their_way(private_redis: PrivateRedis) -> None:
    """Real time: SIGSTOP the Redis with 20 calls on their way; 1,000 calls made after doubt_after,
    in two concurrent waves, each return at once; the 20 wait their timeout; after SIGCONT the
    store answers again once its back-off ends."""
    store = RedisStore(private_redis.url, timeout=0.25, retry_interval=0.2)
    try:
        await asyncio.gather(*(store.take_token(f"warm{i}", 100, 10) for i in range(20)))  # 20 pooled connections
        private_redis.stop()
        try:
            started = time.monotonic()
            on_their_way = [asyncio.create_task(timed(store.take_token(f"c{i}", 100, 10))) for i in range(20)]
            await asyncio.sleep(store.doubt_after + 0.02)
            later = await asyncio.gather(*(timed(store.take_token(f"l{i}", 100, 10)) for i in range(500)))
            await asyncio.sleep(0.05)  # still in doubt, later in the timeout
            later += await asyncio.gather(*(timed(store.take_token(f"m{i}", 100, 10)) for i in range(500)))
            waited = await asyncio.gather(*on_their_way)
            elapsed = time.monotonic() - started
        finally:
            private_redis.cont()
        assert max(later) < 0.02, max(later)
        assert all(0.2 < w < 0.6 for w in waited), waited
        assert elapsed < 1.0
        assert store.fallbacks == 1020 and store.errors == 20
        for _ in range(100):  # the back-off ends (0.2 s) and one probe finds Redis again
            await asyncio.sleep(0.01)
            if await reaches_redis(store, "again"):
                break
        assert store.available
    finally:
        await store.close()


async def measure(seconds: float = 1.5, every: float = 0.001) -> str:
    """One new call every ``every`` seconds for ``seconds`` while a private Redis is SIGSTOPped
    (timeout 0.25 s, retry_interval 1 s); how long they waited."""
    server = PrivateRedis()
    store = RedisStore(server.url, timeout=0.25, retry_interval=1.0)
    waits: list[float] = []

    async def one(key: str) -> None:
        waits.append(await timed(store.take_token(key, 100, 10)))

    try:
        await store.take_token("warm", 100, 10)
        server.stop()
        tasks, started = [], time.monotonic()
        while time.monotonic() - started < seconds:
            tasks.append(asyncio.create_task(one(f"c{len(tasks)}")))
            await asyncio.sleep(every)
        await asyncio.gather(*tasks)
    finally:
        server.close()
        await store.close()
    waits.sort()
    n = len(waits)
    slow = sum(w >= 0.1 for w in waits)
    p50, p99, worst = (waits[n // 2] * 1e3, waits[int(n * 0.99)] * 1e3, waits[-1] * 1e3)
    return (
        f"{n} calls in {seconds} s; waited >= 0.1 s: {slow}; p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {worst:.1f} ms; errors {store.errors}"
    )


if __name__ == "__main__":
    print(asyncio.run(measure()))
