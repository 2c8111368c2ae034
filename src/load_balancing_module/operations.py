"""The ``execute`` dict interface: one method per operation.

:class:`Operations` is owned by the facade and built with it (anything with
the methods of :class:`Balancer`). Each operation takes the params dict and
returns a JSON-serialisable result; bad input raises, and
``LoadBalancingModule.execute`` turns the exception into
``{"status": "error", ...}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from .config import BackendConfig, LoadBalancingAlgorithm, Request
from .exceptions import ConfigurationError
from .models import HealthStatus, LoadDistribution, RouteResult


class Balancer(Protocol):
    """What the operations use of ``LoadBalancingModule``."""

    async def add_backend(self, backend: BackendConfig | Mapping[str, Any]) -> str: ...

    async def remove_backend(self, backend_id: str) -> None: ...

    async def health_check(self, backend_id: str) -> HealthStatus: ...

    async def route_request(self, request: Request, prefer: str | None = None) -> RouteResult: ...

    async def complete_request(
        self, result: RouteResult, *, success: bool, latency_ms: float | None = None
    ) -> None: ...

    async def get_load_distribution(self) -> LoadDistribution: ...

    async def configure_algorithm(self, algorithm: LoadBalancingAlgorithm | Mapping[str, Any] | str) -> None: ...

    def algorithm_settings(self) -> tuple[str, dict[str, Any]]: ...


Operation = Callable[[dict[str, Any]], Awaitable[Any]]


def _param(params: dict[str, Any], name: str, kind: type | tuple[type, ...] = object) -> Any:
    if name not in params:
        raise ConfigurationError(f"operation {params.get('operation')!r} needs the parameter {name!r}")
    value = params[name]
    if not isinstance(value, kind):
        raise ConfigurationError(f"parameter {name!r} has the wrong type ({type(value).__name__})")
    return value


# The operations execute() knows, by name (the admin API's document lists the same).
OPERATIONS: Final = (
    "add_backend",
    "remove_backend",
    "health_check",
    "route_request",
    "complete_request",
    "get_load_distribution",
    "configure_algorithm",
)


class Operations:
    """Runs ``execute`` operations on one balancer; holds the results routed through them
    until ``complete_request`` names their request id."""

    def __init__(self, lb: Balancer) -> None:
        self._lb = lb
        self._outstanding: dict[str, RouteResult] = {}  # routed through execute(), awaiting completion
        self._table: dict[str, Operation] = {
            "add_backend": self._add_backend,
            "remove_backend": self._remove_backend,
            "health_check": self._health_check,
            "route_request": self._route_request,
            "complete_request": self._complete_request,
            "get_load_distribution": self._get_load_distribution,
            "configure_algorithm": self._configure_algorithm,
        }
        assert tuple(self._table) == OPERATIONS

    async def run(self, params: Any) -> Any:
        """The result of the operation ``params`` names; raises for bad input."""
        if not isinstance(params, dict):
            raise ConfigurationError(f"params must be a dict, got {type(params).__name__}")
        name = params.get("operation")
        operation = self._table.get(name) if isinstance(name, str) else None
        if operation is None:
            raise ConfigurationError(f"unknown operation {name!r}; known: {', '.join(sorted(self._table))}")
        return await operation(params)

    async def _add_backend(self, params: dict[str, Any]) -> Any:
        backend = _param(params, "backend", (dict, BackendConfig))
        backend_id = await self._lb.add_backend(backend)
        return {"backend_id": backend_id}

    async def _remove_backend(self, params: dict[str, Any]) -> Any:
        backend_id = _param(params, "backend_id", str)
        await self._lb.remove_backend(backend_id)
        return {"backend_id": backend_id, "removed": True}

    async def _health_check(self, params: dict[str, Any]) -> Any:
        status = await self._lb.health_check(_param(params, "backend_id", str))
        return status.model_dump(mode="json")

    async def _route_request(self, params: dict[str, Any]) -> Any:
        raw = params.get("request", {})
        request = raw if isinstance(raw, Request) else Request.model_validate(raw)
        result = await self._lb.route_request(request)
        self._outstanding[result.request_id] = result
        return result.to_dict()

    async def _complete_request(self, params: dict[str, Any]) -> Any:
        request_id = params.get("request_id")
        if request_id is None and isinstance(params.get("result"), dict):
            request_id = params["result"].get("request_id")
        if not isinstance(request_id, str):
            raise ConfigurationError("complete_request needs 'request_id' (or 'result' with a request_id)")
        result = self._outstanding.pop(request_id, None)
        if result is None:
            raise ConfigurationError(f"no request routed through execute() is open with request_id {request_id!r}")
        success = params.get("success", True)
        latency = params.get("latency_ms")
        if not isinstance(success, bool) or (latency is not None and not isinstance(latency, (int, float))):
            self._outstanding[request_id] = result
            raise ConfigurationError("'success' must be a boolean and 'latency_ms' a number")
        await self._lb.complete_request(result, success=success, latency_ms=latency)
        return {"request_id": request_id, "completed": True}

    async def _get_load_distribution(self, params: dict[str, Any]) -> Any:
        return (await self._lb.get_load_distribution()).model_dump(mode="json")

    async def _configure_algorithm(self, params: dict[str, Any]) -> Any:
        algorithm = _param(params, "algorithm", (dict, str))
        await self._lb.configure_algorithm(algorithm)
        name, settings = self._lb.algorithm_settings()
        return {"algorithm": name, "config": settings}
