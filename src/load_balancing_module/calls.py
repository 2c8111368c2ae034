"""Calls through the balancer: :meth:`LoadBalancingModule.call` and ``acquire``.

:class:`Calls` routes a call, awaits the caller's function, judges each try
with the call's :class:`CallPolicy` (``is_failure``, ``retry_on``, see
:mod:`.outcome`) and retries on an untried backend, within ``max_retries``
and the retry budget.
:class:`Acquired` is ``async with lb.acquire(request)``. Both are owned by
the facade and built with it (anything with the methods of :class:`Balancer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from ._log import log_event
from .backend import Backend
from .clock import Clock
from .config import Request
from .exceptions import LoadBalancingError, RequestTimeoutError, RoutingError
from .models import RouteResult
from .outcome import IsFailure, Outcome

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

    @property
    def backend_count(self) -> int: ...

    def retry_allowed(self) -> bool: ...

    def begin_retry(self, *, budgeted: bool) -> None: ...

    def end_retry(self) -> None: ...


class CallTracer(Protocol):
    """Spans of the tries of ``call()`` (``load_balancing_module.tracing.OpenTelemetryTracer``): a
    try's span is the current one while its function runs, so what it sends can carry it."""

    def try_begun(self, result: RouteResult, retry: int) -> object:
        """A try on ``result``'s backend starts (``retry``: the retries before it); its span."""
        ...

    def try_ended(self, span: object, error: BaseException | None) -> None:
        """The try of ``span`` returned (``error`` None) or raised ``error``."""
        ...

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Put the current try's context in ``headers`` (W3C ``traceparent``, ``tracestate``)."""
        ...

    def note_status(self, status: int) -> None:
        """The current try's backend answered HTTP ``status``."""
        ...


class CallPolicy:
    """The predicates and facts one call is judged by (see :mod:`.outcome`)."""

    __slots__ = ("is_failure", "retry_on", "idempotent")

    def __init__(self, is_failure: IsFailure, retry_on: Callable[[Outcome], bool], idempotent: bool) -> None:
        self.is_failure = is_failure
        self.retry_on = retry_on
        self.idempotent = idempotent


class Held(Generic[T]):
    """What a try returned, with its result. ``open`` while the backend's slot is still held: the
    caller completes it (``call_held``, for a response whose body is still to be read)."""

    __slots__ = ("value", "result", "outcome", "open")

    def __init__(self, value: T, result: RouteResult, outcome: Outcome, open: bool) -> None:
        self.value = value
        self.result = result
        self.outcome = outcome
        self.open = open


class Calls:
    __slots__ = ("lb", "route", "clock", "timeout", "max_retries", "tracer")

    def __init__(
        self,
        lb: Balancer,
        route: Route,
        clock: Clock,
        timeout: float,
        max_retries: int,
        tracer: CallTracer | None = None,
    ) -> None:
        self.lb = lb
        self.route = route
        self.clock = clock
        self.timeout = timeout  # each try's: the config's request_timeout
        self.max_retries = max_retries
        self.tracer = tracer  # None: no spans, nothing else done

    async def run(
        self,
        request: Request,
        fn: Callable[[RouteResult], Awaitable[T]],
        policy: CallPolicy,
        hold: bool = False,
        discard: Callable[[T], Awaitable[None]] | None = None,
    ) -> Held[T]:
        """Route and await ``fn(result)``, retrying what ``policy`` says on untried backends.

        A returned value ends the call unless ``retry_on`` wants another try: then it is kept until
        the next try is routed (and handed to ``discard``), or returned if none can be. ``hold``
        leaves the last try's slot held for the caller to complete. The request is admitted."""
        lb = self.lb
        tried: list[Backend] = []
        last: Outcome | None = None
        kept: Held[T] | None = None  # a returned answer that a retry may still replace
        retry = 0
        in_budget = False  # this call holds one unit of the retry budget
        try:
            while True:
                try:
                    result = await self.route(request, self.clock.monotonic(), tuple(tried), retry + 1)
                except RoutingError as exc:
                    if kept is not None:
                        return kept  # no other backend: the last answer stands
                    if last is None:
                        raise
                    error = self._exhausted(tried, last, f"no other backend can take the request ({exc})")
                    raise error  # noqa: B904 - its cause is the last try's error, set by _exhausted
                if kept is not None:
                    if discard is not None:
                        await discard(kept.value)
                    kept = None
                tried.append(result.backend)
                tracer = self.tracer
                span = None if tracer is None else tracer.try_begun(result, retry)
                try:
                    value = await self.clock.wait_for(fn(result), self.timeout)
                except asyncio.CancelledError as exc:
                    if tracer is not None:
                        tracer.try_ended(span, exc)
                    lb.abandon_request(result)
                    raise
                except Exception as exc:
                    failed = self._attempt_error(result, exc)
                    if tracer is not None:  # ended first: the judges below are the caller's code
                        tracer.try_ended(span, failed)
                    last = self._judge(result, policy, error=failed)
                    again = self._retries(last, policy, retry, len(tried))
                else:
                    if tracer is not None:
                        tracer.try_ended(span, None)
                    last = self._judge(result, policy, value=value)
                    again = self._retries(last, policy, retry, len(tried))
                    if not again:
                        if not hold:
                            lb.complete_now(result, success=not last.failure)
                        return Held(value, result, last, hold)
                    kept = Held(value, result, last, False)
                lb.complete_now(result, success=not last.failure)
                if in_budget:
                    lb.end_retry()
                    in_budget = False
                if not again:
                    break
                retry += 1
                lb.begin_retry(budgeted=not last.never_sent)
                in_budget = not last.never_sent
                log_event(
                    "request_retry",
                    logging.DEBUG,
                    request_id=result.request_id,
                    retry=retry,
                    failed_backend=result.backend_id,
                    error=repr(last.error) if last.error is not None else f"status {last.status}",
                )
                await self.clock.sleep(lb.backoff(retry))
        except BaseException:
            if kept is not None and discard is not None:
                await discard(kept.value)  # an answer that will not be returned: its connection closed
            raise
        finally:
            if in_budget:
                lb.end_retry()
        assert last is not None and last.error is not None
        if not last.failure:
            raise last.error  # the caller's own exception, unchanged
        left = len(tried) < lb.backend_count
        raise self._exhausted(tried, last, "" if left else "no untried backend is left")

    def _judge(
        self, result: RouteResult, policy: CallPolicy, *, value: object = None, error: BaseException | None = None
    ) -> Outcome:
        latency_ms = (self.clock.monotonic() - result.started_at) * 1000.0
        outcome = Outcome(result.backend_id, result.attempt, latency_ms, value=value, error=error)
        outcome.failure = bool(policy.is_failure(outcome))
        return outcome

    def _retries(self, outcome: Outcome, policy: CallPolicy, retry: int, tried: int) -> bool:
        """Whether ``outcome`` goes to another backend: ``retry_on`` wants it, a retry is left, an
        untried backend exists, and the backend provably never received the request or it is
        idempotent and the retry budget allows it."""
        if retry >= self.max_retries or tried >= self.lb.backend_count or not policy.retry_on(outcome):
            return False
        return outcome.never_sent or (policy.idempotent and self.lb.retry_allowed())

    def _exhausted(self, tried: list[Backend], last: Outcome, why: str) -> RoutingError:
        """The error of a call whose tries all failed, caused by the last try's error."""
        cause = last.error
        what = f"{last.error!r}" if cause is not None else f"status {last.status}"
        tries = f"{len(tried)} {'try' if len(tried) == 1 else 'tries'}"
        if why:
            error = RoutingError(f"{tries} failed and {why}; last error: {what}")
        else:
            error = RoutingError(f"request failed after {tries}: {what}")
        # Not ``raise ... from``: compiled by mypyc, a coroutine loses the cause that way.
        error.__cause__ = cause
        return error

    def _attempt_error(self, result: RouteResult, exc: Exception) -> Exception:
        if not isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or isinstance(exc, LoadBalancingError):
            return exc
        error = RequestTimeoutError(f"backend {result.backend_id} did not answer within {self.timeout:g} s")
        error.__cause__ = exc
        return error


class Acquired:
    """The async context manager of :meth:`LoadBalancingModule.acquire` (a class, not a generator,
    so that the module compiles with mypyc). The block's exception is judged by ``is_failure``."""

    __slots__ = ("_lb", "_request", "_is_failure", "_clock", "_result")

    def __init__(self, lb: Balancer, request: Request, is_failure: IsFailure, clock: Clock) -> None:
        self._lb = lb
        self._request = request
        self._is_failure = is_failure
        self._clock = clock
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
        if exc is None:
            self._lb.complete_now(result, success=True)
        elif isinstance(exc, asyncio.CancelledError):
            self._lb.abandon_request(result)
        else:
            latency_ms = (self._clock.monotonic() - result.started_at) * 1000.0
            outcome = Outcome(result.backend_id, result.attempt, latency_ms, error=exc)
            self._lb.complete_now(result, success=not self._is_failure(outcome))
