"""Slow start: a joining or recovering backend ramps its weight linearly."""

from __future__ import annotations

import random
from collections import deque

import pytest

from load_balancing_module import (
    BackendConfig,
    FakeClock,
    HealthCheckConfig,
    LoadBalancingAlgorithm,
    LoadBalancingAlgorithmType,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    RouteResult,
)


async def make_lb(algorithm: LoadBalancingAlgorithmType) -> tuple[LoadBalancingModule, FakeClock]:
    clock = FakeClock()
    config = LoadBalancingModuleConfig(
        health_check=HealthCheckConfig(enabled=False),
        algorithm=LoadBalancingAlgorithm(algorithm_type=algorithm),
    )
    return LoadBalancingModule(config, clock=clock, rng=random.Random(8)), clock


async def share_of(lb: LoadBalancingModule, backend_id: str, n: int = 400) -> float:
    """Share of ``n`` requests routed to ``backend_id`` with 8 requests kept in flight."""
    hits = 0
    held: deque[RouteResult] = deque()
    for i in range(n):
        result = await lb.route_request(Request(client_ip=f"10.0.{i % 200}.1"))
        hits += result.backend_id == backend_id
        held.append(result)
        if len(held) == 8:
            await lb.complete_request(held.popleft(), success=True, latency_ms=1.0)
    for result in held:
        await lb.complete_request(result, success=True, latency_ms=1.0)
    return hits / n


async def test_effective_weight_ramps_linearly() -> None:
    lb, clock = await make_lb(LoadBalancingAlgorithmType.WEIGHTED)
    await lb.add_backend(BackendConfig(host="old.test", port=80))
    new = await lb.add_backend(BackendConfig(host="new.test", port=80, weight=2.0, slow_start_seconds=100))
    backend = lb.backends[new]
    assert backend.effective_weight == pytest.approx(0.1)  # 5% of 2.0 at first
    for t, expected in ((25, 0.5), (50, 1.0), (75, 1.5), (100, 2.0), (200, 2.0)):
        clock.set(1000.0 + t)
        await lb.route_request(Request())  # timers run on the request path
        assert backend.effective_weight == pytest.approx(expected)


@pytest.mark.parametrize(
    "algorithm", [LoadBalancingAlgorithmType.WEIGHTED, LoadBalancingAlgorithmType.LEAST_CONNECTIONS]
)
async def test_traffic_share_grows_during_slow_start(algorithm: LoadBalancingAlgorithmType) -> None:
    lb, clock = await make_lb(algorithm)
    await lb.add_backend(BackendConfig(host="old.test", port=80))
    new = await lb.add_backend(BackendConfig(host="new.test", port=80, slow_start_seconds=60))
    early = await share_of(lb, new)
    clock.set(clock.monotonic() + 30)
    middle = await share_of(lb, new)
    clock.set(clock.monotonic() + 40)
    late = await share_of(lb, new)
    if algorithm is LoadBalancingAlgorithmType.WEIGHTED:
        assert early < 0.1 and 0.25 < middle < 0.4 and late == pytest.approx(0.5, abs=0.01)
    else:
        # In flight per unit of weight: the new backend takes a request only when it is far less loaded.
        assert early < 0.15 and early < middle < late and late == pytest.approx(0.5, abs=0.07)


async def test_no_slow_start_by_default() -> None:
    lb, _ = await make_lb(LoadBalancingAlgorithmType.WEIGHTED)
    new = await lb.add_backend(BackendConfig(host="new.test", port=80, weight=3))
    assert lb.backends[new].effective_weight == 3
