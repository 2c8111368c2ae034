"""Prometheus exposition of the module's state, read at scrape time.

The hot path only bumps plain Python counters; this collector turns them
into metric families when Prometheus scrapes. Every name starts with
``omnixan_lb_``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from .enums import CircuitState, HealthState

if TYPE_CHECKING:
    from .module import LoadBalancingModule

CIRCUIT_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


class LoadBalancerCollector(Collector):
    def __init__(self, module: LoadBalancingModule) -> None:
        self.module = module

    def collect(self) -> Iterator[Metric]:
        lb = self.module
        now = lb.clock.monotonic()
        backends = list(lb.backends.values())
        requests = CounterMetricFamily("omnixan_lb_requests", "Requests completed, by backend and outcome.",
                                       labels=["backend", "outcome"])  # fmt: skip
        routed = CounterMetricFamily("omnixan_lb_routed_requests", "Requests routed, by backend.", labels=["backend"])
        active = GaugeMetricFamily("omnixan_lb_active_connections", "Requests in flight.", labels=["backend"])
        up = GaugeMetricFamily("omnixan_lb_backend_up", "1 unless the backend is UNHEALTHY.", labels=["backend"])
        health = GaugeMetricFamily("omnixan_lb_backend_health", "1 for the backend's health state.",
                                   labels=["backend", "state"])  # fmt: skip
        circuit = GaugeMetricFamily("omnixan_lb_circuit_state", "Circuit state: 0 closed, 1 half-open, 2 open.",
                                    labels=["backend"])  # fmt: skip
        latency = SummaryMetricFamily("omnixan_lb_request_latency_seconds",
                                      "Latency of recently completed requests.", labels=["backend"])  # fmt: skip
        quantiles = GaugeMetricFamily("omnixan_lb_request_latency_quantile_seconds",
                                      "Latency percentiles over the recent window.",
                                      labels=["backend", "quantile"])  # fmt: skip
        for b in backends:
            labels = [b.id]
            requests.add_metric([b.id, "success"], b.successful)
            requests.add_metric([b.id, "failure"], b.failed)
            routed.add_metric(labels, b.total)
            active.add_metric(labels, b.in_flight)
            up.add_metric(labels, 0 if b.health.state is HealthState.UNHEALTHY else 1)
            for state in HealthState:
                health.add_metric([b.id, state.value], 1 if b.health.state is state else 0)
            circuit.add_metric(labels, CIRCUIT_VALUE[b.breaker.state])
            window = b.window.summary(now)
            latency.add_metric(labels, window.samples, window.avg_ms * window.samples / 1000.0)
            for q, value in (("0.5", window.p50_ms), ("0.95", window.p95_ms), ("0.99", window.p99_ms)):
                quantiles.add_metric([b.id, q], value / 1000.0)
        yield from (requests, routed, active, up, health, circuit, latency, quantiles)
        for name, key, text in (
            ("omnixan_lb_rate_limited", "rate_limited", "Requests refused by the per-client rate limit."),
            ("omnixan_lb_ddos_blocked", "ddos_blocked", "Requests refused from clients blocked for flooding."),
            ("omnixan_lb_retries", "retries", "Retries made by call()."),
            ("omnixan_lb_queue_timeouts", "queue_timeouts", "Requests that timed out waiting for a slot."),
            ("omnixan_lb_unavailable", "unavailable", "Requests refused because no backend could take them."),
        ):
            yield CounterMetricFamily(name, text, value=lb.counters[key])
        yield GaugeMetricFamily("omnixan_lb_queued_requests", "Requests waiting for a slot.", value=lb.router.queued)
        yield GaugeMetricFamily("omnixan_lb_backends", "Configured backends.", value=len(backends))


def register_metrics(module: LoadBalancingModule, registry: CollectorRegistry | None = None) -> LoadBalancerCollector:
    """Register a collector for ``module`` (in the default registry unless one is given)."""
    collector = LoadBalancerCollector(module)
    (registry if registry is not None else REGISTRY).register(collector)
    return collector
