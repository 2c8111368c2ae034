"""The one table of the admin listener's routes.

:class:`~.app.AdminServer` registers the aiohttp routes from it, and
:mod:`.openapi` writes the document from it: a route cannot be served without
being documented. Each row names the handler, the request body's model, the
path parameters' model and the answers it gives itself; the answers every
route shares (401 without the token, 400 and 422 for a bad body, and the
guard's 421, 403 and 415) are added by :mod:`.openapi`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from ...config import BackendConfig
from ...models import DrainResult
from .api import AdminApi
from .models import (
    DASHBOARD_ASSETS,
    AlgorithmChange,
    AlgorithmView,
    AssetPath,
    BackendPath,
    BackendView,
    DistributionView,
    DrainRequest,
    ErrorBody,
    ExecuteFailure,
    ExecuteRequest,
    ExecuteSuccess,
    HealthView,
    PoolQuery,
    PoolView,
    RemovedView,
    RoutesView,
)

JSON = "application/json"
Handler = Callable[[AdminApi, web.Request], Awaitable[web.Response]]


@dataclass(frozen=True)
class Answer:
    """One documented answer: the type of its body (a model, ``list[...]``, ``str`` for text), what it means,
    the media types it comes in and the headers it carries."""

    body: Any
    description: str
    media: tuple[str, ...] = (JSON,)
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler  # an AdminApi method; its name in camelCase is the operationId
    summary: str
    answers: Mapping[int, Answer]
    body: type[BaseModel] | None = None
    body_required: bool = True
    params: type[BaseModel] | None = None  # one field per {placeholder} of the path
    query: type[BaseModel] | None = None  # one field per query parameter, none required
    public: bool = False  # served without the token
    description: str | None = None

    @property
    def operation_id(self) -> str:
        first, *rest = self.handler.__name__.split("_")
        return first + "".join(word.title() for word in rest)


NOT_FOUND = Answer(ErrorBody, "no backend with this id in the pool, or no such pool")
NO_POOL = Answer(ErrorBody, "no pool of this name (the message names those there are)")
FAILED = "status error: "

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/backends",
        AdminApi.list_backends,
        "Every backend, with its load, health and latency",
        {200: Answer(list[BackendView], "the backends"), 404: NO_POOL},
        query=PoolQuery,
    ),
    Route(
        "POST",
        "/backends",
        AdminApi.add_backend,
        "Add a backend; it takes requests at once",
        {201: Answer(BackendView, "the new backend; its id is backend_id", headers=("Location",)), 404: NO_POOL},
        body=BackendConfig,
        query=PoolQuery,
    ),
    Route(
        "GET",
        "/backends/{backend_id}",
        AdminApi.get_backend,
        "One backend",
        {200: Answer(BackendView, "the backend"), 404: NOT_FOUND},
        params=BackendPath,
        query=PoolQuery,
    ),
    Route(
        "DELETE",
        "/backends/{backend_id}",
        AdminApi.remove_backend,
        "Remove a backend at once (requests in flight still complete)",
        {200: Answer(RemovedView, "removed"), 404: NOT_FOUND},
        params=BackendPath,
        query=PoolQuery,
    ),
    Route(
        "POST",
        "/backends/{backend_id}/drain",
        AdminApi.drain_backend,
        "Stop new requests, wait for those in flight, then remove the backend",
        {200: Answer(DrainResult, "the drain is over and the backend removed"), 404: NOT_FOUND},
        body=DrainRequest,
        body_required=False,
        params=BackendPath,
        query=PoolQuery,
        description="Answers when the drain is over (all requests in flight finished, or the timeout).",
    ),
    Route(
        "GET",
        "/distribution",
        AdminApi.get_distribution,
        "The load distribution (what the dashboard shows)",
        {200: Answer(DistributionView, "a snapshot")},
    ),
    Route(
        "GET",
        "/pools",
        AdminApi.list_pools,
        "Every pool: its algorithm, backends, healthy backends and traffic",
        {200: Answer(list[PoolView], "the pools, default first")},
    ),
    Route(
        "GET",
        "/routes",
        AdminApi.list_routes,
        "The routes table of the config in force, and the route filters' errors",
        {200: Answer(RoutesView, "the routes, in match order")},
    ),
    Route(
        "GET",
        "/algorithm",
        AdminApi.get_algorithm,
        "The algorithm in use and the ones available",
        {200: Answer(AlgorithmView, "the algorithm"), 404: NO_POOL},
        query=PoolQuery,
    ),
    Route(
        "PUT",
        "/algorithm",
        AdminApi.set_algorithm,
        "Switch algorithm at once",
        {200: Answer(AlgorithmView, "switched"), 404: NO_POOL},
        body=AlgorithmChange,
        query=PoolQuery,
    ),
    Route(
        "POST",
        "/execute",
        AdminApi.execute,
        "LoadBalancingModule.execute: the library's dict interface",
        {
            200: Answer(ExecuteSuccess, "status success, with the result"),
            404: Answer(ExecuteFailure | ErrorBody, FAILED + "no such backend; or no such pool"),
            422: Answer(ExecuteFailure | ErrorBody, FAILED + "bad params; or the body is no JSON object"),
            429: Answer(ExecuteFailure, FAILED + "rate limited (route_request)"),
            503: Answer(ExecuteFailure, FAILED + "no backend could take the request"),
        },
        body=ExecuteRequest,
        query=PoolQuery,
    ),
    Route(
        "GET",
        "/healthz",
        AdminApi.healthz,
        "200 when at least one backend (of any pool) is HEALTHY, else 503",
        {200: Answer(HealthView, "healthy"), 503: Answer(HealthView, "no healthy backend")},
        public=True,
    ),
    Route(
        "GET",
        "/metrics",
        AdminApi.metrics,
        "Prometheus text format; every name starts with omnixan_lb_",
        {200: Answer(str, "metrics", ("text/plain",))},
        public=True,
    ),
    Route(
        "GET",
        "/openapi.json",
        AdminApi.openapi,
        "This document",
        {200: Answer(dict[str, Any], "OpenAPI 3.1 document")},
        public=True,
    ),
    Route(
        "GET",
        "/",
        AdminApi.dashboard,
        "The live dashboard (asks for the token, kept in session storage)",
        {200: Answer(str, "HTML page", ("text/html",))},
        public=True,
    ),
    Route(
        "GET",
        "/dashboard/{name}",
        AdminApi.dashboard_asset,
        "The dashboard's script and style sheet",
        {200: Answer(str, "the file", tuple(DASHBOARD_ASSETS.values())), 404: Answer(ErrorBody, "no such file")},
        params=AssetPath,
        public=True,
    ),
)
