"""What a backend's answer means to the proxy: ``failure_statuses`` and ``retry_on`` in the config.

``failure_statuses`` says which response statuses are the backend's failure (its breaker, health
and latency statistics hear ``success=False``); ``retry_on`` says which failed tries go to another
backend. Both are set at the top level (the default pool's) and, replacing it whole, per pool.
The proxy reads them as plain sets and flags (:meth:`RetryOn.status_set`, :func:`status_set`),
made once per config.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from ..config import StrictModel

_CLASS = re.compile(r"([1-5])xx")  # "5xx": every status of that class
DEFAULT_FAILURE_STATUSES: tuple[int | str, ...] = ("5xx",)
DEFAULT_RETRY_STATUSES: tuple[int | str, ...] = (502, 503, 504)
MAX_STATUSES = 500


def _status(value: Any) -> int | str:
    """One entry: a status 100..599 (a number, or its digits as a string, as ``${ENV}`` gives), or a
    class such as ``5xx``; the class's string lowercased."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a status: give a number such as 503, or a class such as 5xx")
    if isinstance(value, str):
        text = value.strip().lower()
        if _CLASS.fullmatch(text):
            return text
        if not text.isdigit():
            raise ValueError(f"{value[:40]!r} is not a status: give a number such as 503, or a class such as 5xx")
        value = int(text)
    if not isinstance(value, int):
        raise ValueError(f"{value!r} is not a status: give a number such as 503, or a class such as 5xx")
    if not 100 <= value <= 599:
        raise ValueError(f"{value} is not an HTTP status (100..599)")
    return value


def _error_status(value: Any) -> int | str:
    """An entry of ``retry_on.statuses``: only an error (4xx or 5xx) can be retried on."""
    status = _status(value)
    if (isinstance(status, int) and status < 400) or status in ("1xx", "2xx", "3xx"):
        raise ValueError(f"{status} is not an error status: only 4xx and 5xx answers can be retried")
    return status


Status = Annotated[int | str, BeforeValidator(_status)]
ErrorStatus = Annotated[int | str, BeforeValidator(_error_status)]


def status_set(entries: list[int | str]) -> frozenset[int]:
    """Every status the entries name (``5xx``: 500..599)."""
    statuses: set[int] = set()
    for entry in entries:
        if isinstance(entry, int):
            statuses.add(entry)
        else:
            first = int(entry[0]) * 100
            statuses.update(range(first, first + 100))
    return frozenset(statuses)


class RetryOn(StrictModel):
    """Which failed tries go to another backend (HAProxy's ``retry-on``, Envoy's ``retry_on``).

    A try goes to a backend not tried yet within ``max_retries``, ``request_timeout`` and the retry
    budget. ``connect_failure`` retries any method (no backend received the request); the others
    only an idempotent request whose body is still held (its first 64 KiB), and only before any byte
    of the answer went to the client."""

    connect_failure: bool = Field(
        default=True,
        description=(
            "retry when the connect to a backend is refused, resets or times out, or its TLS handshake fails;"
            " any method (HAProxy conn-failure, Envoy connect-failure)"
        ),
    )
    empty_response: bool = Field(
        default=True,
        description=(
            "retry when the backend closes or resets the connection after the request, before any response"
            " (HAProxy empty-response, Envoy reset)"
        ),
    )
    junk_response: bool = Field(
        default=True,
        description=(
            "retry when the backend's response head is invalid (bad or ambiguous framing, an unasked 101)"
            " (HAProxy junk-response)"
        ),
    )
    statuses: list[ErrorStatus] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_STATUSES),
        max_length=MAX_STATUSES,
        description=(
            "response statuses (400..599, or a class such as 5xx) on which the response is dropped and the request"
            " retried; [] retries on no status (HAProxy's 502, 503, 504 keywords; Envoy retriable_status_codes)"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _no_timeout(cls, value: Any) -> Any:
        """HAProxy's response-timeout has no counterpart: said why, rather than "unknown key"."""
        if isinstance(value, dict):
            for key in ("timeout", "response_timeout"):
                if key in value:
                    raise ValueError(
                        f"{key}: not supported: request_timeout is the whole request's deadline, so a try"
                        " that meets it leaves no time to retry"
                    )
        return value

    def status_set(self) -> frozenset[int]:
        return status_set(self.statuses)


FAILURE_STATUSES_DESCRIPTION = (
    "response statuses (100..599, or a class such as 5xx) that are the backend's failure for its breaker,"
    " health and latency statistics (the response still goes to the client)"
)
