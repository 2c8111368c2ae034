"""The admin API of a server with several workers: what it asks of them, and how it sums them.

With ``workers: N`` the admin listener runs in the supervisor, over the supervisor's own modules,
one per pool (they probe the backends and hold the authoritative backend lists). Every change the
API makes there (a backend added, removed or drained, the algorithm switched, in a named pool)
goes to each worker through a :class:`Fleet`, with the pool's name; what the API reports of
traffic is the sum of the workers' own figures, pool by pool:

- counts (requests, completions, in flight, queued, requests per second) are summed;
- a backend's recent latency percentiles are the highest of the workers' (an upper bound: the
  workers' windows cannot be merged exactly), its average latency and error rate are weighted by
  each worker's recent completions;
- health is the supervisor's (it probes; the workers follow), the circuit state the worst of the
  workers' (each worker's breaker counts the failures it saw);
- route filters' errors (``GET /routes``) are summed;
- in ``/metrics`` (whose samples carry a ``pool`` label: a pool's samples meet its own), counters
  and histograms are summed, and so are gauges that count something in flight; gauges that state
  a fact every worker shares (up, health, draining, build, the number of backends, shared-store
  counts) take the highest value, and ``state_store_up`` the lowest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ...config import BackendConfig
from ...models import DrainResult
from ..route_config import DEFAULT_POOL

# Gauges every worker reports alike (or of which the worst is the truth): not summed.
HIGHEST: Final = frozenset(
    {
        "omnixan_lb_backend_up",
        "omnixan_lb_backend_health",
        "omnixan_lb_circuit_state",
        "omnixan_lb_backend_draining",
        "omnixan_lb_backend_recent_latency_seconds",
        "omnixan_lb_backends",
        "omnixan_lb_build_info",
    }
)
# Counters of a store the workers share: each reports the same count.
SHARED_COUNTERS: Final = frozenset({"omnixan_lb_sessions_evicted"})
LOWEST: Final = frozenset({"omnixan_lb_state_store_up"})
CIRCUIT_ORDER: Final = {"closed": 0, "half_open": 1, "open": 2}


class Fleet(Protocol):
    """The workers, as the admin API drives them (implemented by the supervisor)."""

    async def add_backend(self, backend_id: str, config: BackendConfig, pool: str = DEFAULT_POOL) -> None: ...

    async def remove_backend(self, backend_id: str, pool: str = DEFAULT_POOL) -> None: ...

    async def drain_backend(self, backend_id: str, timeout: float, pool: str = DEFAULT_POOL) -> list[DrainResult]: ...

    async def configure_algorithm(self, algorithm: dict[str, Any], pool: str = DEFAULT_POOL) -> None: ...

    async def figures(self, metrics: bool = False) -> list[dict[str, Any]]:
        """Each live worker's ``figures`` (index, pid, the default pool's distribution, every pool's
        under ``pools``, its filter errors; its metrics text if asked)."""
        ...

    def workers(self, figures: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per worker slot for ``/distribution``'s ``workers`` (live or restarting)."""
        ...

    def summed_metrics(self) -> str:
        """The supervisor's families that add to the workers' samples of the same name (discovery
        runs in the supervisor: its errors), in the text format."""
        ...

    def own_metrics(self) -> bytes:
        """The supervisor's own families (workers up, restarts), in the text format."""
        ...


def merge_drains(backend_id: str, results: Sequence[DrainResult], fallback: DrainResult) -> DrainResult:
    """One drain over all workers: over when every worker's is."""
    if not results:
        return fallback
    return DrainResult(
        backend_id=backend_id,
        in_flight=sum(r.in_flight for r in results),
        completed=all(r.completed for r in results),
        in_flight_left=sum(r.in_flight_left for r in results),
        started_at=min(r.started_at for r in results),
        finished_at=max(r.finished_at for r in results),
        waited_seconds=max(r.waited_seconds for r in results),
    )


def merge_pools(own: dict[str, dict[str, Any]], figures: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each pool's distribution of the supervisor (``own``, by name) with the traffic figures summed
    over the workers' distributions of the same pool (a worker that does not have it yet adds nothing)."""
    parts: dict[str, list[dict[str, Any]]] = {name: [] for name in own}
    for f in figures:
        for name, distribution in f.get("pools", {DEFAULT_POOL: f["distribution"]}).items():
            if name in parts:
                parts[name].append(distribution)
    return {name: merge_distribution(mine, parts[name]) for name, mine in own.items()}


def merge_filter_errors(figures: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The workers' counts of route filters that raised, summed by filter."""
    total: dict[str, int] = {}
    for f in figures:
        for name, count in f.get("filter_errors", {}).items():
            total[name] = total.get(name, 0) + int(count)
    return total


def merge_distribution(own: dict[str, Any], parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The supervisor's distribution (``own``: the backend list, health, algorithm, sessions)
    with the traffic figures summed over the workers' distributions ``parts``."""
    total = sum(int(p["total_requests"]) for p in parts)
    backends = {}
    for backend_id, mine in own["backends"].items():
        views = [p["backends"][backend_id] for p in parts if backend_id in p["backends"]]
        backends[backend_id] = merge_backend(mine, views, total)
    return {
        **own,
        "total_requests": total,
        "requests_per_second": sum(float(p["requests_per_second"]) for p in parts),
        "queued_requests": sum(int(p["queued_requests"]) for p in parts),
        "backends": backends,
    }


def merge_backend(mine: dict[str, Any], views: Sequence[dict[str, Any]], total: int) -> dict[str, Any]:
    """One backend: the supervisor's config and health, the workers' traffic."""
    merged = dict(mine)
    for key in ("active_connections", "total_requests", "successful_requests", "failed_requests"):
        merged[key] = sum(int(v[key]) for v in views)
    merged["requests_per_second"] = sum(float(v["requests_per_second"] or 0.0) for v in views)
    for key in ("p50_latency_ms", "p95_latency_ms", "p99_latency_ms"):
        known = [float(v[key]) for v in views if v[key] is not None]
        merged[key] = max(known) if known else None
    for key in ("avg_latency_ms", "error_rate"):
        merged[key] = _weighted(views, key)
    merged["circuit_state"] = max((v["circuit_state"] for v in views), key=CIRCUIT_ORDER.__getitem__, default="closed")
    merged["effective_weight"] = min((float(v["effective_weight"]) for v in views), default=mine["effective_weight"])
    merged["draining"] = bool(mine["draining"]) or any(v["draining"] for v in views)
    merged["load_fraction"] = merged["total_requests"] / total if total else 0.0
    return merged


def _weighted(views: Sequence[dict[str, Any]], key: str) -> float | None:
    """``key`` averaged over the workers, each weighted by its recent completions."""
    pairs = [(float(v[key]), float(v["requests_per_second"] or 0.0)) for v in views if v[key] is not None]
    if not pairs:
        return None
    weight = sum(w for _, w in pairs)
    if weight == 0:
        return sum(value for value, _ in pairs) / len(pairs)
    return sum(value * w for value, w in pairs) / weight


def merge_metrics(texts: Sequence[str]) -> bytes:
    """The workers' ``/metrics`` texts as one: sums, and the rules of this module for gauges."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                before = samples.get(key)
                samples[key] = sample.value if before is None else _combine(family.name, before, sample.value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families, values))
    return generate_latest(registry)


def _combine(name: str, before: float, value: float) -> float:
    if name in HIGHEST or name in SHARED_COUNTERS:
        return max(before, value)
    if name in LOWEST:
        return min(before, value)
    return before + value


class _Fixed(Collector):
    """Families already merged, yielded as they are."""

    def __init__(
        self, families: dict[str, Metric], values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]
    ) -> None:
        self._families = families
        self._values = values

    def collect(self) -> Iterator[Metric]:
        for name, family in self._families.items():
            out = Metric(family.name, family.documentation, family.type)
            for (sample_name, labels), value in self._values[name].items():
                out.add_sample(sample_name, dict(labels), value)
            yield out
