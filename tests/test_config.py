"""Config models: defaults, validation errors that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from load_balancing_module import (
    BackendConfig,
    CircuitBreakerConfig,
    HealthCheckConfig,
    LoadBalancingAlgorithm,
    LoadBalancingAlgorithmType,
    LoadBalancingModuleConfig,
    RateLimitConfig,
    Request,
    WorkloadType,
)


def test_defaults_from_the_contract() -> None:
    config = LoadBalancingModuleConfig()
    assert config.session_ttl == 3600
    assert config.retry_backoff_base == 0.05 and config.retry_backoff_max == 2.0
    assert config.max_queue_size == 10000 and config.load_report_interval == 10
    assert config.retry_budget_percent == 20 and config.retry_budget_min_concurrency == 3
    assert config.algorithm.algorithm_type is LoadBalancingAlgorithmType.ROUND_ROBIN
    assert config.health_check.type == "tcp" and config.health_check.path == "/health"
    assert config.rate_limit.ddos_block_seconds == 60
    assert BackendConfig(host="h.test", port=1).slow_start_seconds == 0
    assert Request().workload_type is WorkloadType.CLASSICAL


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"weight": 0}, "weight"),
        ({"weight": -1.5}, "weight"),
        ({"max_connections": 0}, "max_connections"),
        ({"host": ""}, "host"),
        ({"host": "bad host"}, "host"),
        ({"slow_start_seconds": -1}, "slow_start_seconds"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_backend_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"host": "b.test", "port": 8080}
    with pytest.raises(ValueError, match=field):
        BackendConfig(**{**base, **kwargs})


@pytest.mark.parametrize("ip", ["10.0.0.1", "::1", "2001:db8::7", "192.168.1.100"])
def test_request_accepts_ip_addresses(ip: str) -> None:
    assert Request(client_ip=ip).client_ip == ip


def test_request_normalises_ipv6() -> None:
    assert Request(client_ip="2001:0db8:0000::0001").client_ip == "2001:db8::1"


@pytest.mark.parametrize("ip", ["", "not-an-ip", "999.1.1.1", "10.0.0", "example.com"])
def test_request_rejects_non_ip(ip: str) -> None:
    with pytest.raises(ValidationError, match="client_ip"):
        Request(client_ip=ip)


def test_request_rejects_unknown_workload() -> None:
    with pytest.raises(ValueError, match="workload_type"):
        Request(workload_type="teleportation")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "kwargs", "field"),
    [
        (HealthCheckConfig, {"interval": 0}, "interval"),
        (HealthCheckConfig, {"type": "icmp"}, "type"),
        (HealthCheckConfig, {"path": "health"}, "path"),
        (HealthCheckConfig, {"unhealthy_threshold": 0}, "unhealthy_threshold"),
        (CircuitBreakerConfig, {"failure_threshold": 0}, "failure_threshold"),
        (CircuitBreakerConfig, {"timeout": -1}, "timeout"),
        (RateLimitConfig, {"requests_per_second": 0}, "requests_per_second"),
        (RateLimitConfig, {"burst_size": 0}, "burst_size"),
        (LoadBalancingModuleConfig, {"max_retries": -1}, "max_retries"),
        (LoadBalancingModuleConfig, {"request_timeout": 0}, "request_timeout"),
        (LoadBalancingModuleConfig, {"session_ttl": 0}, "session_ttl"),
        (LoadBalancingModuleConfig, {"algorithm": "fastest"}, "algorithm"),
        (LoadBalancingModuleConfig, {"unknown_key": 1}, "unknown_key"),
    ],
)
def test_config_validation_names_the_field(model: type, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        model(**kwargs)


def test_backoff_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="retry_backoff_max"):
        LoadBalancingModuleConfig(retry_backoff_base=1.0, retry_backoff_max=0.5)


def test_algorithm_accepts_a_type_name() -> None:
    config = LoadBalancingModuleConfig.model_validate({"algorithm": "least_latency"})
    assert config.algorithm == LoadBalancingAlgorithm(algorithm_type=LoadBalancingAlgorithmType.LEAST_LATENCY)
    nested = LoadBalancingModuleConfig.model_validate(
        {"algorithm": {"algorithm_type": "ip_hash", "config": {"balance_factor": 1.25}}}
    )
    assert nested.algorithm.config == {"balance_factor": 1.25}


def test_assignment_is_validated() -> None:
    backend = BackendConfig(host="b.test", port=80)
    with pytest.raises(ValueError, match="port"):
        backend.port = 70000
