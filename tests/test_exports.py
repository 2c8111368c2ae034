"""The public surface: what the seed and the contract promise is importable."""

from __future__ import annotations

import load_balancing_module
from load_balancing_module import (
    AlgorithmError,
    BackendNotFoundError,
    BackendUnavailableError,
    CircuitBreakerOpenError,
    ConfigurationError,
    LoadBalancingError,
    RateLimitExceededError,
    RequestTimeoutError,
    RoutingError,
)

PROMISED = {
    # seed examples
    "LoadBalancingModule",
    "LoadBalancingModuleConfig",
    "LoadBalancingAlgorithm",
    "LoadBalancingAlgorithmType",
    "BackendConfig",
    "Request",
    "WorkloadType",
    "HealthCheckConfig",
    "CircuitBreakerConfig",
    "RateLimitConfig",
    # contract
    "RouteResult",
    "HealthStatus",
    "HealthState",
    "LoadDistribution",
    "CircuitState",
    "LoadBalancingError",
    "RoutingError",
    "BackendUnavailableError",
    "AlgorithmError",
    "CircuitBreakerOpenError",
    "BackendNotFoundError",
    "ConfigurationError",
    "RateLimitExceededError",
    "RequestTimeoutError",
}


def test_all_is_sorted_and_complete() -> None:
    exported = load_balancing_module.__all__
    assert exported == sorted(exported)
    assert set(exported) >= PROMISED
    for name in exported:
        assert hasattr(load_balancing_module, name), name


def test_nothing_public_is_left_out_of_all() -> None:
    public = {name for name in vars(load_balancing_module) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(load_balancing_module, name)).__name__ == "module"}
    assert public - modules - {"annotations"} <= set(load_balancing_module.__all__)


def test_exception_tree() -> None:
    assert issubclass(RoutingError, LoadBalancingError)
    assert issubclass(BackendUnavailableError, RoutingError)
    assert issubclass(CircuitBreakerOpenError, BackendUnavailableError)
    assert issubclass(RateLimitExceededError, RoutingError)
    assert issubclass(RequestTimeoutError, RoutingError) and issubclass(RequestTimeoutError, TimeoutError)
    assert issubclass(AlgorithmError, LoadBalancingError) and issubclass(AlgorithmError, ValueError)
    assert issubclass(BackendNotFoundError, LoadBalancingError) and issubclass(BackendNotFoundError, KeyError)
    assert issubclass(ConfigurationError, LoadBalancingError) and issubclass(ConfigurationError, ValueError)
    assert not issubclass(RateLimitExceededError, BackendUnavailableError)


def test_enum_values_are_lower_case_names() -> None:
    from load_balancing_module import CircuitState, HealthState, LoadBalancingAlgorithmType, WorkloadType

    for enum in (CircuitState, HealthState, LoadBalancingAlgorithmType, WorkloadType):
        for member in enum:
            assert member.value == member.name.lower()
            assert member == member.value and str(member) == member.value
    assert {m.name for m in LoadBalancingAlgorithmType} >= {
        "ROUND_ROBIN",
        "LEAST_CONNECTIONS",
        "WEIGHTED",
        "QUANTUM_AWARE",
        "IP_HASH",
        "LEAST_LATENCY",
    }
    assert [w for w in WorkloadType if not w.is_quantum] == [WorkloadType.CLASSICAL]


def test_package_is_typed() -> None:
    from pathlib import Path

    assert (Path(load_balancing_module.__file__).parent / "py.typed").exists()
