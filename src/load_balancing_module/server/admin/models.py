"""The admin API's request and response bodies, as pydantic models.

The handlers (:mod:`.api`) validate what they read with the request models and
build every JSON answer from the views (``model_dump(mode="json")``);
:mod:`.openapi` generates the document from the same classes. So a field, a
limit or an enum name lives here, or in the library's own models
(``BackendConfig``, ``LoadBalancingAlgorithm``, ``DrainResult``), and nowhere
else. A view ignores keys it does not name: the library may add one, and the
answer still says only what the document says (a test compares the fields).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from ...algorithms import algorithm_names
from ...config import LoadBalancingAlgorithm, StrictModel
from ...enums import CircuitState, HealthState, LoadBalancingAlgorithmType
from ...operations import OPERATIONS
from ..route_config import DEFAULT_POOL, HeaderRules, Redirect, RouteMatch

MAX_DRAIN_TIMEOUT = 86_400.0
# The dashboard's files under /dashboard/ and their media types; index.html is served at /.
DASHBOARD_ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
# Enum lists for the document (json_schema_extra takes JSON values): from the table that decides.
ASSET_NAMES: list[JsonValue] = [*DASHBOARD_ASSETS]
OPERATION_NAMES: list[JsonValue] = [*sorted(OPERATIONS)]  # execute()'s own table of operations


def _finite_or_none(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


# JSON has no infinity: a rate or latency that overflowed is sent as null.
MaybeNumber = Annotated[float | None, AfterValidator(_finite_or_none)]


class View(BaseModel):
    """A response body. Every field is always sent, so the document lists them all as required."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


# -- requests ---------------------------------------------------------------------------


class DrainRequest(StrictModel):
    """The body of POST /backends/{backend_id}/drain; it may be empty."""

    timeout: float | None = Field(
        default=None,
        ge=0,
        le=MAX_DRAIN_TIMEOUT,
        description="seconds to wait for the requests in flight; absent or null: the server's drain_timeout",
    )


class AlgorithmChange(LoadBalancingAlgorithm):
    """The body of PUT /algorithm: LoadBalancingAlgorithm, with algorithm_type required, so that {} is no
    silent switch to the default."""

    algorithm_type: LoadBalancingAlgorithmType | str = Field(
        description="a built-in algorithm or a registered plug-in's name (GET /algorithm lists them)"
    )


class ExecuteRequest(BaseModel):
    """LoadBalancingModule.execute's params: the operation and its parameters (each operation has its own)."""

    model_config = ConfigDict(extra="allow")

    operation: str = Field(json_schema_extra={"enum": OPERATION_NAMES})


class BackendPath(BaseModel):
    """The path parameter of the /backends/{backend_id} routes."""

    backend_id: str = Field(description="the backend's id, percent-encoded (host:port)")


class PoolQuery(BaseModel):
    """The query parameter of the backend, algorithm and execute routes: which pool they act on."""

    pool: str = Field(
        default=DEFAULT_POOL, description="the pool's name (GET /pools); absent: default, the top-level backends"
    )


class AssetPath(BaseModel):
    """The path parameter of /dashboard/{name}."""

    name: str = Field(json_schema_extra={"enum": ASSET_NAMES})


# -- answers ------------------------------------------------------------------------------


class ErrorBody(View):
    """Every refusal: what is wrong, and where."""

    error: str = Field(description="what is wrong, starting with the field's name")
    field: str | None = Field(description="the field (path) at fault, if any")


class BackendView(View):
    """One backend: its configuration, load, health and recent latency (LoadBalancingModule.describe_backend)."""

    backend_id: str = Field(description="host:port, with ~2, ~3... for a second backend at one address")
    host: str
    port: int
    weight: float
    effective_weight: float = Field(description="the weight now (lower during slow start)")
    priority: int
    quantum_capable: bool
    max_connections: int
    metadata: dict[str, Any]
    active_connections: int = Field(description="requests in flight")
    total_requests: int
    successful_requests: int
    failed_requests: int
    requests_per_second: MaybeNumber = Field(description="completions per second over the last 10 s")
    avg_latency_ms: MaybeNumber
    p50_latency_ms: MaybeNumber
    p95_latency_ms: MaybeNumber
    p99_latency_ms: MaybeNumber
    error_rate: MaybeNumber = Field(description="0..1, over the recent window")
    health_status: HealthState
    circuit_state: CircuitState
    load_fraction: float = Field(description="share of all routed requests")
    draining: bool = Field(description="being drained: takes no new requests")


class RemovedView(View):
    """The answer of DELETE /backends/{backend_id}."""

    backend_id: str
    removed: Literal[True]
    in_flight: int = Field(description="requests still running there; they complete normally")


class WorkerView(View):
    """One worker process (``workers: N``): who it is and what it serves."""

    index: int = Field(description="0..N-1; a restarted worker keeps its index")
    pid: int | None
    up: bool = Field(description="false while the worker restarts (or did not answer)")
    restarts: int = Field(description="times this worker was started again after it exited")
    started_at: float = Field(description="Unix time of its last start")
    total_requests: int = Field(description="requests this worker routed since its start, in every pool")
    requests_per_second: float = Field(description="its completions per second over the last 10 s, in every pool")
    in_flight: int = Field(description="requests it is proxying now")
    connections: int = Field(description="client connections it holds")
    algorithm: LoadBalancingAlgorithmType | str | None = Field(description="the algorithm it routes with")


class PoolDistributionView(View):
    """One pool's load distribution (LoadBalancingModule.get_load_distribution), each backend as a
    BackendView. With several workers, the figures are sums over them."""

    total_requests: int
    requests_per_second: MaybeNumber
    algorithm: LoadBalancingAlgorithmType | str = Field(description="a built-in algorithm or a plug-in's name")
    timestamp: float = Field(description="Unix time")
    active_sessions: int
    queued_requests: int
    backends: dict[str, BackendView] = Field(description="by backend id")


class DistributionView(PoolDistributionView):
    """The load distribution: the default pool's at the top level, every pool's (default included)
    under ``pools``. With several workers, the figures are sums over them, and ``workers`` has one
    row each."""

    pools: dict[str, PoolDistributionView] = Field(default_factory=dict, description="by pool name")
    workers: list[WorkerView] = Field(default_factory=list, description="one per worker process (workers: N)")


class PoolView(View):
    """One pool: its algorithm, backends and traffic (summed over the workers with workers: N)."""

    name: str
    algorithm: LoadBalancingAlgorithmType | str = Field(description="a built-in algorithm or a plug-in's name")
    backends: int
    healthy_backends: int = Field(description="backends HEALTHY now")
    total_requests: int = Field(description="requests routed to the pool's backends")
    requests_per_second: MaybeNumber
    active_connections: int = Field(description="requests in flight on its backends")
    queued_requests: int
    active_sessions: int
    routes: list[str] = Field(description="the routes that send requests here, by name")


class RouteView(View):
    """One route of the config in force, in match order."""

    index: int = Field(description="its place in routes: the first that matches takes a request")
    name: str = Field(description="its name, or route-<index>")
    match: RouteMatch = Field(description="the conditions it sets (every one must hold)")
    pool: str | None = Field(description="the pool it sends requests to; null for a redirect")
    redirect: Redirect | None
    strip_prefix: str | None
    request_headers: HeaderRules
    response_headers: HeaderRules
    filters: list[str] = Field(description="module:function, in the order they run")


class RoutesView(View):
    """GET /routes: the routes table and the filters' errors."""

    routes: list[RouteView]
    filter_errors: dict[str, int] = Field(description="requests a filter failed (answered 500), by filter")


class AlgorithmView(View):
    """The algorithm in use, its settings, and every algorithm PUT /algorithm takes."""

    algorithm: LoadBalancingAlgorithmType | str = Field(description="a built-in algorithm or a plug-in's name")
    config: dict[str, Any]
    available: list[str] = Field(
        default_factory=algorithm_names, description="the built-in algorithms, then the plug-ins this server knows"
    )


class HealthView(View):
    """GET /healthz: ok when at least one backend (of any pool) is HEALTHY."""

    status: Literal["ok", "unavailable"]
    healthy_backends: int
    backends: int


class ExecuteSuccess(View):
    """LoadBalancingModule.execute's answer when the operation succeeded."""

    status: Literal["success"]
    result: Any = Field(description="the operation's result")


class ExecuteFailure(View):
    """LoadBalancingModule.execute's answer when the operation failed."""

    status: Literal["error"]
    error: str
    error_type: str = Field(description="the exception's class name")
    field: None = Field(default=None, description="always null (no field of the body is named)")
