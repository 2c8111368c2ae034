"""The admin listener's JSON API: backends, drain, distribution, algorithm, execute.

Every change goes straight to the running :class:`LoadBalancingModule`, so it
takes effect for the next request the proxy routes. Input is validated whole
before anything changes; bad input gets 400 (not JSON) or 422 (JSON that is
wrong) with ``{"error": "<field>: <problem>", "field": "<field>"}``; an
unknown backend id gets 404. Bodies are read by :mod:`.body`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any
from urllib.parse import quote

from aiohttp import web
from pydantic import Field, ValidationError

from ...config import BackendConfig, LoadBalancingAlgorithm, _Model
from ...enums import LoadBalancingAlgorithmType
from ...exceptions import AlgorithmError, BackendNotFoundError
from ...module import LoadBalancingModule
from .body import BadInput, read_object, validation_error

MAX_DRAIN_TIMEOUT = 86_400.0
ALGORITHM_NAMES = [kind.value for kind in LoadBalancingAlgorithmType]

# execute() reports errors by class name: the HTTP status each one gets (others: 422).
EXECUTE_ERROR_STATUS = {
    "BackendNotFoundError": 404,
    "RateLimitExceededError": 429,
    "RoutingError": 503,
    "BackendUnavailableError": 503,
    "CircuitBreakerOpenError": 503,
    "RequestTimeoutError": 503,
}

ApiHandler = Callable[["AdminApi", web.Request], Awaitable[web.Response]]


def error_response(status: int, message: str, field: str | None) -> web.Response:
    return json_response({"error": message, "field": field}, status)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    try:
        text = json.dumps(data, allow_nan=False)
    except ValueError:  # an infinite latency average, say: JSON has no such number
        text = json.dumps(_finite(data))
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _api(handler: ApiHandler) -> Callable[[AdminApi, web.Request], Awaitable[web.Response]]:
    @wraps(handler)
    async def wrapper(self: AdminApi, request: web.Request) -> web.Response:
        try:
            return await handler(self, request)
        except BadInput as exc:
            return error_response(exc.status, exc.message, exc.field)
        except BackendNotFoundError as exc:
            return error_response(404, str(exc.args[0]) if exc.args else "no such backend", "backend_id")

    return wrapper


class DrainRequest(_Model):
    """The body of POST /backends/{backend_id}/drain; it may be empty."""

    timeout: float | None = Field(
        default=None, ge=0, le=MAX_DRAIN_TIMEOUT,
        description="seconds to wait for the requests in flight; absent or null: the server's drain_timeout",
    )  # fmt: skip


class AdminApi:
    def __init__(self, lb: LoadBalancingModule, *, drain_timeout: float) -> None:
        self.lb = lb
        self.drain_timeout = drain_timeout

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/backends", self.list_backends)
        router.add_post("/backends", self.add_backend)
        router.add_get("/backends/{backend_id}", self.get_backend)
        router.add_delete("/backends/{backend_id}", self.delete_backend)
        router.add_post("/backends/{backend_id}/drain", self.drain_backend)
        router.add_get("/distribution", self.distribution)
        router.add_get("/algorithm", self.get_algorithm)
        router.add_put("/algorithm", self.put_algorithm)
        router.add_post("/execute", self.execute)

    # -- backends --------------------------------------------------------------------

    @_api
    async def list_backends(self, request: web.Request) -> web.Response:
        lb = self.lb
        return json_response([lb.describe_backend(backend_id) for backend_id in list(lb.backends)])

    @_api
    async def add_backend(self, request: web.Request) -> web.Response:
        body = await read_object(request)
        try:
            config = BackendConfig.model_validate(body, strict=True)  # JSON true is no number here
        except ValidationError as exc:
            raise validation_error(exc) from None
        backend_id = await self.lb.add_backend(config)
        location = f"/backends/{quote(backend_id, safe='')}"
        return json_response(self.lb.describe_backend(backend_id), 201, {"Location": location})

    @_api
    async def get_backend(self, request: web.Request) -> web.Response:
        return json_response(self.lb.describe_backend(request.match_info["backend_id"]))

    @_api
    async def delete_backend(self, request: web.Request) -> web.Response:
        backend_id = request.match_info["backend_id"]
        in_flight = self.lb.describe_backend(backend_id)["active_connections"]
        await self.lb.remove_backend(backend_id)
        return json_response({"backend_id": backend_id, "removed": True, "in_flight": in_flight})

    @_api
    async def drain_backend(self, request: web.Request) -> web.Response:
        backend_id = request.match_info["backend_id"]
        body = await read_object(request, required=False)
        try:
            drain = DrainRequest.model_validate(body, strict=True)  # JSON true is no number here
        except ValidationError as exc:
            raise validation_error(exc) from None
        timeout = self.drain_timeout if drain.timeout is None else drain.timeout
        self.lb.describe_backend(backend_id)  # 404 before anything starts
        result = await self.lb.drain_backend(backend_id, timeout)
        return json_response(result.model_dump(mode="json"))

    # -- balancer ----------------------------------------------------------------------

    @_api
    async def distribution(self, request: web.Request) -> web.Response:
        distribution = await self.lb.get_load_distribution()
        return json_response(distribution.model_dump(mode="json"))

    def _algorithm(self) -> dict[str, Any]:
        factory = self.lb.router.factory
        return {"algorithm": factory.kind.value, "config": dict(factory.settings),
                "available": ALGORITHM_NAMES}  # fmt: skip

    @_api
    async def get_algorithm(self, request: web.Request) -> web.Response:
        return json_response(self._algorithm())

    @_api
    async def put_algorithm(self, request: web.Request) -> web.Response:
        body = await read_object(request)
        if "algorithm_type" not in body:
            raise BadInput(422, "algorithm_type: required (one of " + ", ".join(ALGORITHM_NAMES) + ")",
                           "algorithm_type")  # fmt: skip
        try:
            algorithm = LoadBalancingAlgorithm.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc) from None
        try:
            await self.lb.configure_algorithm(algorithm)
        except AlgorithmError as exc:
            raise BadInput(422, f"config: {exc}", "config") from None
        return json_response(self._algorithm())

    @_api
    async def execute(self, request: web.Request) -> web.Response:
        body = await read_object(request)
        outcome = await self.lb.execute(body)
        if outcome.get("status") == "success":
            return json_response(outcome)
        status = EXECUTE_ERROR_STATUS.get(str(outcome.get("error_type")), 422)
        return json_response({**outcome, "field": None}, status)
