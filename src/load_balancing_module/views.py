"""How the module describes its backends: :class:`~.models.LoadDistribution`, and the dict of each
backend in it and in ``LoadBalancingModule.describe_backend``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backend import Backend
from .models import LoadDistribution

if TYPE_CHECKING:
    from .clock import Clock
    from .router import Router
    from .state.base import StateStore


async def load_distribution(router: Router, store: StateStore, clock: Clock, total: int) -> LoadDistribution:
    """A snapshot of every backend's load, health and latency; ``total``: requests routed."""
    now = clock.monotonic()
    if now >= router.next_timer:
        router.run_timers(now)
    backends = {b.id: describe(b, now, total) for b in router.members()}
    return LoadDistribution(
        total_requests=total,
        # Completions per second over the last 10 s, summed from the backends' windows.
        requests_per_second=sum(b["requests_per_second"] for b in backends.values()),
        algorithm=router.factory.kind,
        timestamp=clock.time(),
        active_sessions=await store.session_count(),
        queued_requests=router.queued,
        backends=backends,
    )


def describe(b: Backend, now: float, total: int) -> dict[str, Any]:
    """``b``'s load, health and latency at ``now``; ``total``: requests routed to every backend."""
    window = b.latency_summary(now)
    completed = b.successful + b.failed
    return {
        "backend_id": b.id,
        "host": b.host,
        "port": b.port,
        "weight": b.weight,
        "effective_weight": b.effective_weight,
        "priority": b.priority,
        "quantum_capable": b.quantum,
        "max_connections": b.config.max_connections,
        "metadata": dict(b.config.metadata),
        "active_connections": b.in_flight,
        "total_requests": b.total,
        "successful_requests": b.successful,
        "failed_requests": b.failed,
        "requests_per_second": window.per_second,
        "avg_latency_ms": window.avg_ms,
        "p50_latency_ms": window.p50_ms,
        "p95_latency_ms": window.p95_ms,
        "p99_latency_ms": window.p99_ms,
        "error_rate": window.error_rate if window.samples else (b.failed / completed if completed else 0.0),
        "health_status": b.health.state.value,
        "circuit_state": b.breaker.state.value,
        "load_fraction": b.total / total if total else 0.0,
        "draining": b.excluded > 0,  # only a drain leaves a backend excluded between picks
    }
