"""Exceptions raised by the load balancer.

The hierarchy::

    LoadBalancingError
    ├── RoutingError
    │   ├── BackendUnavailableError
    │   │   └── CircuitBreakerOpenError
    │   ├── RateLimitExceededError
    │   └── RequestTimeoutError            (also a TimeoutError)
    ├── AlgorithmError                     (also a ValueError)
    ├── BackendNotFoundError               (also a KeyError)
    └── ConfigurationError                 (also a ValueError)

Invalid config models raise pydantic's ``ValidationError``, a ``ValueError``
that names the field.
"""

from __future__ import annotations


class LoadBalancingError(Exception):
    """Base class of every error this package raises on purpose."""


class RoutingError(LoadBalancingError):
    """A request could not be routed, or every try of it failed."""


class BackendUnavailableError(RoutingError):
    """No backend can take the request: none is healthy, or the queue is full."""


class CircuitBreakerOpenError(BackendUnavailableError):
    """Every backend that would otherwise take the request has an open circuit."""


class RateLimitExceededError(RoutingError):
    """The client is over its token-bucket rate, or blocked as a flood source.

    ``retry_after`` is the number of seconds after which a retry can succeed.
    """

    def __init__(self, message: str, *, retry_after: float, client_ip: str, blocked: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.client_ip = client_ip
        self.blocked = blocked


class RequestTimeoutError(RoutingError, TimeoutError):
    """A request waited in the queue, or ran, longer than ``request_timeout``."""


class AlgorithmError(LoadBalancingError, ValueError):
    """An unsupported algorithm type or an invalid algorithm config."""


class BackendNotFoundError(LoadBalancingError, KeyError):
    """No backend has the given id."""

    def __str__(self) -> str:
        # KeyError.__str__ would quote the message as a repr.
        return str(self.args[0]) if self.args else ""


class ConfigurationError(LoadBalancingError, ValueError):
    """A configuration value is invalid or inconsistent."""
