"""Circuit breakers: the state machine alone, then through the module."""

from __future__ import annotations

import random

import pytest

from load_balancing_module import (
    BackendConfig,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitState,
    FakeClock,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
)
from load_balancing_module.breaker import CircuitBreaker

REQ = Request(client_ip="10.2.2.2")
CONFIG = CircuitBreakerConfig(failure_threshold=3, success_threshold=2, timeout=30, half_open_max_calls=2)


def test_state_machine() -> None:
    clock = FakeClock()
    changes: list[tuple[CircuitState, CircuitState]] = []
    breaker = CircuitBreaker(CONFIG, clock, lambda _b, old, new: changes.append((old, new)))
    breaker.on_failure()
    breaker.on_failure()
    breaker.on_success()  # resets the consecutive count
    breaker.on_failure()
    breaker.on_failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.on_failure()
    assert breaker.state is CircuitState.OPEN and breaker.capacity(100) == 0
    assert breaker.retry_at == clock.monotonic() + 30
    clock.set(clock.monotonic() + 29.9)
    breaker.poll()
    assert breaker.state is CircuitState.OPEN
    clock.set(clock.monotonic() + 0.1)
    breaker.poll()
    assert breaker.state is CircuitState.HALF_OPEN and breaker.capacity(100) == 2
    breaker.on_success()
    breaker.on_failure()  # any failure in half-open reopens
    assert breaker.state is CircuitState.OPEN
    clock.set(clock.monotonic() + 30)
    breaker.poll()
    breaker.on_success()
    breaker.on_success()
    assert breaker.state is CircuitState.CLOSED and breaker.capacity(100) == 100
    assert changes == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]


def test_disabled_breaker_never_opens() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(enabled=False, failure_threshold=1), FakeClock())
    for _ in range(10):
        breaker.on_failure()
    assert breaker.state is CircuitState.CLOSED and breaker.capacity(7) == 7


def make_lb() -> tuple[LoadBalancingModule, FakeClock]:
    clock = FakeClock()
    config = LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False), circuit_breaker=CONFIG)
    return LoadBalancingModule(config, clock=clock, rng=random.Random(1)), clock


async def circuit(lb: LoadBalancingModule, backend_id: str) -> str:
    return str((await lb.get_load_distribution()).backends[backend_id]["circuit_state"])


async def test_breaker_through_the_module_is_visible_in_the_distribution() -> None:
    lb, clock = make_lb()
    bad = await lb.add_backend(BackendConfig(host="bad.test", port=80))
    good = await lb.add_backend(BackendConfig(host="good.test", port=80))
    # Round robin alternates; fail every request that lands on `bad`.
    while await circuit(lb, bad) == "closed":
        result = await lb.route_request(REQ)
        await lb.complete_request(result, success=result.backend_id != bad)
    assert await circuit(lb, bad) == "open"
    for _ in range(5):
        assert (await lb.route_request(REQ)).backend_id == good
    clock.set(clock.monotonic() + 30)
    assert await circuit(lb, bad) == "half_open"


async def test_half_open_admits_at_most_half_open_max_calls_in_flight() -> None:
    lb, clock = make_lb()
    only = await lb.add_backend(BackendConfig(host="only.test", port=80))
    for _ in range(3):
        await lb.complete_request(await lb.route_request(REQ), success=False)
    with pytest.raises(CircuitBreakerOpenError):
        await lb.route_request(REQ)
    clock.set(clock.monotonic() + 30)
    trial = [await lb.route_request(REQ) for _ in range(2)]
    assert lb.backends[only].in_flight == 2
    assert lb.backends[only].rank is None  # a third would have to wait
    await lb.complete_request(trial[0], success=True)
    await lb.complete_request(trial[1], success=True)
    assert await circuit(lb, only) == "closed"


async def test_a_failure_in_half_open_reopens() -> None:
    lb, clock = make_lb()
    only = await lb.add_backend(BackendConfig(host="only.test", port=80))
    for _ in range(3):
        await lb.complete_request(await lb.route_request(REQ), success=False)
    clock.set(clock.monotonic() + 30)
    await lb.complete_request(await lb.route_request(REQ), success=False)
    assert await circuit(lb, only) == "open"
    with pytest.raises(CircuitBreakerOpenError):
        await lb.route_request(REQ)


async def test_a_success_between_failures_resets_the_count_through_the_module() -> None:
    """The module skips the breaker on a success only while it has nothing to reset."""
    lb, clock = make_lb()
    only = await lb.add_backend(BackendConfig(host="only.test", port=80))
    for outcome in [True, False, False, True, False, False, True, True]:  # never 3 failures in a row
        await lb.complete_request(await lb.route_request(REQ), success=outcome)
        assert await circuit(lb, only) == "closed"
    for _ in range(3):
        await lb.complete_request(await lb.route_request(REQ), success=False)
    assert await circuit(lb, only) == "open"
    clock.set(clock.monotonic() + 30)
    for _ in range(2):  # success_threshold successes close it: HALF_OPEN successes are not skipped
        await lb.complete_request(await lb.route_request(REQ), success=True)
    assert await circuit(lb, only) == "closed"
