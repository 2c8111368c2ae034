"""Whose fault a try was, and whether to try again: :class:`Outcome` and the two predicates.

A try through the balancer (``call()``, ``acquire()``, the httpx and aiohttp integrations) ends
in an :class:`Outcome`: the value it returned or the exception it raised, and the HTTP status
either carries. Two predicates read it:

- ``is_failure(outcome)``: does it count against the backend (circuit breaker, outlier and
  latency statistics)? Default :func:`default_is_failure`: connection errors, timeouts and 5xx
  are the backend's failures; 4xx and the caller's own programming errors are not.
- ``retry_on(outcome)``: is it worth another backend? Given as exception types, status codes or
  a callable (:func:`retry_predicate`); default :func:`default_retry_on`: a failure, unless it
  is a 5xx other than 502, 503 and 504 (a 500 is usually the request's own fault and would fail
  again), as Envoy's ``gateway-error``.

A request that is not idempotent is retried only when the backend provably never received it
(:attr:`Outcome.never_sent`): its connection was refused or never opened.

Statuses are read by duck typing (``status_code`` as in httpx, ``status`` as in aiohttp, and an
exception's ``response.status_code`` or ``status``), so this module imports no HTTP client.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from typing import Any

#: Exceptions raised by code, not by the network: the caller's own mistakes, never the backend's.
CALLER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    ArithmeticError,
    AssertionError,
    NameError,
    NotImplementedError,
)

#: Exceptions that prove nothing reached the backend: no connection was made.
NOT_SENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionRefusedError, socket.gaierror)

#: Statuses retried by default: the gateway errors (bad gateway, unavailable, gateway timeout).
RETRY_STATUSES = frozenset({502, 503, 504})

# Connection-level errors of HTTP clients that are not OSErrors, by (module prefix, class name):
# httpx's TransportError family. Named, not imported, so that the library needs no client.
_TRANSPORT_FAILURES = frozenset({"TransportError", "TimeoutException", "NetworkError", "ProtocolError"})
_TRANSPORT_NOT_SENT = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol"})
# ...and those that say the request itself is wrong (a header h11 refuses, a scheme httpx cannot
# send): every backend would get the same, so none is to blame.
_TRANSPORT_CALLER = frozenset({"LocalProtocolError", "UnsupportedProtocol"})
_TRANSPORT_ANY = _TRANSPORT_FAILURES | _TRANSPORT_NOT_SENT  # built once, not per judged outcome


class Outcome:
    """How one try ended.

    ``value`` is what the try returned (``None`` when it raised ``error``); ``status`` the HTTP
    status read off either, when there is one; ``attempt`` counts from 1; ``latency_ms`` is the
    try's duration. ``failure`` is the verdict of ``is_failure`` once the balancer asked it, for
    ``retry_on`` to read.
    """

    __slots__ = ("backend_id", "attempt", "latency_ms", "value", "error", "status", "never_sent", "failure")

    def __init__(
        self,
        backend_id: str,
        attempt: int,
        latency_ms: float,
        *,
        value: Any = None,
        error: BaseException | None = None,
        status: int | None = None,
        never_sent: bool | None = None,
    ) -> None:
        self.backend_id = backend_id
        self.attempt = attempt
        self.latency_ms = latency_ms
        self.value = value
        self.error = error
        self.status = status if status is not None else status_of(error if error is not None else value)
        self.never_sent = never_sent if never_sent is not None else (error is not None and was_never_sent(error))
        self.failure = False

    def __repr__(self) -> str:
        what = f"error={self.error!r}" if self.error is not None else f"status={self.status}"
        return f"Outcome(backend_id={self.backend_id!r}, attempt={self.attempt}, {what}, failure={self.failure})"


IsFailure = Callable[[Outcome], bool]
RetryOn = Callable[[Outcome], bool] | Iterable[int | type[BaseException]]
"""Exception types and status codes (``[503, ConnectionError]``), or a callable on the :class:`Outcome`."""


def status_of(thing: object) -> int | None:
    """The HTTP status a response or an HTTP error carries, else ``None``."""
    if thing is None:
        return None
    status = _int_attr(thing, "status_code")
    if status is None:
        status = _int_attr(thing, "status")
    if status is None and isinstance(thing, BaseException):
        response = getattr(thing, "response", None)
        if response is not None:
            status = _int_attr(response, "status_code")
            if status is None:
                status = _int_attr(response, "status")
    return status if status is not None and 100 <= status <= 599 else None


def _int_attr(thing: object, name: str) -> int | None:
    try:
        value = getattr(thing, name, None)
    except Exception:  # a property that raises (httpx.HTTPStatusError.response before it is set)
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _client_error_name(error: BaseException, names: frozenset[str]) -> bool:
    """Whether ``error`` is, or derives from, an httpx class named in ``names``."""
    return any(cls.__module__.startswith("httpx") and cls.__name__ in names for cls in type(error).__mro__)


def was_never_sent(error: BaseException) -> bool:
    """Whether ``error`` proves the request never reached a backend (no connection was made)."""
    if isinstance(error, NOT_SENT_ERRORS):
        return True
    if _client_error_name(error, _TRANSPORT_NOT_SENT):
        return True
    # aiohttp.ClientConnectorError: the connection was never made (an OSError subclass, by name
    # so that aiohttp is not needed here).
    return any(cls.__name__ == "ClientConnectorError" for cls in type(error).__mro__)


def default_is_failure(outcome: Outcome) -> bool:
    """Connection errors, timeouts, 5xx and exceptions the balancer cannot place are the backend's
    failures; 4xx, the caller's programming errors (``ValueError``, ``KeyError``, ...) and a
    request httpx refuses to send (``LocalProtocolError``, ``UnsupportedProtocol``) are not."""
    status = outcome.status
    if status is not None:
        return status >= 500
    error = outcome.error
    if error is None:
        return False
    if isinstance(error, (OSError, TimeoutError, asyncio.TimeoutError, EOFError)):
        return True
    if _client_error_name(error, _TRANSPORT_CALLER):
        return False
    if _client_error_name(error, _TRANSPORT_ANY):
        return True
    return not isinstance(error, CALLER_ERRORS)


def raised_is_failure(outcome: Outcome) -> bool:
    """``acquire()``'s default: whatever the block raised is the backend's failure (the block is
    the whole try, and the balancer cannot see into it)."""
    return outcome.error is not None or default_is_failure(outcome)


def default_retry_on(outcome: Outcome) -> bool:
    """A failure is retried, except a 5xx answer other than 502, 503 and 504."""
    if not outcome.failure:
        return False
    return outcome.status is None or outcome.status in RETRY_STATUSES


def retry_predicate(retry_on: RetryOn | None) -> Callable[[Outcome], bool]:
    """``retry_on`` as a callable: ``None`` is the default; types and statuses become a match."""
    if retry_on is None:
        return default_retry_on
    if callable(retry_on) and not isinstance(retry_on, type):
        return retry_on
    items = [retry_on] if isinstance(retry_on, (int, type)) else list(retry_on)
    statuses: set[int] = set()
    kinds: list[type[BaseException]] = []
    for item in items:
        if isinstance(item, bool):
            raise TypeError(f"retry_on: {item!r} is neither a status code nor an exception type")
        if isinstance(item, int):
            if not 100 <= item <= 599:
                raise ValueError(f"retry_on: {item} is not an HTTP status (100-599)")
            statuses.add(item)
        elif isinstance(item, type) and issubclass(item, BaseException):
            kinds.append(item)
        else:
            raise TypeError(f"retry_on: {item!r} is neither a status code nor an exception type")
    return _Match(frozenset(statuses), tuple(kinds))


class _Match:
    """``retry_on`` given as statuses and exception types."""

    __slots__ = ("statuses", "kinds")

    def __init__(self, statuses: frozenset[int], kinds: tuple[type[BaseException], ...]) -> None:
        self.statuses = statuses
        self.kinds = kinds

    def __call__(self, outcome: Outcome) -> bool:
        if outcome.error is not None and isinstance(outcome.error, self.kinds):
            return True
        return outcome.status is not None and outcome.status in self.statuses

    def __repr__(self) -> str:
        return f"retry_on({sorted(self.statuses)}, {[k.__name__ for k in self.kinds]})"


def failure_predicate(is_failure: IsFailure | None) -> IsFailure:
    """``is_failure`` or the default, checked to be callable."""
    if is_failure is None:
        return default_is_failure
    if not callable(is_failure):
        raise TypeError(f"is_failure must be a callable taking an Outcome, not {type(is_failure).__name__}")
    return is_failure
