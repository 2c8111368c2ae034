"""OMNIXAN load balancing module: spread async calls over many backends.

The public surface; everything else is internal and may change.
"""

from .algorithms import Algorithm, register_algorithm
from .build import __version__
from .clock import Clock, FakeClock, SystemClock
from .config import (
    AlgorithmName,
    BackendConfig,
    CircuitBreakerConfig,
    HealthCheckConfig,
    LoadBalancingAlgorithm,
    LoadBalancingModuleConfig,
    RateLimitConfig,
    Request,
    WorkloadName,
)
from .enums import CircuitState, HealthState, LoadBalancingAlgorithmType, WorkloadType
from .exceptions import (
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
from .health import ProbeTLS
from .metrics import LoadBalancerCollector, register_metrics
from .models import DrainResult, HealthStatus, LoadDistribution, RouteResult
from .module import BackendID, LoadBalancingModule
from .outcome import Outcome
from .state import MemoryStore, RedisStore, StateStore

__all__ = [
    "Algorithm",
    "AlgorithmError",
    "AlgorithmName",
    "BackendConfig",
    "BackendID",
    "BackendNotFoundError",
    "BackendUnavailableError",
    "CircuitBreakerConfig",
    "CircuitBreakerOpenError",
    "CircuitState",
    "Clock",
    "ConfigurationError",
    "DrainResult",
    "FakeClock",
    "HealthCheckConfig",
    "HealthState",
    "HealthStatus",
    "LoadBalancerCollector",
    "LoadBalancingAlgorithm",
    "LoadBalancingAlgorithmType",
    "LoadBalancingError",
    "LoadBalancingModule",
    "LoadBalancingModuleConfig",
    "LoadDistribution",
    "MemoryStore",
    "Outcome",
    "ProbeTLS",
    "RateLimitConfig",
    "RateLimitExceededError",
    "RedisStore",
    "Request",
    "RequestTimeoutError",
    "RouteResult",
    "RoutingError",
    "StateStore",
    "SystemClock",
    "WorkloadName",
    "WorkloadType",
    "__version__",
    "register_algorithm",
    "register_metrics",
]
