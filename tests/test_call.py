"""``call``: timeout per try, retries on untried backends, backoff with jitter, retry budget."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable
from typing import Any

import pytest

from load_balancing_module import (
    BackendConfig,
    BackendUnavailableError,
    CircuitBreakerConfig,
    FakeClock,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    RateLimitConfig,
    RateLimitExceededError,
    Request,
    RequestTimeoutError,
    RouteResult,
    RoutingError,
)
from load_balancing_module.retry import ExponentialJitterBackoff, RetryBudget

REQ = Request(client_ip="10.4.4.4")


async def make_lb(n: int = 3, **overrides: Any) -> tuple[LoadBalancingModule, FakeClock]:
    clock = FakeClock()
    overrides.setdefault("circuit_breaker", CircuitBreakerConfig(failure_threshold=100))
    config = LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False), **overrides)
    lb = LoadBalancingModule(config, clock=clock, rng=random.Random(11))
    for i in range(n):
        await lb.add_backend(BackendConfig(host=f"c{i}.test", port=80))
    return lb, clock


async def drive(clock: FakeClock, aw: Awaitable[Any], step: float = 0.05, limit: int = 10_000) -> Any:
    """Run ``aw`` while moving the fake clock forward until it finishes."""
    task = asyncio.ensure_future(aw)
    for _ in range(limit):
        if task.done():
            break
        await clock.advance(step)
    return await task


async def test_success_returns_the_value_and_completes() -> None:
    lb, clock = await make_lb()

    async def fn(result: RouteResult) -> str:
        await clock.sleep(0.02)
        return f"answer from {result.backend_id}"

    value = await drive(clock, lb.call(REQ, fn), step=0.01)
    assert value.startswith("answer from c")
    dist = await lb.get_load_distribution()
    assert sum(b["successful_requests"] for b in dist.backends.values()) == 1
    assert sum(b["active_connections"] for b in dist.backends.values()) == 0
    assert max(b["avg_latency_ms"] for b in dist.backends.values()) == pytest.approx(20.0)


async def test_failures_are_retried_on_backends_not_yet_tried() -> None:
    lb, clock = await make_lb(n=3, max_retries=3)
    seen: list[str] = []

    async def fn(result: RouteResult) -> str:
        seen.append(result.backend_id)
        if len(seen) < 3:
            raise ConnectionResetError(f"reset by {result.backend_id}")
        return "ok"

    assert await drive(clock, lb.call(REQ, fn)) == "ok"
    assert len(set(seen)) == 3  # never the same backend twice
    assert lb.counters["retries"] == 2
    dist = await lb.get_load_distribution()
    assert sum(b["failed_requests"] for b in dist.backends.values()) == 2


async def test_all_tries_failed_raises_routing_error_from_the_last_error() -> None:
    lb, clock = await make_lb(n=5, max_retries=2)
    calls = 0

    async def fn(result: RouteResult) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"boom {calls}")

    with pytest.raises(RoutingError, match="3 tries") as info:
        await drive(clock, lb.call(REQ, fn))
    assert calls == 3  # the first try and max_retries retries
    assert isinstance(info.value.__cause__, RuntimeError) and str(info.value.__cause__) == "boom 3"
    assert lb.retry_budget.active == 0


async def test_retries_stop_when_no_untried_backend_is_left() -> None:
    lb, clock = await make_lb(n=2, max_retries=5)

    async def fn(result: RouteResult) -> None:
        raise OSError("refused")

    with pytest.raises(RoutingError) as info:
        await drive(clock, lb.call(REQ, fn))
    assert isinstance(info.value.__cause__, OSError)
    assert "no untried backend" in str(info.value)
    assert lb.counters["retries"] == 1  # two tries; no third: no untried backend was left


async def test_a_slow_try_times_out_and_is_retried_elsewhere() -> None:
    lb, clock = await make_lb(n=2, request_timeout=1.0, max_retries=1)
    slow: list[str] = []

    async def fn(result: RouteResult) -> str:
        if not slow:
            slow.append(result.backend_id)
            await clock.sleep(10)
        return result.backend_id

    answer = await drive(clock, lb.call(REQ, fn), step=0.1)
    assert answer != slow[0]
    info = (await lb.get_load_distribution()).backends[slow[0]]
    assert info["failed_requests"] == 1 and info["active_connections"] == 0


async def test_timeout_of_the_last_try_is_a_request_timeout() -> None:
    lb, clock = await make_lb(n=1, request_timeout=0.5, max_retries=0)

    async def fn(result: RouteResult) -> None:
        await clock.sleep(5)

    with pytest.raises(RoutingError) as info:
        await drive(clock, lb.call(REQ, fn), step=0.1)
    assert isinstance(info.value.__cause__, RequestTimeoutError)


async def test_routing_errors_of_the_first_try_propagate_as_they_are() -> None:
    lb, _ = await make_lb(n=0)
    with pytest.raises(BackendUnavailableError):
        await lb.call(REQ, lambda r: asyncio.sleep(0))
    lb2, _ = await make_lb(n=1, rate_limit=RateLimitConfig(enabled=True, requests_per_second=1, burst_size=1))

    async def ok(result: RouteResult) -> int:
        return 1

    assert await lb2.call(REQ, ok) == 1
    with pytest.raises(RateLimitExceededError):
        await lb2.call(REQ, ok)


async def test_cancelling_a_call_releases_the_slot_without_blame() -> None:
    lb, clock = await make_lb(n=1)

    async def fn(result: RouteResult) -> None:
        await clock.sleep(100)

    task = asyncio.create_task(lb.call(REQ, fn))
    await clock.advance(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    info = next(iter((await lb.get_load_distribution()).backends.values()))
    assert (info["active_connections"], info["failed_requests"]) == (0, 0)


def test_backoff_is_exponential_with_full_jitter_and_a_cap() -> None:
    backoff = ExponentialJitterBackoff(base=0.05, cap=2.0, rng=random.Random(1))
    assert [backoff.ceiling(n) for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    samples = [backoff(3) for _ in range(2000)]
    assert 0.0 <= min(samples) < 0.01 and 0.19 < max(samples) <= 0.2
    assert sum(samples) / len(samples) == pytest.approx(0.1, rel=0.05)  # uniform on [0, 0.2]


async def test_backoff_sleeps_between_tries() -> None:
    lb, clock = await make_lb(n=3, max_retries=2, retry_backoff_base=1.0, retry_backoff_max=1.0)
    times: list[float] = []

    async def fn(result: RouteResult) -> None:
        times.append(clock.monotonic())
        raise OSError("down")

    with pytest.raises(RoutingError):
        await drive(clock, lb.call(REQ, fn), step=0.01)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 2 and all(0.0 <= g <= 1.01 for g in gaps)  # ceiling min(1.0, 1.0 * 2**n)
    assert max(gaps) > 0.05  # the clock-driven sleep really happened


def test_retry_budget_arithmetic() -> None:
    budget = RetryBudget(percent=20, min_concurrency=3)
    assert budget.allows(0)
    budget.active = 3
    assert not budget.allows(10)  # 20% of 10 is 2, minimum 3
    assert budget.allows(100)  # 20% of 100 is 20
    budget.active = 20
    assert not budget.allows(100)


async def test_retry_budget_caps_concurrent_retries() -> None:
    lb, clock = await make_lb(
        n=4,
        max_retries=3,
        retry_budget_percent=0,
        retry_budget_min_concurrency=2,
        retry_backoff_base=5.0,
        retry_backoff_max=5.0,
    )
    tries: list[int] = []

    async def fn(result: RouteResult) -> None:
        tries.append(1)
        raise OSError("fleet is failing")

    calls = [asyncio.create_task(lb.call(Request(client_ip=f"10.0.0.{i}"), fn)) for i in range(10)]
    await clock.advance(0.01)
    assert len(tries) == 10
    assert lb.retry_budget.active == 2  # only two calls got a retry
    results = await drive(clock, asyncio.gather(*calls, return_exceptions=True), step=0.5)
    assert all(isinstance(r, RoutingError) for r in results)
    assert lb.retry_budget.active == 0
