"""Prometheus exposition of the module's state, read at scrape time.

The hot path only bumps plain Python counters (the backends' counts,
the module's counters, ``module.request_stats``); this collector turns them
into metric families when Prometheus scrapes, so a request never touches a
``prometheus_client`` object. Every name starts with ``omnixan_lb_``, counters
end in ``_total``, durations are in seconds (the Prometheus conventions).

Families (labels in braces; a server's collector, over its pools, adds ``pool`` to every one
but ``build_info``; one module registered alone gets no ``pool`` label):

- ``requests_total{backend,code_class}`` and the histogram
  ``request_duration_seconds{backend,code_class}``: client requests answered,
  by the backend that answered last (``none`` when the proxy answered without
  one: rate limited, no backend) and status class (``2xx``...). Recorded by the
  proxy; a library user may record into ``module.request_stats`` too.
- ``completed_requests_total{backend,outcome}`` (``success``/``failure``, as told
  to ``complete_request``), ``routed_requests_total{backend}``.
- ``active_connections{backend}``, ``backend_up{backend}``,
  ``backend_health{backend,state}``, ``circuit_state{backend}`` (0 closed,
  1 half-open, 2 open), ``backend_draining{backend}``,
  ``backend_recent_latency_seconds{backend,quantile}`` (recent window).
- ``rate_limited_total``, ``ddos_blocked_total``, ``retries_total``,
  ``queue_timeouts_total``, ``unavailable_total``, ``probes_not_run_total``
  (probes this host could not make: EMFILE...), ``discovery_errors_total`` (a discovery
  provider that failed, or gave an empty set: the last good set stayed), ``sessions_evicted_total``,
  ``queued_requests``, ``backends``.
- With a shared state store that counts its failures (``RedisStore``):
  ``state_store_errors_total`` (calls that failed), ``state_store_fallbacks_total``
  (operations answered by the fail-open policy) and ``state_store_up`` (0 during an outage).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from ._extras import missing_extra
from .build import COMPILED, __version__
from .enums import CircuitState, HealthState
from .stats import DURATION_BUCKETS

try:  # the [metrics] extra: `import load_balancing_module` loads this module only when a name of it is used
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ModuleNotFoundError as exc:
    raise missing_extra("load_balancing_module.metrics", "metrics", "prometheus_client") from exc

if TYPE_CHECKING:
    from .module import LoadBalancingModule

CIRCUIT_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
_BOUNDS = [repr(float(b)) for b in DURATION_BUCKETS] + ["+Inf"]  # "le" label values


class LoadBalancerCollector(Collector):
    """The families of one module, or of several named ones (a server's pools: each family is then
    yielded once, with a ``pool`` label on every sample but the build's)."""

    def __init__(self, module: LoadBalancingModule | Mapping[str, LoadBalancingModule]) -> None:
        self.labelled = isinstance(module, Mapping)  # no pool label for one module (the library's use)
        self.modules: Mapping[str, LoadBalancingModule] = module if isinstance(module, Mapping) else {"": module}

    @property
    def module(self) -> LoadBalancingModule:
        """The one module (or the first pool's)."""
        return next(iter(self.modules.values()))

    def _pools(self) -> list[tuple[list[str], LoadBalancingModule]]:
        """Each module with the label values that start its samples' labels ([] or [pool])."""
        return [([name] if self.labelled else [], lb) for name, lb in list(self.modules.items())]

    def _labels(self, *names: str) -> list[str]:
        return ["pool", *names] if self.labelled else list(names)

    def collect(self) -> Iterator[Metric]:
        pools = self._pools()
        yield from self._requests(pools)
        yield from self._backends(pools)
        yield from self._totals(pools)

    def _requests(self, pools: list[tuple[list[str], LoadBalancingModule]]) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "omnixan_lb_requests",
            "Client requests answered, by backend and status class.",
            labels=self._labels("backend", "code_class"),
        )
        duration = HistogramMetricFamily(
            "omnixan_lb_request_duration_seconds",
            "Time from a client request to the end of its answer.",
            labels=self._labels("backend", "code_class"),
        )
        for pool, lb in pools:
            for backend_id, code_class, counts, total_seconds in lb.request_stats.series():
                labels = [*pool, backend_id, code_class]
                cumulative = 0
                buckets = []
                for bound, count in zip(_BOUNDS, counts, strict=True):
                    cumulative += count
                    buckets.append((bound, cumulative))
                requests.add_metric(labels, cumulative)
                duration.add_metric(labels, buckets, total_seconds)
        yield requests
        yield duration

    def _backends(self, pools: list[tuple[list[str], LoadBalancingModule]]) -> Iterator[Metric]:
        completed = CounterMetricFamily(
            "omnixan_lb_completed_requests",
            "Tries completed on a backend, by outcome (what the breaker counts).",
            labels=self._labels("backend", "outcome"),
        )
        routed = CounterMetricFamily(
            "omnixan_lb_routed_requests", "Tries routed, by backend.", labels=self._labels("backend")
        )
        active = GaugeMetricFamily(
            "omnixan_lb_active_connections", "Requests in flight.", labels=self._labels("backend")
        )
        up = GaugeMetricFamily(
            "omnixan_lb_backend_up", "1 unless the backend is UNHEALTHY.", labels=self._labels("backend")
        )
        health = GaugeMetricFamily(
            "omnixan_lb_backend_health", "1 for the backend's health state.", labels=self._labels("backend", "state")
        )
        circuit = GaugeMetricFamily(
            "omnixan_lb_circuit_state", "Circuit state: 0 closed, 1 half-open, 2 open.", labels=self._labels("backend")
        )
        drain = GaugeMetricFamily(
            "omnixan_lb_backend_draining", "1 while the backend is being drained.", labels=self._labels("backend")
        )
        quantiles = GaugeMetricFamily(
            "omnixan_lb_backend_recent_latency_seconds",
            "Latency percentiles of the backend's recent completions (last 60 s).",
            labels=self._labels("backend", "quantile"),
        )
        for pool, lb in pools:
            now = lb.clock.monotonic()
            draining = lb.draining
            for b in list(lb.backends.values()):
                labels = [*pool, b.id]
                completed.add_metric([*labels, "success"], b.successful)
                completed.add_metric([*labels, "failure"], b.failed)
                routed.add_metric(labels, b.total)
                active.add_metric(labels, b.in_flight)
                up.add_metric(labels, 0 if b.health.state is HealthState.UNHEALTHY else 1)
                for state in HealthState:
                    health.add_metric([*labels, state.value], 1 if b.health.state is state else 0)
                circuit.add_metric(labels, CIRCUIT_VALUE[b.breaker.state])
                drain.add_metric(labels, 1 if b.id in draining else 0)
                window = b.latency_summary(now)
                for q, value in (("0.5", window.p50_ms), ("0.95", window.p95_ms), ("0.99", window.p99_ms)):
                    quantiles.add_metric([*labels, q], value / 1000.0)
        yield from (completed, routed, active, up, health, circuit, drain, quantiles)

    def _per_pool(
        self,
        family: type[CounterMetricFamily] | type[GaugeMetricFamily],
        name: str,
        text: str,
        values: list[tuple[list[str], float]],
    ) -> Metric:
        """A family of one value per module: unlabelled for one module, by pool for several."""
        if not self.labelled:
            return family(name, text, value=values[0][1] if values else 0)
        metric = family(name, text, labels=["pool"])
        for pool, value in values:
            metric.add_metric(pool, value)
        return metric

    def _totals(self, pools: list[tuple[list[str], LoadBalancingModule]]) -> Iterator[Metric]:
        counts = [(pool, lb.counts()) for pool, lb in pools]
        for name, key, text in (
            ("omnixan_lb_rate_limited", "rate_limited", "Requests refused by the per-client rate limit."),
            ("omnixan_lb_ddos_blocked", "ddos_blocked", "Requests refused from clients blocked for flooding."),
            ("omnixan_lb_retries", "retries", "Retries on another backend (call() and the proxy)."),
            ("omnixan_lb_queue_timeouts", "queue_timeouts", "Requests that timed out waiting for a slot."),
            ("omnixan_lb_unavailable", "unavailable", "Requests refused because no backend could take them."),
            (
                "omnixan_lb_probes_not_run",
                "probes_not_run",
                "Health probes this host could not make (out of descriptors or memory); not counted against backends.",
            ),
            (
                "omnixan_lb_discovery_errors",
                "discovery_errors",
                "Discovery lookups that failed or gave an empty set (the last good set of backends stayed).",
            ),
        ):
            yield self._per_pool(CounterMetricFamily, name, text, [(pool, c[key]) for pool, c in counts])
        yield self._per_pool(
            GaugeMetricFamily,
            "omnixan_lb_queued_requests",
            "Requests waiting for a slot.",
            [(pool, lb.router.queued) for pool, lb in pools],
        )
        yield self._per_pool(
            GaugeMetricFamily,
            "omnixan_lb_backends",
            "Configured backends.",
            [(pool, len(lb.backends)) for pool, lb in pools],
        )
        info = GaugeMetricFamily(
            "omnixan_lb_build_info",
            "The running build: its version, and whether mypyc compiled it.",
            labels=["version", "compiled"],
        )
        info.add_metric([__version__, "true" if COMPILED else "false"], 1)
        yield info
        yield self._per_pool(
            CounterMetricFamily,
            "omnixan_lb_sessions_evicted",
            "Live sticky sessions evicted to keep the session store within max_sessions.",
            [(pool, lb.store.evicted_sessions) for pool, lb in pools],
        )
        yield from self._stores(pools)

    def _stores(self, pools: list[tuple[list[str], LoadBalancingModule]]) -> Iterator[Metric]:
        """The state stores that count their failures (``RedisStore``); none: no family."""
        figures = []
        for pool, lb in pools:
            store = lb.store
            errors, fallbacks, available = (getattr(store, n, None) for n in ("errors", "fallbacks", "available"))
            if isinstance(errors, int) and isinstance(fallbacks, int) and isinstance(available, bool):
                figures.append((pool, errors, fallbacks, available))
        if not figures:
            return  # the in-memory store cannot fail
        yield self._per_pool(
            CounterMetricFamily,
            "omnixan_lb_state_store_errors",
            "Calls to the shared state store that failed.",
            [(pool, errors) for pool, errors, _, _ in figures],
        )
        yield self._per_pool(
            CounterMetricFamily,
            "omnixan_lb_state_store_fallbacks",
            "State operations answered by the fail-open policy (down, in doubt or backing off).",
            [(pool, fallbacks) for pool, _, fallbacks, _ in figures],
        )
        yield self._per_pool(
            GaugeMetricFamily,
            "omnixan_lb_state_store_up",
            "1 while the shared state store answers.",
            [(pool, 1 if available else 0) for pool, _, _, available in figures],
        )


def register_metrics(
    module: LoadBalancingModule | Mapping[str, LoadBalancingModule], registry: CollectorRegistry | None = None
) -> LoadBalancerCollector:
    """Register a collector for ``module`` (in the default registry unless one is given); a mapping
    of modules by pool name gives every family a ``pool`` label (the server's pools)."""
    collector = LoadBalancerCollector(module)
    (registry if registry is not None else REGISTRY).register(collector)
    return collector
