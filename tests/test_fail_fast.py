"""Only max_connections saturation queues: any other reason for no candidate fails at once.

With the fake clock a request that wrongly waited would wait forever (the clock never
moves by itself), so each call runs under a short real timeout: a hang fails the test.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from load_balancing_module import (
    BackendConfig,
    BackendUnavailableError,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    FakeClock,
    HealthCheckConfig,
    HealthState,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    RouteResult,
)
from load_balancing_module.exceptions import RequestTimeoutError

T = TypeVar("T")
REQ = Request(client_ip="10.3.3.3")
BREAKER = CircuitBreakerConfig(failure_threshold=1, success_threshold=1, timeout=10, half_open_max_calls=1)


def make_lb() -> tuple[LoadBalancingModule, FakeClock]:
    clock = FakeClock()
    config = LoadBalancingModuleConfig(
        health_check=HealthCheckConfig(enabled=False, unhealthy_threshold=1),
        circuit_breaker=BREAKER,
        request_timeout=30,
    )
    return LoadBalancingModule(config, clock=clock, rng=random.Random(5)), clock


async def promptly(aw: Awaitable[T]) -> T:
    """``aw``'s outcome, which must come without the fake clock moving."""
    return await asyncio.wait_for(aw, 1.0)


async def half_open_with_trial_in_flight(lb: LoadBalancingModule, clock: FakeClock) -> RouteResult:
    await lb.complete_request(await lb.route_request(REQ), success=False)  # opens (threshold 1)
    clock.set(clock.monotonic() + BREAKER.timeout)
    return await lb.route_request(REQ)  # the one trial HALF_OPEN admits


async def test_half_open_with_its_trials_in_flight_fails_at_once() -> None:
    lb, clock = make_lb()
    only = await lb.add_backend(BackendConfig(host="only.test", port=80))
    trial = await half_open_with_trial_in_flight(lb, clock)
    assert lb.backends[only].circuit_state.value == "half_open"
    with pytest.raises(CircuitBreakerOpenError, match="half-open"):
        await promptly(lb.route_request(REQ))
    assert lb.router.queued == 0
    await lb.complete_request(trial, success=True)  # the trial closes the circuit: routable again
    assert (await lb.route_request(REQ)).backend_id == only


async def test_a_draining_backend_is_no_reason_to_wait() -> None:
    lb, _ = make_lb()
    only = await lb.add_backend(BackendConfig(host="only.test", port=80))
    held = await lb.route_request(REQ)
    drain = asyncio.create_task(lb.drain_backend(only, timeout=60))
    await asyncio.sleep(0)
    with pytest.raises(BackendUnavailableError, match="1 draining") as caught:
        await promptly(lb.route_request(REQ))
    assert not isinstance(caught.value, CircuitBreakerOpenError)
    await lb.complete_request(held, success=True)
    drain.cancel()
    await asyncio.gather(drain, return_exceptions=True)


async def test_unhealthy_and_open_together_fail_at_once_naming_both() -> None:
    lb, _ = make_lb()
    sick = await lb.add_backend(BackendConfig(host="sick.test", port=80))
    broken = await lb.add_backend(BackendConfig(host="broken.test", port=80))
    lb.backends[sick].health.state = HealthState.UNHEALTHY
    lb.router.refresh(lb.backends[sick])
    await lb.complete_request(await lb.route_request(REQ), success=False)  # broken's circuit opens
    assert lb.backends[broken].circuit_state.value == "open"
    with pytest.raises(BackendUnavailableError, match="1 unhealthy, 1 with an open circuit"):
        await promptly(lb.route_request(REQ))


async def test_saturation_still_queues_beside_a_refusing_breaker() -> None:
    """One backend at max_connections, the other half-open and full: the first will free a slot."""
    lb, clock = make_lb()
    first = await lb.add_backend(BackendConfig(host="first.test", port=80))
    await half_open_with_trial_in_flight(lb, clock)
    busy = await lb.add_backend(BackendConfig(host="busy.test", port=80, max_connections=1))
    held = await lb.route_request(REQ)
    assert held.backend_id == busy
    waiter = asyncio.create_task(lb.route_request(REQ))
    await asyncio.sleep(0)
    assert lb.router.queued == 1 and not waiter.done()
    await lb.complete_request(held, success=True)
    assert (await promptly(waiter)).backend_id == busy
    assert lb.backends[first].circuit_state.value == "half_open"


@pytest.mark.parametrize("cause", ["circuit opens", "health fails", "drained", "removed"])
async def test_a_waiter_fails_at_once_when_its_slot_can_no_longer_come(cause: str) -> None:
    lb, clock = make_lb()
    only = await lb.add_backend(BackendConfig(host="only.test", port=80, max_connections=1))
    held = await lb.route_request(REQ)
    waiter = asyncio.create_task(lb.route_request(REQ))
    await asyncio.sleep(0)
    assert lb.router.queued == 1
    drain = None
    if cause == "circuit opens":
        lb.backends[only].breaker.on_failure()  # another completion's failure, as the module reports it
    elif cause == "health fails":
        backend = lb.backends[only]
        backend.health.record(False, None, 0.0, "refused")
        lb.router.refresh(backend)
        lb.router.dispatch()
    elif cause == "drained":
        drain = asyncio.create_task(lb.drain_backend(only, timeout=60))
    else:
        await lb.remove_backend(only)
    with pytest.raises(BackendUnavailableError):
        await promptly(waiter)
    assert lb.router.queued == 0
    await lb.complete_request(held, success=True)
    if drain is not None:
        await clock.advance(0.1)  # the drain's next look sees nothing in flight
        assert (await promptly(drain)).completed


async def test_only_saturation_waits_the_request_timeout() -> None:
    lb, clock = make_lb()
    await lb.add_backend(BackendConfig(host="only.test", port=80, max_connections=1))
    await lb.route_request(REQ)
    waiter = asyncio.create_task(lb.route_request(REQ))
    await clock.advance(29.9)
    assert not waiter.done()
    await clock.advance(0.2)
    with pytest.raises(RequestTimeoutError):
        await promptly(waiter)


async def test_slow_start_begins_above_zero() -> None:
    """A backend in slow start is a candidate from its first moment (its weight starts at a floor)."""
    lb, _ = make_lb()
    new = await lb.add_backend(BackendConfig(host="new.test", port=80, slow_start_seconds=60))
    assert 0 < lb.backends[new].effective_weight < 1
    assert (await promptly(lb.route_request(REQ))).backend_id == new
