"""Draining a backend: no new requests, requests in flight finish, then it is removed."""

from __future__ import annotations

import asyncio

import pytest

from conftest import MakeLB
from load_balancing_module import (
    BackendConfig,
    BackendNotFoundError,
    BackendUnavailableError,
    FakeClock,
    Request,
    WorkloadType,
)

A = BackendConfig(host="a.test", port=80)
B = BackendConfig(host="b.test", port=80)


async def test_drain_waits_for_requests_in_flight_then_removes(make_lb: MakeLB, fake_clock: FakeClock) -> None:
    lb = await make_lb("round_robin", [A, B])
    held = [await lb.route_request(Request()) for _ in range(4)]
    on_a = [r for r in held if r.backend_id == "a.test:80"]
    assert len(on_a) == 2
    drain = asyncio.create_task(lb.drain_backend("a.test:80", timeout=30))
    await fake_clock.advance(0.05)
    assert not drain.done()
    assert set(lb.draining) == {"a.test:80"}
    described = (await lb.get_load_distribution()).backends
    assert described["a.test:80"]["draining"] is True and described["b.test:80"]["draining"] is False
    fresh = [await lb.route_request(Request()) for _ in range(5)]
    assert {r.backend_id for r in fresh} == {"b.test:80"}  # no new request goes to the draining backend
    await lb.complete_request(on_a[0], success=True)
    await fake_clock.advance(0.05)
    assert not drain.done() and "a.test:80" in lb.backends
    await lb.complete_request(on_a[1], success=True)
    await fake_clock.advance(0.05)
    result = drain.result()
    assert result.backend_id == "a.test:80" and result.in_flight == 2
    assert result.completed and result.in_flight_left == 0
    assert 0.1 <= result.waited_seconds <= 0.12
    assert result.finished_at - result.started_at == pytest.approx(result.waited_seconds)
    assert "a.test:80" not in lb.backends and not lb.draining
    assert lb.backends["b.test:80"].in_flight == 7


async def test_drain_without_requests_in_flight_is_immediate(make_lb: MakeLB) -> None:
    lb = await make_lb("least_connections", [A, B])
    result = await lb.drain_backend("b.test:80")
    assert result.in_flight == 0 and result.completed and result.waited_seconds == 0
    assert list(lb.backends) == ["a.test:80"]


async def test_drain_timeout_removes_the_backend_and_late_completions_pass(
    make_lb: MakeLB, fake_clock: FakeClock
) -> None:
    lb = await make_lb("round_robin", [A, B])
    stuck = await lb.route_request(Request())
    assert stuck.backend_id == "a.test:80"
    drain = asyncio.create_task(lb.drain_backend("a.test:80", timeout=2))
    await fake_clock.advance(2.5)
    result = drain.result()
    assert not result.completed and result.in_flight == 1 and result.in_flight_left == 1
    assert result.waited_seconds == pytest.approx(2.0)
    assert "a.test:80" not in lb.backends
    await lb.complete_request(stuck, success=True)  # the request finishes after all: no error
    assert (await lb.route_request(Request())).backend_id == "b.test:80"


async def test_a_second_drain_shares_the_first_and_cancelling_a_caller_does_not_stop_it(
    make_lb: MakeLB, fake_clock: FakeClock
) -> None:
    lb = await make_lb("round_robin", [A, B])
    held = await lb.route_request(Request())
    first = asyncio.create_task(lb.drain_backend("a.test:80", timeout=10))
    second = asyncio.create_task(lb.drain_backend("a.test:80"))
    await fake_clock.advance(0.05)
    first.cancel()
    await fake_clock.advance(0.05)
    assert first.cancelled() and not second.done() and "a.test:80" in lb.draining
    await lb.complete_request(held, success=True)
    await fake_clock.advance(0.05)
    assert second.result().in_flight == 1 and second.result().completed
    assert "a.test:80" not in lb.backends


async def test_drain_refuses_unknown_ids_and_negative_timeouts(make_lb: MakeLB) -> None:
    lb = await make_lb("round_robin", [A])
    with pytest.raises(BackendNotFoundError):
        await lb.drain_backend("nope:1")
    with pytest.raises(ValueError, match="timeout"):
        await lb.drain_backend("a.test:80", timeout=-1)
    assert not lb.draining and lb.backends["a.test:80"].rank == 0  # nothing half-applied


async def test_sticky_sessions_leave_a_draining_backend(make_lb: MakeLB, fake_clock: FakeClock) -> None:
    lb = await make_lb("round_robin", [A, B], session_affinity=True)
    bound = await lb.route_request(Request(session_id="s1"))
    drain = asyncio.create_task(lb.drain_backend(bound.backend_id, timeout=5))
    await fake_clock.advance(0.05)
    moved = await lb.route_request(Request(session_id="s1", workload_type=WorkloadType.CLASSICAL))
    assert moved.backend_id != bound.backend_id
    await lb.complete_request(bound, success=True)
    await fake_clock.advance(0.05)
    assert drain.result().completed


async def test_draining_the_last_backend_fails_waiting_requests(make_lb: MakeLB, fake_clock: FakeClock) -> None:
    lb = await make_lb("round_robin", [BackendConfig(host="a.test", port=80, max_connections=1)])
    held = await lb.route_request(Request())
    waiting = asyncio.create_task(lb.route_request(Request()))
    await fake_clock.advance(0.01)
    drain = asyncio.create_task(lb.drain_backend("a.test:80"))
    await fake_clock.advance(0.01)
    await lb.complete_request(held, success=True)
    await fake_clock.advance(0.05)
    assert drain.result().completed
    with pytest.raises(BackendUnavailableError):
        waiting.result()
