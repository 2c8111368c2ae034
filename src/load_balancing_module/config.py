"""Validated configuration models.

Every model forbids unknown keys, so a typo in a config file is an error
rather than a silently ignored setting. A bad value raises pydantic's
``ValidationError`` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .enums import LoadBalancingAlgorithmType, WorkloadType


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackendConfig(_Model):
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
    def _host_has_no_space(cls, value: str) -> str:
        if any(ch.isspace() for ch in value) or "/" in value:
            raise ValueError("must be a host name or IP address, without spaces or slashes")
        return value

    @property
    def address(self) -> str:
        """``host:port``, with brackets around an IPv6 literal."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class HealthCheckConfig(_Model):
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


class CircuitBreakerConfig(_Model):
    """Per-backend circuit breaker."""

    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1)
    success_threshold: int = Field(default=2, ge=1)
    timeout: float = Field(default=60.0, gt=0)
    half_open_max_calls: int = Field(default=3, ge=1)


class RateLimitConfig(_Model):
    """Token bucket per client IP, and blocking of flooding clients."""

    enabled: bool = False
    requests_per_second: float = Field(default=1000, gt=0)
    burst_size: int = Field(default=1500, ge=1)
    ddos_threshold: int = Field(default=5000, ge=1)
    ddos_block_seconds: float = Field(default=60.0, ge=0)


class LoadBalancingAlgorithm(_Model):
    """Which algorithm picks backends, and its algorithm-specific settings."""

    algorithm_type: LoadBalancingAlgorithmType = LoadBalancingAlgorithmType.ROUND_ROBIN
    config: dict[str, Any] = Field(default_factory=dict)


class LoadBalancingModuleConfig(_Model):
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


class Request(_Model):
    """One request to route. ``client_ip`` is normalised (``::0001`` -> ``::1``)."""

    client_ip: str = "127.0.0.1"
    workload_type: WorkloadType = WorkloadType.CLASSICAL
    session_id: str | None = Field(default=None, max_length=512)
    request_id: str | None = Field(default=None, max_length=512)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("client_ip")
    @classmethod
    def _valid_ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
