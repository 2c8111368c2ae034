"""Queuing at max_connections: FIFO, timeout, bounded queue, hand-over on release."""

from __future__ import annotations

import asyncio
import random

import pytest

from load_balancing_module import (
    BackendConfig,
    BackendUnavailableError,
    FakeClock,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    RequestTimeoutError,
    RouteResult,
)


def make_lb(**overrides: object) -> tuple[LoadBalancingModule, FakeClock]:
    clock = FakeClock()
    config = LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False), **overrides)  # type: ignore[arg-type]
    return LoadBalancingModule(config, clock=clock, rng=random.Random(3)), clock


def req(n: int) -> Request:
    return Request(client_ip=f"10.0.0.{n}", request_id=f"r{n}")


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_waiters_are_served_first_in_first_out() -> None:
    lb, _ = make_lb(request_timeout=30)
    await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=1))
    holder = await lb.route_request(req(1))
    tasks = []
    for n in (2, 3, 4):
        tasks.append(asyncio.create_task(lb.route_request(req(n))))
        await settle()
    assert lb.router.queued == 3
    served: list[str] = []
    current: RouteResult = holder
    for _ in tasks:
        await lb.complete_request(current, success=True)
        await settle()
        done = [t for t in tasks if t.done() and t.result().request_id not in served]
        assert len(done) == 1
        current = done[0].result()
        served.append(current.request_id)
    assert served == ["r2", "r3", "r4"]


async def test_a_new_arrival_does_not_overtake_the_queue() -> None:
    lb, _ = make_lb()
    await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=1))
    holder = await lb.route_request(req(1))
    waiting = asyncio.create_task(lb.route_request(req(2)))
    await settle()
    late = asyncio.create_task(lb.route_request(req(3)))
    await settle()
    await lb.complete_request(holder, success=True)
    await settle()
    assert waiting.done() and not late.done()
    await lb.complete_request(waiting.result(), success=True)
    await settle()
    assert late.done()


async def test_waiting_times_out_after_request_timeout() -> None:
    lb, clock = make_lb(request_timeout=5)
    await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=1))
    await lb.route_request(req(1))
    task = asyncio.create_task(lb.route_request(req(2)))
    await clock.advance(4.9)
    assert not task.done()
    await clock.advance(0.2)
    with pytest.raises(RequestTimeoutError, match="5 s"):
        await task
    assert lb.router.queued == 0
    assert lb.counters["queue_timeouts"] == 1


async def test_a_full_queue_fails_at_once() -> None:
    lb, _ = make_lb(max_queue_size=2)
    await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=1))
    await lb.route_request(req(1))
    waiting = [asyncio.create_task(lb.route_request(req(n))) for n in (2, 3)]
    await settle()
    with pytest.raises(BackendUnavailableError, match="queue is full"):
        await lb.route_request(req(4))
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_zero_queue_size_means_no_waiting() -> None:
    lb, _ = make_lb(max_queue_size=0)
    await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=1))
    await lb.route_request(req(1))
    with pytest.raises(BackendUnavailableError):
        await lb.route_request(req(2))


async def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    lb, _ = make_lb()
    a = await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=1))
    holder = await lb.route_request(req(1))
    task = asyncio.create_task(lb.route_request(req(2)))
    await settle()
    task.cancel()
    await settle()
    await lb.complete_request(holder, success=True)
    assert lb.backends[a].in_flight == 0
    assert lb.router.queued == 0
    result = await lb.route_request(req(3))
    assert result.backend_id == a


async def test_a_new_backend_serves_the_queue() -> None:
    lb, _ = make_lb()
    await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=1))
    await lb.route_request(req(1))
    task = asyncio.create_task(lb.route_request(req(2)))
    await settle()
    b = await lb.add_backend(BackendConfig(host="b.test", port=80))
    await settle()
    assert task.done() and task.result().backend_id == b


async def test_shutdown_fails_waiters() -> None:
    lb, _ = make_lb()
    await lb.initialize()
    await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=1))
    await lb.route_request(req(1))
    task = asyncio.create_task(lb.route_request(req(2)))
    await settle()
    await lb.shutdown()
    with pytest.raises(BackendUnavailableError, match="shutting down"):
        await task
