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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .enums import LoadBalancingAlgorithmType, WorkloadType

MAX_METADATA_DEPTH = 8
MAX_METADATA_BYTES = 64 * 1024
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


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

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    weight: float = Field(default=1.0, gt=0, le=1_000_000)
    max_connections: int = Field(default=1000, ge=1)
    quantum_capable: bool = False
    priority: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    slow_start_seconds: float = Field(default=0.0, ge=0)

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

    enabled: bool = True
    type: Literal["tcp", "http"] = "tcp"
    path: str = "/health"
    interval: float = Field(default=5.0, gt=0)
    timeout: float = Field(default=2.0, gt=0)
    unhealthy_threshold: int = Field(default=3, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)
    degraded_latency_ms: float | None = Field(default=None, gt=0)
    jitter: float = Field(default=0.1, ge=0, le=1)

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/") or any(ch.isspace() for ch in value):
            raise ValueError("must start with '/' and contain no whitespace")
        return value


class CircuitBreakerConfig(StrictModel):
    """Per-backend circuit breaker."""

    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1)
    success_threshold: int = Field(default=2, ge=1)
    timeout: float = Field(default=60.0, gt=0)
    half_open_max_calls: int = Field(default=3, ge=1)


class RateLimitConfig(StrictModel):
    """Token bucket per client IP, and blocking of flooding clients."""

    enabled: bool = False
    requests_per_second: float = Field(default=1000, gt=0)
    burst_size: int = Field(default=1500, ge=1)
    ddos_threshold: int = Field(default=5000, ge=1)
    ddos_block_seconds: float = Field(default=60.0, ge=0)


class LoadBalancingAlgorithm(StrictModel):
    """Which algorithm picks backends, and its algorithm-specific settings."""

    algorithm_type: LoadBalancingAlgorithmType = LoadBalancingAlgorithmType.ROUND_ROBIN
    config: dict[str, Any] = Field(default_factory=dict)


class LoadBalancingModuleConfig(StrictModel):
    """Everything the module needs; see the README for each field."""

    algorithm: LoadBalancingAlgorithm = Field(default_factory=LoadBalancingAlgorithm)
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    request_timeout: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=100)
    session_affinity: bool = False
    metrics_enabled: bool = True
    session_ttl: float = Field(default=3600.0, gt=0)
    max_sessions: int = Field(default=100_000, ge=1)  # sticky sessions kept; the least recently used go first
    retry_backoff_base: float = Field(default=0.05, ge=0)
    retry_backoff_max: float = Field(default=2.0, ge=0)
    retry_budget_percent: float = Field(default=20.0, ge=0, le=100)
    retry_budget_min_concurrency: int = Field(default=3, ge=0)
    max_queue_size: int = Field(default=10000, ge=0)
    load_report_interval: float = Field(default=10.0, gt=0)

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

    client_ip: str = "127.0.0.1"
    workload_type: WorkloadType = WorkloadType.CLASSICAL
    session_id: str | None = Field(default=None, max_length=512)
    request_id: str | None = Field(default=None, max_length=512)
    metadata: dict[str, Any] = Field(default_factory=dict)

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
