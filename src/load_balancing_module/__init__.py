"""OMNIXAN load balancing module: spread async calls over many backends.

The public surface; everything else is internal and may change.

``import load_balancing_module`` needs only pydantic (and librt for the compiled build): the names
that need an extra (``register_metrics`` and ``LoadBalancerCollector``: prometheus-client) are
imported on first use, and say which extra to install when it is missing.
"""

import typing as _typing  # private: the package's names are its public surface
from importlib.util import find_spec as _find_spec

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
from .models import DrainResult, HealthStatus, LoadDistribution, RouteResult
from .module import BackendID, LoadBalancingModule
from .outcome import Outcome
from .state import MemoryStore, RedisStore, StateStore  # RedisStore imports redis when it connects

if _typing.TYPE_CHECKING:
    from .metrics import LoadBalancerCollector, register_metrics

# The names that need an extra, by their module: imported on first use (PEP 562).
_LAZY = {"LoadBalancerCollector": "metrics", "register_metrics": "metrics"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)  # without the extra: the error naming it
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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

try:  # without [metrics], ``from load_balancing_module import *`` takes the names it can
    _metrics = _find_spec("prometheus_client") is not None
except ImportError:
    _metrics = False
if not _metrics:
    __all__ = [name for name in __all__ if name not in _LAZY]
