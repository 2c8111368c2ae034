"""Calls through the balancer: :meth:`LoadBalancingModule.call` and ``acquire``.

:class:`Calls` routes a call, awaits the caller's function and retries a
failure on an untried backend, within ``max_retries`` and the retry budget.
:class:`Acquired` is ``async with lb.acquire(request)``. Both are owned by
the facade and built with it (anything with the methods of :class:`Balancer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol, TypeVar

from ._log import log_event
from .backend import Backend
from .clock import Clock
from .config import Request
from .exceptions import LoadBalancingError, RequestTimeoutError, RoutingError
from .models import RouteResult

T = TypeVar("T")

Route = Callable[[Request, float, tuple[Backend, ...], int], Awaitable[RouteResult]]
"""Routes ``request`` (begun at the time given) to a backend not in the tuple, as try number ``int``."""


class Balancer(Protocol):
    """What a call uses of ``LoadBalancingModule``: routing, completion and the retry surface."""

    @property
    def backoff(self) -> Callable[[int], float]: ...

    async def route_request(self, request: Request, prefer: str | None = None) -> RouteResult: ...

    def complete_now(self, result: RouteResult, *, success: bool, latency_ms: float | None = None) -> None: ...

    def abandon_request(self, result: RouteResult) -> None: ...

    def retry_allowed(self) -> bool: ...

    def begin_retry(self, *, budgeted: bool) -> None: ...

    def end_retry(self) -> None: ...


class Calls:
    __slots__ = ("lb", "route", "clock", "timeout", "max_retries")

    def __init__(self, lb: Balancer, route: Route, clock: Clock, timeout: float, max_retries: int) -> None:
        self.lb = lb
        self.route = route
        self.clock = clock
        self.timeout = timeout  # each try's: the config's request_timeout
        self.max_retries = max_retries

    async def run(self, request: Request, fn: Callable[[RouteResult], Awaitable[T]]) -> T:
        """Route and await ``fn(result)``, retrying failures on untried backends (the request is admitted)."""
        lb = self.lb
        tried: list[Backend] = []
        last_error: BaseException | None = None
        retry = 0
        in_budget = False  # this call holds one unit of the retry budget
        try:
            while True:
                try:
                    result = await self.route(request, self.clock.monotonic(), tuple(tried), retry + 1)
                except RoutingError as exc:
                    if last_error is None:
                        raise
                    error = RoutingError(
                        f"{len(tried)} tries failed and no other backend can take the request "
                        f"({exc}); last error: {last_error!r}"
                    )
                    error.__cause__ = last_error  # see the end of this method
                    raise error  # noqa: B904 - its cause is set just above
                tried.append(result.backend)
                try:
                    value = await self.clock.wait_for(fn(result), self.timeout)
                except asyncio.CancelledError:
                    lb.abandon_request(result)
                    raise
                except Exception as exc:
                    lb.complete_now(result, success=False)
                    last_error = self._attempt_error(result, exc)
                else:
                    lb.complete_now(result, success=True)
                    return value
                if in_budget:
                    lb.end_retry()
                    in_budget = False
                if retry >= self.max_retries or not lb.retry_allowed():
                    break
                retry += 1
                lb.begin_retry(budgeted=True)
                in_budget = True
                log_event(
                    "request_retry",
                    logging.DEBUG,
                    request_id=result.request_id,
                    retry=retry,
                    failed_backend=result.backend_id,
                    error=repr(last_error),
                )
                await self.clock.sleep(lb.backoff(retry))
        finally:
            if in_budget:
                lb.end_retry()
        error = RoutingError(f"request {result.request_id} failed after {len(tried)} tries: {last_error!r}")
        # Not ``raise ... from last_error``: compiled by mypyc, a coroutine loses the cause that way.
        error.__cause__ = last_error
        raise error

    def _attempt_error(self, result: RouteResult, exc: Exception) -> Exception:
        if not isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or isinstance(exc, LoadBalancingError):
            return exc
        error = RequestTimeoutError(f"backend {result.backend_id} did not answer within {self.timeout:g} s")
        error.__cause__ = exc
        return error


class Acquired:
    """The async context manager of :meth:`LoadBalancingModule.acquire` (a class, not a generator,
    so that the module compiles with mypyc)."""

    __slots__ = ("_lb", "_request", "_result")

    def __init__(self, lb: Balancer, request: Request) -> None:
        self._lb = lb
        self._request = request
        self._result: RouteResult | None = None

    async def __aenter__(self) -> RouteResult:
        self._result = await self._lb.route_request(self._request)
        return self._result

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        result = self._result
        if result is None:
            return
        if exc_type is None:
            self._lb.complete_now(result, success=True)
        elif issubclass(exc_type, asyncio.CancelledError):
            self._lb.abandon_request(result)
        else:
            self._lb.complete_now(result, success=False)
