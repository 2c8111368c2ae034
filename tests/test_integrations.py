"""Auto-scaling hooks: periodic load reports and capacity-exhausted events."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from load_balancing_module import (
    BackendConfig,
    BackendUnavailableError,
    FakeClock,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    LoadDistribution,
    Request,
    RequestTimeoutError,
)


class Scaler:
    def __init__(self, lb: LoadBalancingModule) -> None:
        self.lb = lb
        self.reports: list[LoadDistribution] = []
        self.exhausted: list[Request] = []

    async def on_load_report(self, distribution: LoadDistribution) -> None:
        self.reports.append(distribution)

    async def on_capacity_exhausted(self, request: Request) -> None:
        self.exhausted.append(request)
        await self.lb.add_backend(BackendConfig(host=f"scaled{len(self.exhausted)}.test", port=80))


def make_lb(**overrides: Any) -> tuple[LoadBalancingModule, FakeClock]:
    clock = FakeClock()
    config = LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False), **overrides)
    return LoadBalancingModule(config, clock=clock, rng=random.Random(4)), clock


async def test_load_reports_every_interval() -> None:
    lb, clock = make_lb(load_report_interval=10)
    scaler = Scaler(lb)
    await lb.initialize()
    try:
        await lb.integrate_auto_scaling(scaler)
        await lb.add_backend(BackendConfig(host="a.test", port=80))
        await clock.advance(9.9)
        assert scaler.reports == []
        await clock.advance(0.2)
        assert len(scaler.reports) == 1 and "a.test:80" in scaler.reports[0].backends
        await clock.advance(20)
        assert len(scaler.reports) == 3
    finally:
        await lb.shutdown()
    await clock.advance(30)
    assert len(scaler.reports) == 3  # stopped


async def test_capacity_exhausted_when_nothing_can_take_a_request() -> None:
    lb, _ = make_lb()
    scaler = Scaler(lb)
    await lb.integrate_auto_scaling(scaler)
    with pytest.raises(BackendUnavailableError):
        await lb.route_request(Request(client_ip="10.0.0.1"))
    assert len(scaler.exhausted) == 1
    # The scaler added a backend: the next request goes there.
    assert (await lb.route_request(Request(client_ip="10.0.0.1"))).host == "scaled1.test"


async def test_capacity_exhausted_on_queue_timeout() -> None:
    lb, clock = make_lb(request_timeout=1)
    scaler = Scaler(lb)
    scaler.on_capacity_exhausted = scaler.exhausted.append  # type: ignore[method-assign]
    await lb.integrate_auto_scaling(scaler)
    await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=1))
    await lb.route_request(Request())
    task = asyncio.create_task(lb.route_request(Request()))
    await clock.advance(1.5)
    with pytest.raises(RequestTimeoutError):
        await task
    assert len(scaler.exhausted) == 1  # a plain function works too


async def test_hooks_are_optional_and_their_errors_do_not_break_routing() -> None:
    lb, clock = make_lb(load_report_interval=1)

    class Broken:
        def on_load_report(self, distribution: LoadDistribution) -> None:
            raise RuntimeError("scaler bug")

    await lb.integrate_auto_scaling(object())
    await lb.integrate_auto_scaling(Broken())
    await lb.initialize()
    await lb.add_backend(BackendConfig(host="a.test", port=80))
    await clock.advance(3)
    assert (await lb.route_request(Request())).host == "a.test"
    await lb.shutdown()
