"""Sticky sessions: binding, rebinding when the backend is not a candidate, expiry."""

from __future__ import annotations

import random

import pytest

from load_balancing_module import (
    BackendConfig,
    FakeClock,
    HealthCheckConfig,
    HealthState,
    LoadBalancingAlgorithm,
    LoadBalancingAlgorithmType,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
)


async def make_lb(affinity: bool = True, ttl: float = 100) -> tuple[LoadBalancingModule, FakeClock, list[str]]:
    clock = FakeClock()
    config = LoadBalancingModuleConfig(
        health_check=HealthCheckConfig(enabled=False),
        session_affinity=affinity,
        session_ttl=ttl,
        algorithm=LoadBalancingAlgorithm(algorithm_type=LoadBalancingAlgorithmType.ROUND_ROBIN),
    )
    lb = LoadBalancingModule(config, clock=clock, rng=random.Random(5))
    ids = [await lb.add_backend(BackendConfig(host=f"s{i}.test", port=80)) for i in range(3)]
    return lb, clock, ids


async def route(lb: LoadBalancingModule, session: str | None) -> str:
    result = await lb.route_request(Request(client_ip="10.3.3.3", session_id=session))
    await lb.complete_request(result, success=True)
    return result.backend_id


async def test_a_session_sticks_to_its_backend() -> None:
    lb, _, _ = await make_lb()
    first = await route(lb, "alice")
    assert all([await route(lb, "alice") == first for _ in range(10)])
    others = {await route(lb, None) for _ in range(6)}
    assert len(others) == 3  # requests without a session still rotate
    assert (await lb.get_load_distribution()).active_sessions == 1


async def test_without_affinity_sessions_are_ignored() -> None:
    lb, _, _ = await make_lb(affinity=False)
    assert len({await route(lb, "bob") for _ in range(3)}) == 3


async def test_rebound_when_the_backend_is_no_longer_a_candidate() -> None:
    lb, _, _ = await make_lb()
    first = await route(lb, "carol")
    backend = lb.backends[first]
    backend.health.state = HealthState.UNHEALTHY
    lb.router.refresh(backend)
    second = await route(lb, "carol")
    assert second != first
    backend.health.state = HealthState.HEALTHY
    lb.router.refresh(backend)
    assert await route(lb, "carol") == second  # stays on the new binding


async def test_rebound_when_the_backend_is_removed() -> None:
    lb, _, _ = await make_lb()
    first = await route(lb, "dave")
    await lb.remove_backend(first)
    second = await route(lb, "dave")
    assert second != first and await route(lb, "dave") == second


async def test_idle_sessions_expire_after_ttl_and_use_refreshes_them() -> None:
    lb, clock, _ = await make_lb(ttl=100)
    first = await route(lb, "erin")
    for _ in range(5):  # used every 60 s: never idle for 100 s
        clock.set(clock.monotonic() + 60)
        assert await route(lb, "erin") == first
    clock.set(clock.monotonic() + 100)
    assert (await lb.get_load_distribution()).active_sessions == 0
    # Expired: the next request is routed afresh (round robin moves on).
    assert await route(lb, "erin") != first


@pytest.mark.parametrize("full", [True])
async def test_a_full_sticky_backend_is_not_waited_for(full: bool) -> None:
    clock = FakeClock()
    lb = LoadBalancingModule(
        LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False), session_affinity=True),
        clock=clock,
    )
    a = await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=1))
    b = await lb.add_backend(BackendConfig(host="b.test", port=80))
    held = await lb.route_request(Request(client_ip="10.0.0.1", session_id="frank"))
    assert held.backend_id == a
    other = await lb.route_request(Request(client_ip="10.0.0.1", session_id="frank"))
    assert other.backend_id == b
