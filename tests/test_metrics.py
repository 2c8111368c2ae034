"""Prometheus collector (read at scrape time) and structured log events."""

from __future__ import annotations

import logging
import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from load_balancing_module import (
    BackendConfig,
    CircuitBreakerConfig,
    FakeClock,
    HealthCheckConfig,
    HealthState,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    RateLimitConfig,
    RateLimitExceededError,
    Request,
    register_metrics,
)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_values_move_with_traffic() -> None:
    clock = FakeClock()
    lb = LoadBalancingModule(
        LoadBalancingModuleConfig(
            health_check=HealthCheckConfig(enabled=False),
            circuit_breaker=CircuitBreakerConfig(failure_threshold=2),
            rate_limit=RateLimitConfig(enabled=True, requests_per_second=1, burst_size=3),
        ),
        clock=clock,
        rng=random.Random(1),
    )
    registry = CollectorRegistry()
    register_metrics(lb, registry)
    a = await lb.add_backend(BackendConfig(host="a.test", port=80))
    before = samples(registry)
    assert before[("omnixan_lb_completed_requests_total", (("backend", a), ("outcome", "success")))] == 0
    assert before[("omnixan_lb_backend_up", (("backend", a),))] == 1
    held = await lb.route_request(Request(client_ip="10.0.0.1"))
    assert samples(registry)[("omnixan_lb_active_connections", (("backend", a),))] == 1
    await lb.complete_request(held, success=True, latency_ms=40)
    for _ in range(2):
        await lb.complete_request(await lb.route_request(Request(client_ip="10.0.0.1")), success=False)
    with pytest.raises(RateLimitExceededError):
        await lb.route_request(Request(client_ip="10.0.0.1"))
    after = samples(registry)
    assert after[("omnixan_lb_completed_requests_total", (("backend", a), ("outcome", "success")))] == 1
    assert after[("omnixan_lb_completed_requests_total", (("backend", a), ("outcome", "failure")))] == 2
    assert after[("omnixan_lb_circuit_state", (("backend", a),))] == 2  # open
    assert after[("omnixan_lb_rate_limited_total", ())] == 1
    assert after[("omnixan_lb_backend_recent_latency_seconds", (("backend", a), ("quantile", "0.99")))] == 0.04
    assert after[("omnixan_lb_routed_requests_total", (("backend", a),))] == 3
    lb.backends[a].health.state = HealthState.UNHEALTHY
    assert samples(registry)[("omnixan_lb_backend_up", (("backend", a),))] == 0
    assert samples(registry)[("omnixan_lb_backend_health", (("backend", a), ("state", "unhealthy")))] == 1


def test_request_stats_histogram_follows_prometheus_conventions() -> None:
    config = LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False))
    lb = LoadBalancingModule(config, clock=FakeClock())
    registry = CollectorRegistry()
    register_metrics(lb, registry)
    stats = lb.request_stats
    stats.record("a:1", 200, 0.0004)  # below the first bound
    stats.record("a:1", 204, 0.001)  # exactly on a bound: counted in it (le)
    stats.record("a:1", 503, 0.02)
    stats.record("none", 429, 0.0001)
    stats.record("a:1", 200, 99.0)  # above every bound: +Inf only
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert families["omnixan_lb_requests"].type == "counter"
    assert families["omnixan_lb_request_duration_seconds"].type == "histogram"
    got = samples(registry)
    ok = (("backend", "a:1"), ("code_class", "2xx"))
    assert got[("omnixan_lb_requests_total", ok)] == 3
    assert got[("omnixan_lb_requests_total", (("backend", "a:1"), ("code_class", "5xx")))] == 1
    assert got[("omnixan_lb_requests_total", (("backend", "none"), ("code_class", "4xx")))] == 1
    assert ("omnixan_lb_requests_total", (("backend", "a:1"), ("code_class", "3xx"))) not in got
    bucket = "omnixan_lb_request_duration_seconds_bucket"
    assert got[(bucket, (*ok, ("le", "0.0005")))] == 1
    assert got[(bucket, (*ok, ("le", "0.001")))] == 2
    assert got[(bucket, (*ok, ("le", "30.0")))] == 2
    assert got[(bucket, (*ok, ("le", "+Inf")))] == 3
    assert got[("omnixan_lb_request_duration_seconds_count", ok)] == 3
    assert got[("omnixan_lb_request_duration_seconds_sum", ok)] == pytest.approx(99.0014)
    assert stats.total() == 5 and stats.total("a:1") == 4 and stats.total("b:2") == 0


async def test_state_changes_are_logged_as_structured_events(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="load_balancing_module")
    lb = LoadBalancingModule(
        LoadBalancingModuleConfig(
            health_check=HealthCheckConfig(enabled=False),
            circuit_breaker=CircuitBreakerConfig(failure_threshold=1),
            rate_limit=RateLimitConfig(enabled=True, ddos_threshold=1, burst_size=5),
        ),
        clock=FakeClock(),
    )
    a = await lb.add_backend(BackendConfig(host="a.test", port=80))
    await lb.complete_request(await lb.route_request(Request(client_ip="10.0.0.9")), success=False)
    with pytest.raises(RateLimitExceededError):
        await lb.route_request(Request(client_ip="10.0.0.9"))
    await lb.remove_backend(a)
    events = {r.event: r.fields for r in caplog.records if hasattr(r, "event")}  # type: ignore[attr-defined]
    assert events["backend_added"]["backend_id"] == a
    assert events["circuit_state_changed"] == {"backend_id": a, "old": "closed", "new": "open"}
    assert events["client_blocked"]["client_ip"] == "10.0.0.9"
    assert events["backend_removed"]["backend_id"] == a
    assert any(
        "circuit_state_changed backend_id=a.test:80 old=closed new=open" in r.getMessage() for r in caplog.records
    )


async def test_sessions_evicted_to_stay_within_max_sessions_are_exported() -> None:
    lb = LoadBalancingModule(
        LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False), session_affinity=True, max_sessions=5),
        clock=FakeClock(),
    )
    registry = CollectorRegistry()
    register_metrics(lb, registry)
    await lb.add_backend(BackendConfig(host="a.test", port=80))
    assert samples(registry)[("omnixan_lb_sessions_evicted_total", ())] == 0
    for i in range(12):  # a client inventing a session id per request
        await lb.complete_request(await lb.route_request(Request(session_id=f"s{i}")), success=True)
    assert samples(registry)[("omnixan_lb_sessions_evicted_total", ())] == 7
    assert (await lb.get_load_distribution()).active_sessions == 5


async def test_several_modules_by_pool_name_label_every_family_once() -> None:
    """The server's use: one collector over every pool, each family once, each sample with its pool;
    one module alone keeps no pool label (the library's use)."""
    pools = {"default": LoadBalancingModule(), "api": LoadBalancingModule()}
    for port, lb in enumerate(pools.values(), start=9001):
        await lb.initialize()
        await lb.add_backend(BackendConfig(host="127.0.0.1", port=port))
        lb.request_stats.record(f"127.0.0.1:{port}", 200, 0.01)
    registry = CollectorRegistry()
    register_metrics(pools, registry)
    text = generate_latest(registry).decode()
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names))  # each family once, for both pools
    for family in families:
        pools_seen = {s.labels.get("pool") for s in family.samples}
        if family.name == "omnixan_lb_build_info":
            assert pools_seen == {None}
        elif family.samples:
            assert pools_seen == {"default", "api"}, family.name
    got = samples(registry)
    assert (
        got[("omnixan_lb_requests_total", (("backend", "127.0.0.1:9002"), ("code_class", "2xx"), ("pool", "api")))] == 1
    )
    assert got[("omnixan_lb_backends", (("pool", "default"),))] == 1

    alone = CollectorRegistry()
    register_metrics(pools["api"], alone)
    assert all("pool" not in dict(labels) for _, labels in samples(alone))
    for lb in pools.values():
        await lb.shutdown()
