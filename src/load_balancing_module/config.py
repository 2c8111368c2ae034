"""Validated configuration models.

Every model forbids unknown keys, so a typo in a config file is an error
rather than a silently ignored setting, and refuses non-finite numbers (an
infinite timeout would switch off the guard it sets). A bad value raises
pydantic's ``ValidationError`` (a ``ValueError``) naming the field.

Backend hosts are IP literals or RFC 1123 host names; ``metadata`` holds
JSON values only, at most :data:`MAX_METADATA_DEPTH` deep and
:data:`MAX_METADATA_BYTES` as JSON, whatever the entry point (library,
``execute``, admin API, config file), so that every place that shows it can.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .enums import LoadBalancingAlgorithmType, WorkloadType

MAX_METADATA_DEPTH = 8
MAX_METADATA_BYTES = 64 * 1024
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
ALGORITHM_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: Installed distributions declare plug-in algorithms in this entry-point group.
ALGORITHM_ENTRY_POINTS = "omnixan_lb.algorithms"
_plugin_names: set[str] = set()  # names register_algorithm took (the classes live in .algorithms)

#: The built-in algorithms' names, for type checkers: ``algorithm="least_latency"`` passes mypy.
AlgorithmName = Literal["round_robin", "least_connections", "weighted", "quantum_aware", "ip_hash", "least_latency"]
#: The workload types' names, for type checkers: ``Request(workload_type="quantum_ml")``.
WorkloadName = Literal["classical", "quantum_simulation", "quantum_optimization", "quantum_ml", "hybrid"]


def declare_algorithm(name: str) -> None:
    """Let configs name the plug-in algorithm ``name`` (``register_algorithm`` calls it)."""
    _plugin_names.add(name)


def plugin_algorithms() -> set[str]:
    """The plug-in algorithms' names: registered ones and those installed entry points declare."""
    return _plugin_names | {point.name for point in entry_points(group=ALGORITHM_ENTRY_POINTS)}


class StrictModel(BaseModel):
    """A config model: unknown fields, assignments that break a rule, and NaN or infinity are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def check_host(value: str) -> str:
    """An IP literal (IPv6 without brackets) or an RFC 1123 host name; ValueError saying why not."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if len(value) > 253:
        raise ValueError("a host name has at most 253 characters")
    for label in value.split("."):
        if not label:
            raise ValueError(f"{value!r} has an empty label (two dots, or a dot at an end)")
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"{value[:80]!r} is not an IP address or a host name (labels of 1 to 63 letters, "
                "digits and inner hyphens)"
            )
    return value


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """JSON values only, nested at most MAX_METADATA_DEPTH deep, at most MAX_METADATA_BYTES as JSON."""
    _check_json(value, 1)
    size = len(json.dumps(value, allow_nan=False))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"at most {MAX_METADATA_BYTES} bytes as JSON, got {size}")
    return value


def _check_json(value: Any, depth: int) -> None:
    if isinstance(value, (dict, list)):
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"nested deeper than {MAX_METADATA_DEPTH} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if not isinstance(key, (str, int)):
                raise ValueError(f"keys must be strings, not {type(key).__name__}")
            _check_json(item, depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
    elif value is not None and not isinstance(value, (str, int, bool)):
        raise ValueError(
            f"values must be JSON (string, number, boolean, null, list, object), not {type(value).__name__}"
        )


class BackendConfig(StrictModel):
    """One backend server."""

    host: str = Field(
        min_length=1, max_length=253, description="IP address (IPv6 without brackets) or RFC 1123 host name."
    )
    port: int = Field(ge=1, le=65535, description="TCP port of the backend.")
    weight: float = Field(
        default=1.0, gt=0, le=1_000_000, description="Relative share of requests (weighted and cost-based algorithms)."
    )
    max_connections: int = Field(
        default=1000, ge=1, description="Requests in flight at most; further requests go elsewhere or wait in line."
    )
    quantum_capable: bool = Field(
        default=False, description="Whether the backend takes quantum workloads (the quantum_aware algorithm)."
    )
    priority: int = Field(
        default=0, description="Tier: only the highest priority with a candidate is used; lower ones are failover."
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free JSON shown in the API and dashboard; at most 8 deep and 64 KiB."
    )
    slow_start_seconds: float = Field(
        default=0.0, ge=0, description="Seconds over which a new or recovered backend ramps from 5 % to full weight."
    )

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value)

    @property
    def address(self) -> str:
        """``host:port``, with brackets around an IPv6 literal."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class HealthCheckConfig(StrictModel):
    """Active health probing of every backend."""

    enabled: bool = Field(default=True, description="Whether backends are probed at all.")
    type: Literal["tcp", "http"] = Field(
        default="tcp", description="tcp: a connection opens; http: GET path answers 2xx or 3xx."
    )
    path: str = Field(default="/health", description="Path an http probe requests.")
    interval: float = Field(default=5.0, gt=0, description="Seconds between two probes of a backend.")
    timeout: float = Field(default=2.0, gt=0, description="Seconds a probe may take before it fails.")
    unhealthy_threshold: int = Field(
        default=3, ge=1, description="Failed probes in a row that mark a backend UNHEALTHY."
    )
    healthy_threshold: int = Field(
        default=2, ge=1, description="Passing probes in a row that bring an UNHEALTHY backend back."
    )
    degraded_latency_ms: float | None = Field(
        default=None, gt=0, description="A passing probe slower than this marks the backend DEGRADED; off when null."
    )
    jitter: float = Field(
        default=0.1, ge=0, le=1, description="Fraction of the interval by which each probe is moved at random."
    )

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/") or any(ch.isspace() for ch in value):
            raise ValueError("must start with '/' and contain no whitespace")
        return value


class CircuitBreakerConfig(StrictModel):
    """Per-backend circuit breaker."""

    enabled: bool = Field(default=True, description="Whether failures open a backend's circuit.")
    failure_threshold: int = Field(default=5, ge=1, description="Failures in a row that open the circuit.")
    success_threshold: int = Field(default=2, ge=1, description="Successes in HALF_OPEN that close it again.")
    timeout: float = Field(default=60.0, gt=0, description="Seconds an OPEN circuit waits before HALF_OPEN.")
    half_open_max_calls: int = Field(default=3, ge=1, description="Requests in flight a HALF_OPEN circuit admits.")


class RateLimitConfig(StrictModel):
    """Token bucket per client IP, and blocking of flooding clients."""

    enabled: bool = Field(default=False, description="Whether requests are limited per client IP.")
    requests_per_second: float = Field(default=1000, gt=0, description="Tokens a client IP earns per second.")
    burst_size: int = Field(default=1500, ge=1, description="Tokens a client IP may hold: the largest burst.")
    ddos_threshold: int = Field(
        default=5000, ge=1, description="Attempts within one second that get a client IP blocked."
    )
    ddos_block_seconds: float = Field(default=60.0, ge=0, description="Seconds a flooding client IP stays blocked.")


class LoadBalancingAlgorithm(StrictModel):
    """Which algorithm picks backends, and its algorithm-specific settings."""

    algorithm_type: LoadBalancingAlgorithmType | str = Field(
        default=LoadBalancingAlgorithmType.ROUND_ROBIN,
        description="A built-in algorithm, or the name of one registered with register_algorithm or the "
        "omnixan_lb.algorithms entry point.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="The algorithm's own settings (each algorithm lists the keys it accepts)."
    )

    @field_validator("algorithm_type")
    @classmethod
    def _known_or_plugin_name(cls, value: LoadBalancingAlgorithmType | str) -> LoadBalancingAlgorithmType | str:
        # A built-in name becomes its enum member; another must name a plug-in.
        if isinstance(value, LoadBalancingAlgorithmType):
            return value
        try:
            return LoadBalancingAlgorithmType(value)
        except ValueError:
            pass
        plugins = plugin_algorithms()
        if value not in plugins:
            known = ", ".join([*LoadBalancingAlgorithmType, *sorted(plugins)])
            raise ValueError(f"unknown algorithm {value[:80]!r}; known: {known}")
        return value

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            algorithm_type: LoadBalancingAlgorithmType | AlgorithmName | str = ...,
            config: dict[str, Any] = ...,
        ) -> None: ...


class LoadBalancingModuleConfig(StrictModel):
    """Everything the module needs. Each field's description says what it does; the README has more."""

    algorithm: LoadBalancingAlgorithm = Field(
        default_factory=LoadBalancingAlgorithm,
        description="Which algorithm picks backends: a name, or {algorithm_type, config}.",
    )
    health_check: HealthCheckConfig = Field(
        default_factory=HealthCheckConfig, description="Active probing of every backend."
    )
    circuit_breaker: CircuitBreakerConfig = Field(
        default_factory=CircuitBreakerConfig,
        description="A circuit breaker per backend: failures take it out for a while.",
    )
    rate_limit: RateLimitConfig = Field(
        default_factory=RateLimitConfig, description="Token bucket per client IP, and blocking of floods."
    )
    request_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a try may take; also the longest wait in line for a slot."
    )
    max_retries: int = Field(default=3, ge=0, le=100, description="Retries on other backends after a failed try.")
    session_affinity: bool = Field(
        default=False, description="Whether requests with a session ID stick to the backend that served it first."
    )
    metrics_enabled: bool = Field(
        default=True, description="Kept for compatibility: metrics cost nothing until they are read."
    )
    session_ttl: float = Field(default=3600.0, gt=0, description="Seconds a sticky session lives after its last use.")
    max_sessions: int = Field(
        default=100_000, ge=1, description="Sticky sessions kept; the least recently used go first."
    )
    retry_backoff_base: float = Field(
        default=0.05, ge=0, description="Seconds: retry n sleeps uniform(0, min(max, base * 2^(n-1)))."
    )
    retry_backoff_max: float = Field(default=2.0, ge=0, description="Seconds: the cap of the backoff before a retry.")
    retry_budget_percent: float = Field(
        default=20.0, ge=0, le=100, description="Retries in progress at most, as a percentage of requests in flight."
    )
    retry_budget_min_concurrency: int = Field(
        default=3, ge=0, description="Retries in progress always allowed, whatever the percentage."
    )
    max_queue_size: int = Field(
        default=10000, ge=0, description="Requests that may wait in line when every backend is at max_connections."
    )
    load_report_interval: float = Field(
        default=10.0, gt=0, description="Seconds between load reports to an integrated auto-scaler."
    )

    if TYPE_CHECKING:
        # What the constructor accepts, for type checkers: ``algorithm`` as a name too (validated
        # into a LoadBalancingAlgorithm). tests/test_config_types.py keeps it in step with the fields.
        def __init__(
            self,
            *,
            algorithm: LoadBalancingAlgorithm | LoadBalancingAlgorithmType | AlgorithmName | str | dict[str, Any] = ...,
            health_check: HealthCheckConfig | dict[str, Any] = ...,
            circuit_breaker: CircuitBreakerConfig | dict[str, Any] = ...,
            rate_limit: RateLimitConfig | dict[str, Any] = ...,
            request_timeout: float = ...,
            max_retries: int = ...,
            session_affinity: bool = ...,
            metrics_enabled: bool = ...,
            session_ttl: float = ...,
            max_sessions: int = ...,
            retry_backoff_base: float = ...,
            retry_backoff_max: float = ...,
            retry_budget_percent: float = ...,
            retry_budget_min_concurrency: int = ...,
            max_queue_size: int = ...,
            load_report_interval: float = ...,
        ) -> None: ...

    @field_validator("algorithm", mode="before")
    @classmethod
    def _algorithm_from_name(cls, value: Any) -> Any:
        # Config files may say `algorithm: least_connections`.
        if isinstance(value, (str, LoadBalancingAlgorithmType)):
            return {"algorithm_type": value}
        return value

    @model_validator(mode="after")
    def _backoff_bounds(self) -> LoadBalancingModuleConfig:
        if self.retry_backoff_max < self.retry_backoff_base:
            raise ValueError("retry_backoff_max must be >= retry_backoff_base")
        return self


class Request(StrictModel):
    """One request to route. ``client_ip`` is normalised (``::0001`` -> ``::1``)."""

    client_ip: str = Field(
        default="127.0.0.1", description="The client's IPv4 or IPv6 address: rate limits and ip_hash read it."
    )
    workload_type: WorkloadType = Field(
        default=WorkloadType.CLASSICAL, description="classical, or a quantum workload (the quantum_aware algorithm)."
    )
    session_id: str | None = Field(
        default=None, max_length=512, description="Sticky-session key, with session_affinity on."
    )
    request_id: str | None = Field(
        default=None, max_length=512, description="Carried into the RouteResult and logs; made up when absent."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free JSON for the caller's own use.")

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            client_ip: str = ...,
            workload_type: WorkloadType | WorkloadName = ...,
            session_id: str | None = ...,
            request_id: str | None = ...,
            metadata: dict[str, Any] = ...,
        ) -> None: ...

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value)

    @field_validator("client_ip")
    @classmethod
    def _valid_ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
