"""The ``execute`` dict interface: one function per operation.

Each takes the module and the params dict and returns a JSON-serialisable
result; bad input raises, and ``LoadBalancingModule.execute`` turns the
exception into ``{"status": "error", ...}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .config import BackendConfig, Request
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .module import LoadBalancingModule

Operation = Callable[["LoadBalancingModule", dict[str, Any]], Awaitable[Any]]


def _param(params: dict[str, Any], name: str, kind: type | tuple[type, ...] = object) -> Any:
    if name not in params:
        raise ConfigurationError(f"operation {params.get('operation')!r} needs the parameter {name!r}")
    value = params[name]
    if not isinstance(value, kind):
        raise ConfigurationError(f"parameter {name!r} has the wrong type ({type(value).__name__})")
    return value


async def _add_backend(lb: LoadBalancingModule, params: dict[str, Any]) -> Any:
    backend = _param(params, "backend", (dict, BackendConfig))
    backend_id = await lb.add_backend(backend)
    return {"backend_id": backend_id}


async def _remove_backend(lb: LoadBalancingModule, params: dict[str, Any]) -> Any:
    backend_id = _param(params, "backend_id", str)
    await lb.remove_backend(backend_id)
    return {"backend_id": backend_id, "removed": True}


async def _health_check(lb: LoadBalancingModule, params: dict[str, Any]) -> Any:
    status = await lb.health_check(_param(params, "backend_id", str))
    return status.model_dump(mode="json")


async def _route_request(lb: LoadBalancingModule, params: dict[str, Any]) -> Any:
    raw = params.get("request", {})
    request = raw if isinstance(raw, Request) else Request.model_validate(raw)
    result = await lb.route_request(request)
    lb._outstanding[result.request_id] = result
    return result.to_dict()


async def _complete_request(lb: LoadBalancingModule, params: dict[str, Any]) -> Any:
    request_id = params.get("request_id")
    if request_id is None and isinstance(params.get("result"), dict):
        request_id = params["result"].get("request_id")
    if not isinstance(request_id, str):
        raise ConfigurationError("complete_request needs 'request_id' (or 'result' with a request_id)")
    result = lb._outstanding.pop(request_id, None)
    if result is None:
        raise ConfigurationError(f"no request routed through execute() is open with request_id {request_id!r}")
    success = params.get("success", True)
    latency = params.get("latency_ms")
    if not isinstance(success, bool) or (latency is not None and not isinstance(latency, (int, float))):
        lb._outstanding[request_id] = result
        raise ConfigurationError("'success' must be a boolean and 'latency_ms' a number")
    await lb.complete_request(result, success=success, latency_ms=latency)
    return {"request_id": request_id, "completed": True}


async def _get_load_distribution(lb: LoadBalancingModule, params: dict[str, Any]) -> Any:
    return (await lb.get_load_distribution()).model_dump(mode="json")


async def _configure_algorithm(lb: LoadBalancingModule, params: dict[str, Any]) -> Any:
    algorithm = _param(params, "algorithm", (dict, str))
    await lb.configure_algorithm(algorithm)
    return {"algorithm": lb.router.factory.kind.value, "config": lb.router.factory.settings}


OPERATIONS: dict[str, Operation] = {
    "add_backend": _add_backend,
    "remove_backend": _remove_backend,
    "health_check": _health_check,
    "route_request": _route_request,
    "complete_request": _complete_request,
    "get_load_distribution": _get_load_distribution,
    "configure_algorithm": _configure_algorithm,
}


async def run_operation(lb: LoadBalancingModule, params: Any) -> Any:
    if not isinstance(params, dict):
        raise ConfigurationError(f"params must be a dict, got {type(params).__name__}")
    name = params.get("operation")
    operation = OPERATIONS.get(name) if isinstance(name, str) else None
    if operation is None:
        raise ConfigurationError(f"unknown operation {name!r}; known: {', '.join(sorted(OPERATIONS))}")
    return await operation(lb, params)
