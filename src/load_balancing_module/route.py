"""The result of routing a request (its own module so that the compiled build compiles it:
``models.py``, with its pydantic models, stays Python)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .enums import LoadBalancingAlgorithmType

if TYPE_CHECKING:
    from .backend import Backend


class RouteResult:
    """Where a request was routed. Holds one of the backend's connection slots
    until it is passed to ``complete_request`` (a second completion is ignored).

    ``latency_ms`` is how long the routing decision itself took. ``backend_id``,
    ``host`` and ``port`` are read from the backend when asked, and a generated
    ``request_id`` is formatted only when read: routing touches as little of a
    backend as it can (with 10,000 backends, most of them are out of the cache).
    """

    __slots__ = (
        "backend",
        "algorithm",
        "latency_ms",
        "attempt",
        "started_at",
        "completed",
        "_request_id",
        "_prefix",
        "_seq",
    )

    def __init__(
        self,
        backend: Backend,
        algorithm: LoadBalancingAlgorithmType | str,
        request_id: str | None,
        latency_ms: float,
        attempt: int = 1,
        started_at: float = 0.0,
        prefix: str = "",
        seq: int = 0,
    ) -> None:
        self.backend = backend
        self.algorithm = algorithm
        self._request_id = request_id
        self._prefix = prefix
        self._seq = seq
        self.latency_ms = latency_ms
        self.attempt = attempt
        self.started_at = started_at
        self.completed = False

    @property
    def backend_id(self) -> str:
        return self.backend.id

    @property
    def host(self) -> str:
        return self.backend.host

    @property
    def port(self) -> int:
        return self.backend.port

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
            "algorithm": str(self.algorithm),
            "request_id": self.request_id,
            "latency_ms": self.latency_ms,
            "attempt": self.attempt,
        }

    def __repr__(self) -> str:
        return (
            f"RouteResult(backend_id={self.backend_id!r}, host={self.host!r}, port={self.port}, "
            f"algorithm={str(self.algorithm)!r}, request_id={self.request_id!r}, "
            f"latency_ms={self.latency_ms:.3f}, attempt={self.attempt})"
        )
