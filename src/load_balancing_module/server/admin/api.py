"""The admin listener's handlers: backends, drain, distribution, algorithm, execute, and the public routes.

Every change goes straight to the running :class:`LoadBalancingModule`, so it
takes effect for the next request the proxy routes. Input is validated whole
before anything changes; bad input gets 400 (not JSON) or 422 (JSON that is
wrong) with ``{"error": "<field>: <problem>", "field": "<field>"}``; an
unknown backend id gets 404. Bodies are read by :mod:`.body`; every JSON
answer is built from a model of :mod:`.models`, the ones the document names.
Which handler serves which route is said once, in :mod:`.routes`.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError

from ...algorithms import algorithm_names
from ...config import BackendConfig, LoadBalancingAlgorithm
from ...enums import HealthState
from ...exceptions import AlgorithmError, BackendNotFoundError
from ...module import LoadBalancingModule
from ..route_config import DEFAULT_POOL
from .body import BadInput, read_object, validation_error
from .fleet import Fleet, merge_drains, merge_filter_errors, merge_metrics, merge_pools
from .models import (
    DASHBOARD_ASSETS,
    AlgorithmChange,
    AlgorithmView,
    BackendView,
    DistributionView,
    DrainRequest,
    ErrorBody,
    ExecuteFailure,
    ExecuteSuccess,
    HealthView,
    PoolView,
    RemovedView,
)
from .topology import RoutesTable, Topology, pool_name

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
M = TypeVar("M", bound=BaseModel)


def respond(
    body: BaseModel | Sequence[BaseModel], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``body`` (a view, or a list of them) as JSON."""
    if isinstance(body, BaseModel):
        return json_response(body.model_dump(mode="json"), status, headers)
    return json_response([view.model_dump(mode="json") for view in body], status, headers)


def error_response(status: int, message: str, field: str | None) -> web.Response:
    return respond(ErrorBody(error=message, field=field), status)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    try:
        text = json.dumps(data, allow_nan=False)
    except ValueError:  # an infinite number in execute's open-ended result, say: JSON has no such number
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


def _api(handler: ApiHandler) -> ApiHandler:
    @wraps(handler)
    async def wrapper(self: AdminApi, request: web.Request) -> web.Response:
        try:
            return await handler(self, request)
        except BadInput as exc:
            return error_response(exc.status, exc.message, exc.field)
        except BackendNotFoundError as exc:
            return error_response(404, str(exc.args[0]) if exc.args else "no such backend", "backend_id")

    return wrapper


def validate(model: type[M], body: dict[str, Any], *, strict: bool | None = None) -> M:
    """``body`` as ``model``; :class:`BadInput` (422) naming the fields otherwise."""
    try:
        return model.model_validate(body, strict=strict)
    except ValidationError as exc:
        raise validation_error(exc) from None


def dashboard_file(name: str) -> bytes:
    """A file of the dashboard, read from the package."""
    return resources.files("load_balancing_module").joinpath("server").joinpath("dashboard").joinpath(name).read_bytes()


class AdminApi:
    """The handlers. ``fleet``: the workers of a server with ``workers: N`` (``lb`` is then the
    supervisor's module: every change goes to it first, then to each worker, and traffic figures
    are the workers' summed, see :mod:`.fleet`). ``topology``: the pools and routes (without it,
    ``lb`` is the one pool, ``default``, and there are no routes)."""

    def __init__(
        self,
        lb: LoadBalancingModule,
        registry: CollectorRegistry,
        document: dict[str, Any],
        *,
        drain_timeout: float,
        fleet: Fleet | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.lb = lb
        self.topology = Topology.single(lb) if topology is None else topology
        self._routes = RoutesTable.of(None)
        self.registry = registry
        self.document = document
        self.drain_timeout = drain_timeout
        self.fleet = fleet
        self._files = {name: dashboard_file(name) for name in ["index.html", *DASHBOARD_ASSETS]}

    async def _distributions(self, only: str | None = None) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """Every pool's load distribution (or pool ``only``'s) by name, each the module's or summed
        over the workers, and the workers' figures they came from."""
        own = {}
        for name, lb in list(self.topology.pools.items()):
            if only is None or name == only:
                own[name] = (await lb.get_load_distribution()).model_dump(mode="json")
        if self.fleet is None:
            return own, []
        figures = await self.fleet.figures()
        return merge_pools(own, figures), figures

    async def _distribution(self) -> dict[str, Any]:
        """``/distribution``: the default pool's at the top, every pool's under ``pools``."""
        pools, figures = await self._distributions()
        merged = {**pools[DEFAULT_POOL], "pools": pools}
        if self.fleet is not None:
            merged["workers"] = self.fleet.workers(figures)
        return merged

    async def _routes_table(self) -> RoutesTable:
        """The routes of the config in force (made again, in a thread, when a reload replaced it)."""
        config = self.topology.config()
        if self._routes.config is not config:
            self._routes = await asyncio.to_thread(RoutesTable.of, config)
        return self._routes

    def _pool(self, request: web.Request) -> tuple[str, LoadBalancingModule]:
        """The pool the request names (``?pool=``) and its module; 404 for an unknown one."""
        name = pool_name(request)
        return name, self.topology.module(name)

    # -- backends --------------------------------------------------------------------

    async def _backend(self, pool: str, lb: LoadBalancingModule, backend_id: str) -> BackendView:
        view = lb.describe_backend(backend_id)  # BackendNotFoundError: 404
        if self.fleet is not None:
            pools, _ = await self._distributions(pool)
            view = pools.get(pool, {"backends": {}})["backends"].get(backend_id, view)
        return BackendView.model_validate(view)

    @_api
    async def list_backends(self, request: web.Request) -> web.Response:
        pool, lb = self._pool(request)
        if self.fleet is None:
            views = [lb.describe_backend(backend_id) for backend_id in list(lb.backends)]
        else:
            pools, _ = await self._distributions(pool)
            views = list(pools.get(pool, {"backends": {}})["backends"].values())
        return respond([BackendView.model_validate(view) for view in views])

    @_api
    async def add_backend(self, request: web.Request) -> web.Response:
        pool, lb = self._pool(request)
        body = await read_object(request)
        config = validate(BackendConfig, body, strict=True)  # JSON true is no number here
        backend_id = await lb.add_backend(config)
        if self.fleet is not None:
            await self.fleet.add_backend(backend_id, config, pool=pool)
        location = f"/backends/{quote(backend_id, safe='')}"
        if pool != DEFAULT_POOL:
            location += f"?pool={quote(pool, safe='')}"
        return respond(await self._backend(pool, lb, backend_id), 201, {"Location": location})

    @_api
    async def get_backend(self, request: web.Request) -> web.Response:
        pool, lb = self._pool(request)
        return respond(await self._backend(pool, lb, request.match_info["backend_id"]))

    @_api
    async def remove_backend(self, request: web.Request) -> web.Response:
        pool, lb = self._pool(request)
        backend_id = request.match_info["backend_id"]
        in_flight = (await self._backend(pool, lb, backend_id)).active_connections
        await lb.remove_backend(backend_id)
        if self.fleet is not None:
            await self.fleet.remove_backend(backend_id, pool=pool)
        return respond(RemovedView(backend_id=backend_id, removed=True, in_flight=in_flight))

    @_api
    async def drain_backend(self, request: web.Request) -> web.Response:
        pool, lb = self._pool(request)
        backend_id = request.match_info["backend_id"]
        body = await read_object(request, required=False)
        drain = validate(DrainRequest, body, strict=True)  # JSON true is no number here
        timeout = self.drain_timeout if drain.timeout is None else drain.timeout
        lb.describe_backend(backend_id)  # 404 before anything starts
        if self.fleet is None:
            return respond(await lb.drain_backend(backend_id, timeout))
        own, workers = await asyncio.gather(
            lb.drain_backend(backend_id, timeout), self.fleet.drain_backend(backend_id, timeout, pool=pool)
        )
        return respond(merge_drains(backend_id, workers, own))

    # -- balancer ----------------------------------------------------------------------

    @_api
    async def get_distribution(self, request: web.Request) -> web.Response:
        return respond(DistributionView.model_validate(await self._distribution()))

    @_api
    async def list_pools(self, request: web.Request) -> web.Response:
        pools, _ = await self._distributions()
        routed = (await self._routes_table()).by_pool
        return respond([pool_view(name, view, routed.get(name, [])) for name, view in pools.items()])

    @_api
    async def list_routes(self, request: web.Request) -> web.Response:
        if self.fleet is None:
            errors = dict(self.topology.filter_errors())
        else:
            errors = merge_filter_errors(await self.fleet.figures())
        table = await self._routes_table()
        # RoutesView, with its routes serialised once per config (each a RouteView, see RoutesTable).
        body = b'{"routes": ' + table.json + b', "filter_errors": ' + json.dumps(errors).encode() + b"}"
        return web.Response(body=body, content_type="application/json")

    def _algorithm(self, lb: LoadBalancingModule) -> AlgorithmView:
        name, settings = lb.algorithm_settings()
        return AlgorithmView.model_validate({"algorithm": name, "config": settings})

    @_api
    async def get_algorithm(self, request: web.Request) -> web.Response:
        _, lb = self._pool(request)
        return respond(self._algorithm(lb))

    @_api
    async def set_algorithm(self, request: web.Request) -> web.Response:
        pool, lb = self._pool(request)
        body = await read_object(request)
        if "algorithm_type" not in body:
            raise BadInput(
                422, "algorithm_type: required (one of " + ", ".join(algorithm_names()) + ")", "algorithm_type"
            )
        change = validate(AlgorithmChange, body)
        # The library's own model: the subclass would compare unequal to the same choice read from a file.
        algorithm = LoadBalancingAlgorithm(algorithm_type=change.algorithm_type, config=change.config)
        try:
            await lb.configure_algorithm(algorithm)
        except AlgorithmError as exc:
            raise BadInput(422, f"config: {exc}", "config") from None
        if self.fleet is not None:
            await self.fleet.configure_algorithm(algorithm.model_dump(mode="json"), pool=pool)
        return respond(self._algorithm(lb))

    @_api
    async def execute(self, request: web.Request) -> web.Response:
        pool, lb = self._pool(request)
        body = await read_object(request)
        outcome = await lb.execute(body)
        if outcome.get("status") == "success":
            if self.fleet is not None:
                await self._replicate(pool, lb, str(body.get("operation")), outcome["result"])
            return respond(ExecuteSuccess.model_validate(outcome))
        status = EXECUTE_ERROR_STATUS.get(str(outcome.get("error_type")), 422)
        return respond(ExecuteFailure.model_validate(outcome), status)

    async def _replicate(self, pool: str, lb: LoadBalancingModule, operation: str, result: Any) -> None:
        """An execute() that changed the supervisor's module of ``pool`` changes every worker's alike."""
        assert self.fleet is not None
        if operation == "add_backend":
            backend_id = result["backend_id"]
            await self.fleet.add_backend(backend_id, lb.backends[backend_id].config, pool=pool)
        elif operation == "remove_backend":
            await self.fleet.remove_backend(result["backend_id"], pool=pool)
        elif operation == "configure_algorithm":
            name, settings = lb.algorithm_settings()
            await self.fleet.configure_algorithm({"algorithm_type": name, "config": settings}, pool=pool)

    # -- public ------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        backends = [b for lb in list(self.topology.pools.values()) for b in lb.backends.values()]
        healthy = sum(1 for b in backends if b.health.state is HealthState.HEALTHY)
        view = HealthView(status="ok" if healthy else "unavailable", healthy_backends=healthy, backends=len(backends))
        return respond(view, 200 if healthy else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        if self.fleet is None:
            body = generate_latest(self.registry)
        else:
            figures = await self.fleet.figures(metrics=True)
            texts = [*(f["metrics"] for f in figures), self.fleet.summed_metrics()]
            body = merge_metrics(texts) + self.fleet.own_metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.document)

    async def dashboard(self, request: web.Request) -> web.Response:
        return self._file("index.html", "text/html")

    async def dashboard_asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in DASHBOARD_ASSETS:
            return error_response(404, f"no dashboard file {name!r}", None)
        return self._file(name, DASHBOARD_ASSETS[name])

    def _file(self, name: str, media_type: str) -> web.Response:
        return web.Response(
            body=self._files[name], content_type=media_type, charset="utf-8", headers={"Cache-Control": "no-cache"}
        )


def pool_view(name: str, distribution: dict[str, Any], routes: list[str]) -> PoolView:
    """A pool's row of ``GET /pools``, from its (summed) distribution."""
    backends = list(distribution["backends"].values())
    return PoolView(
        name=name,
        algorithm=distribution["algorithm"],
        backends=len(backends),
        healthy_backends=sum(1 for b in backends if b["health_status"] == HealthState.HEALTHY.value),
        total_requests=int(distribution["total_requests"]),
        requests_per_second=distribution["requests_per_second"],
        active_connections=sum(int(b["active_connections"]) for b in backends),
        queued_requests=int(distribution["queued_requests"]),
        active_sessions=int(distribution["active_sessions"]),
        routes=routes,
    )
