"""Results handed back to callers: routing results, health, distribution."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from .enums import HealthState, LoadBalancingAlgorithmType

if TYPE_CHECKING:
    from .backend import Backend


class RouteResult:
    """Where a request was routed. Holds one of the backend's connection slots
    until it is passed to ``complete_request`` (a second completion is ignored).

    ``latency_ms`` is how long the routing decision itself took. A generated
    ``request_id`` is formatted only when read.
    """

    __slots__ = ("backend_id", "host", "port", "algorithm", "latency_ms", "attempt",
                 "started_at", "completed", "backend", "_request_id", "_prefix", "_seq")  # fmt: skip

    def __init__(self, backend_id: str, host: str, port: int, algorithm: LoadBalancingAlgorithmType,
                 request_id: str | None, latency_ms: float, attempt: int = 1, started_at: float = 0.0,
                 backend: Backend | None = None, prefix: str = "", seq: int = 0) -> None:  # fmt: skip
        self.backend_id = backend_id
        self.host = host
        self.port = port
        self.algorithm = algorithm
        self._request_id = request_id
        self._prefix = prefix
        self._seq = seq
        self.latency_ms = latency_ms
        self.attempt = attempt
        self.started_at = started_at
        self.completed = False
        self.backend = backend

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            self._request_id = f"{self._prefix}-{self._seq:x}"
        return self._request_id

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

    def __repr__(self) -> str:
        return (f"RouteResult(backend_id={self.backend_id!r}, host={self.host!r}, port={self.port}, "
                f"algorithm={self.algorithm.value!r}, request_id={self.request_id!r}, "
                f"latency_ms={self.latency_ms:.3f}, attempt={self.attempt})")  # fmt: skip


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


class DrainResult(BaseModel):
    """How a drain went (:meth:`LoadBalancingModule.drain_backend`).

    ``in_flight`` requests were running on the backend when the drain began;
    ``completed`` is true when all of them finished before ``timeout``, else
    ``in_flight_left`` were still running when the backend was removed (they
    may still complete without error). Times are wall-clock seconds.
    """

    model_config = ConfigDict(frozen=True)

    backend_id: str
    in_flight: int
    completed: bool
    in_flight_left: int
    started_at: float
    finished_at: float
    waited_seconds: float
