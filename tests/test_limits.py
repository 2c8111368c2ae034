"""Token-bucket rate limiting per client IP, and blocking of flooding clients."""

from __future__ import annotations

import random

import pytest

from load_balancing_module import (
    BackendConfig,
    FakeClock,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    RateLimitConfig,
    RateLimitExceededError,
    Request,
)
from load_balancing_module.state import MemoryStore


async def make_lb(**limits: object) -> tuple[LoadBalancingModule, FakeClock]:
    clock = FakeClock()
    config = LoadBalancingModuleConfig(
        health_check=HealthCheckConfig(enabled=False),
        rate_limit=RateLimitConfig(enabled=True, **limits),  # type: ignore[arg-type]
    )
    lb = LoadBalancingModule(config, clock=clock, rng=random.Random(2))
    await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=100_000))
    return lb, clock


async def hit(lb: LoadBalancingModule, ip: str) -> None:
    result = await lb.route_request(Request(client_ip=ip))
    await lb.complete_request(result, success=True)


async def test_burst_then_refused_with_retry_after() -> None:
    lb, clock = await make_lb(requests_per_second=10, burst_size=5, ddos_threshold=1000)
    for _ in range(5):
        await hit(lb, "10.0.0.1")
    with pytest.raises(RateLimitExceededError) as info:
        await hit(lb, "10.0.0.1")
    assert info.value.retry_after == pytest.approx(0.1)
    assert info.value.client_ip == "10.0.0.1" and not info.value.blocked
    await hit(lb, "10.0.0.2")  # another client has its own bucket
    clock.set(clock.monotonic() + 0.1)
    await hit(lb, "10.0.0.1")  # one token refilled
    with pytest.raises(RateLimitExceededError):
        await hit(lb, "10.0.0.1")
    assert lb.counters["rate_limited"] == 2


async def test_sustained_rate_is_the_configured_rate() -> None:
    lb, clock = await make_lb(requests_per_second=20, burst_size=1, ddos_threshold=1000)
    allowed = 0
    for _ in range(1000):  # 10 s of attempts at 100/s
        try:
            await hit(lb, "10.0.0.3")
            allowed += 1
        except RateLimitExceededError:
            pass
        clock.set(clock.monotonic() + 0.01)
    assert 195 <= allowed <= 205


async def test_disabled_rate_limit_lets_everything_through() -> None:
    clock = FakeClock()
    lb = LoadBalancingModule(
        LoadBalancingModuleConfig(
            health_check=HealthCheckConfig(enabled=False),
            rate_limit=RateLimitConfig(enabled=False, requests_per_second=1, burst_size=1),
        ),
        clock=clock,
    )
    await lb.add_backend(BackendConfig(host="a.test", port=80))
    for _ in range(50):
        await hit(lb, "10.0.0.4")


async def test_a_flooding_client_is_blocked_for_ddos_block_seconds() -> None:
    lb, clock = await make_lb(requests_per_second=1, burst_size=1, ddos_threshold=20, ddos_block_seconds=60)
    refused = 0
    for _ in range(20):
        try:
            await hit(lb, "10.6.6.6")
        except RateLimitExceededError as exc:
            assert not exc.blocked
            refused += 1
    assert refused == 19
    with pytest.raises(RateLimitExceededError) as info:
        await hit(lb, "10.6.6.6")  # the 21st attempt within a second
    assert info.value.blocked and info.value.retry_after == pytest.approx(60)
    clock.set(clock.monotonic() + 30)
    with pytest.raises(RateLimitExceededError) as info:
        await hit(lb, "10.6.6.6")
    assert info.value.blocked and info.value.retry_after == pytest.approx(30)
    await hit(lb, "10.7.7.7")  # others are not affected
    clock.set(clock.monotonic() + 30)
    await hit(lb, "10.6.6.6")  # block expired, bucket refilled
    assert lb.counters["ddos_blocked"] == 2


async def test_attempts_are_counted_per_second() -> None:
    lb, clock = await make_lb(requests_per_second=1000, burst_size=1000, ddos_threshold=10)
    for _ in range(5):
        for _ in range(10):
            await hit(lb, "10.0.0.5")
        clock.set(clock.monotonic() + 1.0)  # 10 per second is at, not over, the threshold


async def test_memory_store_forgets_idle_entries() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    assert await store.take_token("k", rate=10, burst=2) == 0.0
    await store.bind_session("s", "b1", ttl=5)
    await store.record_attempt("k", threshold=100, block_seconds=1)
    clock.set(clock.monotonic() + 10)
    assert await store.purge_expired() == 3
    assert await store.session_count() == 0
