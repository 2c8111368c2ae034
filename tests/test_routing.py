"""Routing through the module: results, completion, membership, errors, distribution."""

from __future__ import annotations

import random

import pytest

from load_balancing_module import (
    BackendConfig,
    BackendNotFoundError,
    BackendUnavailableError,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    FakeClock,
    HealthCheckConfig,
    HealthState,
    LoadBalancingAlgorithmType,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    RoutingError,
)

REQ = Request(client_ip="10.1.1.1")


def make_lb(**overrides: object) -> tuple[LoadBalancingModule, FakeClock]:
    clock = FakeClock()
    config = LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False), **overrides)  # type: ignore[arg-type]
    return LoadBalancingModule(config, clock=clock, rng=random.Random(7)), clock


async def test_route_result_fields() -> None:
    lb, _ = make_lb()
    backend_id = await lb.add_backend(BackendConfig(host="10.9.9.9", port=8080))
    result = await lb.route_request(Request(client_ip="10.1.1.1", request_id="req-42"))
    assert (result.backend_id, result.host, result.port) == (backend_id, "10.9.9.9", 8080)
    assert result.algorithm is LoadBalancingAlgorithmType.ROUND_ROBIN
    assert result.request_id == "req-42"
    assert result.latency_ms >= 0.0
    generated = await lb.route_request(REQ)
    assert generated.request_id and generated.request_id != "req-42"
    assert generated.request_id != (await lb.route_request(REQ)).request_id


async def test_ids_are_unique_even_for_the_same_address() -> None:
    lb, _ = make_lb()
    first = await lb.add_backend(BackendConfig(host="same.test", port=80))
    second = await lb.add_backend(BackendConfig(host="same.test", port=80))
    assert first != second
    assert first == "same.test:80"


async def test_add_backend_accepts_a_dict_and_validates_it() -> None:
    lb, _ = make_lb()
    assert await lb.add_backend({"host": "dict.test", "port": 81}) == "dict.test:81"
    with pytest.raises(ValueError, match="port"):
        await lb.add_backend({"host": "dict.test", "port": 0})
    assert list(lb.backends) == ["dict.test:81"]


async def test_a_route_holds_a_slot_until_completed_once() -> None:
    lb, _ = make_lb()
    backend_id = await lb.add_backend(BackendConfig(host="a.test", port=80))
    result = await lb.route_request(REQ)
    info = (await lb.get_load_distribution()).backends[backend_id]
    assert info["active_connections"] == 1
    await lb.complete_request(result, success=True, latency_ms=5.0)
    await lb.complete_request(result, success=False, latency_ms=5.0)  # ignored
    info = (await lb.get_load_distribution()).backends[backend_id]
    assert info["active_connections"] == 0
    assert (info["successful_requests"], info["failed_requests"]) == (1, 0)


async def test_completion_without_latency_measures_it_on_the_clock() -> None:
    lb, clock = make_lb()
    backend_id = await lb.add_backend(BackendConfig(host="a.test", port=80))
    result = await lb.route_request(REQ)
    clock.set(clock.monotonic() + 0.25)
    await lb.complete_request(result, success=True)
    info = (await lb.get_load_distribution()).backends[backend_id]
    assert info["avg_latency_ms"] == pytest.approx(250.0)


async def test_remove_backend_stops_new_requests_but_lets_old_ones_complete() -> None:
    lb, _ = make_lb()
    a = await lb.add_backend(BackendConfig(host="a.test", port=80))
    b = await lb.add_backend(BackendConfig(host="b.test", port=80))
    held = [await lb.route_request(REQ) for _ in range(2)]
    assert {r.backend_id for r in held} == {a, b}
    await lb.remove_backend(a)
    for _ in range(5):
        result = await lb.route_request(REQ)
        assert result.backend_id == b
        await lb.complete_request(result, success=True)
    for result in held:
        await lb.complete_request(result, success=True)  # no error for the removed one
    assert a not in (await lb.get_load_distribution()).backends


async def test_unknown_backend_id_raises_backend_not_found() -> None:
    lb, _ = make_lb()
    with pytest.raises(BackendNotFoundError, match="nope"):
        await lb.remove_backend("nope")
    with pytest.raises(KeyError):
        await lb.health_check("nope")


async def test_no_backend_raises_unavailable() -> None:
    lb, _ = make_lb()
    with pytest.raises(BackendUnavailableError, match="no backend"):
        await lb.route_request(REQ)


async def test_unhealthy_everywhere_raises_unavailable_not_circuit_open() -> None:
    lb, _ = make_lb()
    backend_id = await lb.add_backend(BackendConfig(host="a.test", port=80))
    backend = lb.backends[backend_id]
    backend.health.state = HealthState.UNHEALTHY
    lb.router.refresh(backend)
    with pytest.raises(BackendUnavailableError) as info:
        await lb.route_request(REQ)
    assert not isinstance(info.value, CircuitBreakerOpenError)


async def test_open_circuits_alone_raise_circuit_breaker_open() -> None:
    lb, _ = make_lb(circuit_breaker=CircuitBreakerConfig(failure_threshold=1))
    for port in (80, 81):
        await lb.add_backend(BackendConfig(host="a.test", port=port))
    for _ in range(2):
        await lb.complete_request(await lb.route_request(REQ), success=False)
    with pytest.raises(CircuitBreakerOpenError):
        await lb.route_request(REQ)
    assert issubclass(CircuitBreakerOpenError, RoutingError)


async def test_priority_tiers_fail_over_and_come_back() -> None:
    lb, _ = make_lb(circuit_breaker=CircuitBreakerConfig(failure_threshold=1, timeout=10))
    primary = await lb.add_backend(BackendConfig(host="primary.test", port=80, priority=10))
    backup = await lb.add_backend(BackendConfig(host="backup.test", port=80, priority=1))
    assert (await lb.route_request(REQ)).backend_id == primary
    lb.backends[primary].health.state = HealthState.UNHEALTHY
    lb.router.refresh(lb.backends[primary])
    assert (await lb.route_request(REQ)).backend_id == backup
    lb.backends[primary].health.state = HealthState.HEALTHY
    lb.router.refresh(lb.backends[primary])
    assert (await lb.route_request(REQ)).backend_id == primary


async def test_full_primary_tier_spills_to_the_backup_tier() -> None:
    lb, _ = make_lb()
    primary = await lb.add_backend(BackendConfig(host="p.test", port=80, priority=5, max_connections=2))
    backup = await lb.add_backend(BackendConfig(host="b.test", port=80, priority=0))
    ids = [(await lb.route_request(REQ)).backend_id for _ in range(3)]
    assert ids == [primary, primary, backup]


async def test_degraded_only_when_no_healthy_candidate_in_the_tier() -> None:
    lb, _ = make_lb()
    healthy = await lb.add_backend(BackendConfig(host="h.test", port=80, max_connections=1))
    degraded = await lb.add_backend(BackendConfig(host="d.test", port=80))
    lb.backends[degraded].health.state = HealthState.DEGRADED
    lb.router.refresh(lb.backends[degraded])
    first = await lb.route_request(REQ)
    assert first.backend_id == healthy
    assert (await lb.route_request(REQ)).backend_id == degraded  # healthy one is full
    await lb.complete_request(first, success=True)
    assert (await lb.route_request(REQ)).backend_id == healthy


async def test_distribution_has_every_documented_field() -> None:
    lb, clock = make_lb()
    a = await lb.add_backend(BackendConfig(host="a.test", port=80, weight=2.0, priority=3, quantum_capable=True))
    for i in range(10):
        result = await lb.route_request(REQ)
        await lb.complete_request(result, success=i != 0, latency_ms=float(i + 1))
    clock.set(clock.monotonic() + 1.0)
    dist = await lb.get_load_distribution()
    assert dist.total_requests == 10
    assert dist.algorithm is LoadBalancingAlgorithmType.ROUND_ROBIN
    assert dist.active_sessions == 0 and dist.timestamp > 1.6e9
    assert dist.requests_per_second == pytest.approx(1.0)  # 10 requests in the last 10 s
    info = dist.backends[a]
    expected = {
        "host",
        "port",
        "weight",
        "priority",
        "quantum_capable",
        "active_connections",
        "total_requests",
        "successful_requests",
        "failed_requests",
        "requests_per_second",
        "avg_latency_ms",
        "p50_latency_ms",
        "p95_latency_ms",
        "p99_latency_ms",
        "error_rate",
        "health_status",
        "circuit_state",
        "load_fraction",
    }
    assert expected <= set(info)
    assert (info["weight"], info["priority"], info["quantum_capable"]) == (2.0, 3, True)
    assert (info["successful_requests"], info["failed_requests"]) == (9, 1)
    assert info["error_rate"] == pytest.approx(0.1)
    assert info["avg_latency_ms"] == pytest.approx(5.5)
    assert (info["p50_latency_ms"], info["p95_latency_ms"], info["p99_latency_ms"]) == (5.0, 10.0, 10.0)
    assert info["health_status"] == "healthy" and info["circuit_state"] == "closed"
    assert info["load_fraction"] == 1.0
    dist.model_dump_json()  # serialisable


async def test_latency_window_forgets_old_samples() -> None:
    lb, clock = make_lb()
    a = await lb.add_backend(BackendConfig(host="a.test", port=80))
    await lb.complete_request(await lb.route_request(REQ), success=False, latency_ms=900.0)
    clock.set(clock.monotonic() + 120)
    await lb.complete_request(await lb.route_request(REQ), success=True, latency_ms=10.0)
    info = (await lb.get_load_distribution()).backends[a]
    assert info["p99_latency_ms"] == 10.0 and info["error_rate"] == 0.0


async def test_acquire_completes_success_or_failure() -> None:
    lb, _ = make_lb()
    a = await lb.add_backend(BackendConfig(host="a.test", port=80))
    async with lb.acquire(REQ) as result:
        assert result.backend_id == a
        assert lb.backends[a].in_flight == 1
    with pytest.raises(ZeroDivisionError):
        async with lb.acquire(REQ):
            1 / 0  # noqa: B018
    info = (await lb.get_load_distribution()).backends[a]
    assert (info["successful_requests"], info["failed_requests"], info["active_connections"]) == (1, 1, 0)


async def test_initialize_and_shutdown_are_idempotent_and_async_with_works() -> None:
    lb, _ = make_lb()
    await lb.shutdown()  # before initialize: nothing to do
    async with lb:
        await lb.initialize()
        await lb.add_backend(BackendConfig(host="a.test", port=80))
    await lb.shutdown()


async def test_route_now_routes_without_waiting_or_says_none() -> None:
    lb, _ = make_lb()
    assert lb.route_now(REQ) is None  # no backend: route_request would raise
    a = await lb.add_backend(BackendConfig(host="a.test", port=80, max_connections=1))
    result = lb.route_now(REQ)
    assert result is not None and result.backend_id == a and lb.backends[a].in_flight == 1
    assert lb.route_now(REQ) is None  # the only slot is taken: this one would have to queue
    await lb.complete_request(result, success=True)
    sticky, _ = make_lb(session_affinity=True)
    await sticky.add_backend(BackendConfig(host="a.test", port=80))
    assert sticky.route_now(Request(session_id="s1")) is None  # the session store must be asked
    assert sticky.route_now(Request()) is not None


async def test_retry_routing_completion_and_abandon_for_callers_that_drive_their_own_tries() -> None:
    lb, _ = make_lb()
    ids = [await lb.add_backend(BackendConfig(host=f"{n}.test", port=80)) for n in "abc"]
    first = await lb.route_request(REQ)
    lb.complete_now(first, success=False, latency_ms=3.0)
    assert first.backend is not None
    second = await lb.route_retry(REQ, [first.backend], attempt=2)
    assert second.backend_id != first.backend_id and second.attempt == 2
    assert second.backend is not None
    third = await lb.route_retry(REQ, [first.backend, second.backend], attempt=3)
    assert {first.backend_id, second.backend_id, third.backend_id} == set(ids)
    with pytest.raises(BackendUnavailableError):
        await lb.route_retry(REQ, [lb.backends[i] for i in ids], attempt=4)
    lb.abandon_request(second)  # released, no outcome recorded
    lb.abandon_request(second)
    info = (await lb.get_load_distribution()).backends
    assert info[second.backend_id]["active_connections"] == 0
    assert info[second.backend_id]["failed_requests"] == info[second.backend_id]["successful_requests"] == 0
    assert info[first.backend_id]["failed_requests"] == 1
    assert 0.0 <= lb.backoff(3) <= 0.2
