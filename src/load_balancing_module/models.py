"""Results handed back to callers: routing results, health, distribution, drains.

``RouteResult`` (:mod:`.route`) and ``HealthStatus`` (:mod:`.health`) are defined beside the
code that makes them and gathered here: this module stands above both.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from .enums import LoadBalancingAlgorithmType
from .health import HealthStatus
from .route import RouteResult

__all__ = ["DrainResult", "HealthStatus", "LoadDistribution", "RouteResult"]


class LoadDistribution(BaseModel):
    """A snapshot of the balancer: totals, and one dict per backend."""

    total_requests: int
    requests_per_second: float
    algorithm: LoadBalancingAlgorithmType | str
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
