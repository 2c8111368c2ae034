"""Results handed back to callers: routing results, health, distribution."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from .enums import HealthState, LoadBalancingAlgorithmType

if TYPE_CHECKING:
    from .backend import Backend


@dataclass(slots=True, eq=False)
class RouteResult:
    """Where a request was routed. Holds one of the backend's connection slots
    until it is passed to ``complete_request`` (a second completion is ignored).

    ``latency_ms`` is how long the routing decision itself took.
    """

    backend_id: str
    host: str
    port: int
    algorithm: LoadBalancingAlgorithmType
    request_id: str
    latency_ms: float
    attempt: int = 1
    started_at: float = field(default=0.0, repr=False)
    completed: bool = field(default=False, repr=False)
    backend: Backend | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend_id": self.backend_id,
            "host": self.host,
            "port": self.port,
            "algorithm": self.algorithm.value,
            "request_id": self.request_id,
            "latency_ms": self.latency_ms,
            "attempt": self.attempt,
        }


class HealthStatus(BaseModel):
    """The outcome of the latest health probe of one backend."""

    model_config = ConfigDict(frozen=True)

    backend_id: str
    status: HealthState
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    latency_ms: float | None = None
    checked_at: float | None = None  # wall-clock seconds since the epoch
    error: str | None = None


class LoadDistribution(BaseModel):
    """A snapshot of the balancer: totals, and one dict per backend."""

    total_requests: int
    requests_per_second: float
    algorithm: LoadBalancingAlgorithmType
    timestamp: float
    active_sessions: int
    queued_requests: int = 0
    backends: dict[str, dict[str, Any]]
