"""One request/response exchange of the proxy: route, forward, stream back, retry.

An :class:`Exchange` moves through the phases of :mod:`.phase`, one method per
transition. There is one path: the common request (routed at once, a pooled
connection) takes the same transitions as any other, only without waiting; a
transition that must wait (a free slot, a new connection, a back-off) runs one
small task that makes the next transition when it is done. A retry is the
transition ``SETTLING -> BACKOFF -> ROUTING``, not a second code path. What the
backend's response does (head, body, end, loss, timeouts) is in :mod:`.relay`,
the base class.

The exchange reads and changes its client connection only through the
:class:`~.relay.ClientSide` methods, and the library only through its data-plane
surface (``route_now``, ``route_request``, ``route_retry``, ``complete_now``,
``abandon_request``, ``backoff``, ``retry_allowed``, ``begin_retry``, ``end_retry``,
``backend_count``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from .._log import log_event
from ..config import Request
from ..exceptions import BackendUnavailableError, RateLimitExceededError, RequestTimeoutError
from ..route import RouteResult
from .attempt import CLIENT_GONE, Failure, connect_failure
from .filters import Answer, FilterError, FilterRequest, filter_request
from .flow import BY_BACKLOG
from .http import HttpError, RequestInfo
from .logformat import Entry
from .outbound import backend_head, for_route, traced_head
from .phase import ON_UPSTREAM, Phase
from .relay import ClientSide, Relay
from .routing import redirect_answer
from .upstream import UpstreamConnection

if TYPE_CHECKING:
    from ..backend import Backend
    from .accesslog import AccessLog
    from .context import Pool, ProxyContext
    from .routing import Route
    from .tracing import RequestTrace

RETAIN_LIMIT: Final = 64 * 1024  # request body bytes kept to allow a retry
BACKLOG_LIMIT: Final = 64 * 1024  # request body bytes buffered while no upstream connection takes them
# A request body is read up to this size before a backend is chosen (as NGINX's request buffering
# and HAProxy's http-buffer-request do): a slow client then holds no backend slot, a small body
# reaches the backend whole or not at all (bad chunked framing is refused before any byte goes
# out), and a backend answering early cannot race the body. Larger bodies stream from there on.
BUFFER_LIMIT: Final = BACKLOG_LIMIT
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class Exchange(Relay):
    """One request: its routing, its tries on backends, and its answer."""

    __slots__ = (
        "request",
        "started",
        "task",
        "earlier",
        "attempts",
        "retries",
        "budgeted",
        "first_attempt_hr",
        "connected",
    )

    def __init__(
        self,
        conn: ClientSide,
        ctx: ProxyContext,
        pool: Pool,
        rule: Route | None,
        info: RequestInfo,
        request: Request,
        request_id: str | None,
        rid_seq: int,
        prefer: str | None,
        cookie: bool,
        now: float,
    ) -> None:
        """``request_id``: the client's; when None, the proxy's, number ``rid_seq``; ``now``: the
        loop's time when the head was complete."""
        super().__init__(conn, ctx, pool, rule, info, request_id, rid_seq, now + pool.request_timeout, prefer, cookie)
        self.request = request
        # On the module's clock, as every duration (relay.py). A filter may move the request to
        # another pool, whose module reads the same clock: the proxy builds each with SystemClock.
        self.started = self.lb.clock.monotonic()
        self.task: asyncio.Task[None] | None = None  # the step that waits, in ROUTING, CONNECTING or BACKOFF
        # The backends of the tries before the current one (``route``'s): made at the first retry,
        # so that a request tried once allocates no list for it.
        self.earlier: list[Backend] | None = None
        self.attempts = 0
        self.retries = 0
        self.budgeted = False  # this retry holds a unit of the library's retry budget
        self.first_attempt_hr: float | None = None
        self.connected: tuple[int, float] | None = None  # (the try, ms its new connection took to connect)

    # -- QUEUED -> BUFFERING | ROUTING ------------------------------------------------------------

    def start(self, now: float) -> None:
        """The exchange is first in line on its connection (``now``: the loop's time): run its
        route's redirect or filters, read its body, or route it now."""
        if self.phase is not Phase.QUEUED:
            return
        rule = self.rule
        if rule is not None and (rule.redirect is not None or rule.request_filters):
            self._filter(rule, now)
            return
        self._begin(now)

    def _begin(self, now: float) -> None:
        if self.body_done:
            self._route(now)
            return
        # What the same read brings of the body comes first: then a "100 Continue" is only sent to
        # a client that really waits for it.
        self.phase = Phase.BUFFERING
        self.loop.call_soon(self._wait_for_body)

    def _wait_for_body(self) -> None:
        if self.phase is not Phase.BUFFERING:
            return
        if self.body_done or self.backlog_bytes >= BUFFER_LIMIT:
            self._route(self.loop.time())
        elif self.info.expect_continue and self.info.http11:
            self.conn.write(CONTINUE)  # the client waits for this before it sends the body

    def _body_buffered(self) -> None:
        """The whole body, or :data:`BUFFER_LIMIT` bytes of it, are in (a client that stalls before
        meets the connection's body timeout, 408)."""
        if self.phase is Phase.BUFFERING:
            self._route(self.loop.time())

    # -- QUEUED -> FILTERING -> BUFFERING | ROUTING | DONE -------------------------------------------

    def _filter(self, rule: Route, now: float) -> None:
        """A redirect route answers now; a route's request filters run in order, each on what the
        ones before it left (the first that awaits continues in a task)."""
        if rule.redirect is not None:
            redirect = rule.redirect
            self._send_answer(
                redirect.status, redirect_answer(redirect, self.info, self.request_id, close=self._closes())
            )
            self._finish()
            return
        self.phase = Phase.FILTERING
        view = filter_request(self.info, self.request.client_ip, self.request_id, rule.name, self.pool.name)
        self._run_filters(rule, view, 0, now)

    def _run_filters(self, rule: Route, view: FilterRequest, first: int, now: float) -> None:
        filters = rule.request_filters
        for i in range(first, len(filters)):
            hook = filters[i].on_request
            assert hook is not None
            try:
                result: object = hook(view)  # object: the compiled build would check the type itself
            except Exception as exc:
                self._filter_failed(filters[i].name, exc)
                return
            if result is None:
                continue  # the usual answer: go on (checked first: isawaitable is an ABC check)
            if inspect.isawaitable(result):
                self._spawn(self._filter_later, rule, view, i, result)
                return
            if self._filtered(filters[i].name, view, result):
                return
        self._filters_done(view, now)

    async def _filter_later(self, rule: Route, view: FilterRequest, i: int, pending: Awaitable[object]) -> None:
        name = rule.request_filters[i].name
        try:
            result = await asyncio.wait_for(pending, max(0.0, self.deadline - self.loop.time()))
        except asyncio.TimeoutError:
            self._filter_failed(name, TimeoutError("no result within the request timeout"))
            return
        except Exception as exc:
            self._filter_failed(name, exc)
            return
        if not self._filtered(name, view, result):
            self._run_filters(rule, view, i + 1, self.loop.time())

    def _filtered(self, name: str, view: FilterRequest, result: object) -> bool:
        """Act on one filter's result; True if it ended the exchange (an answer, or a failure)."""
        if result is None:
            return False
        if not isinstance(result, Answer):
            self._filter_failed(name, TypeError(f"returned {type(result).__name__}, not an Answer or None"))
            return True
        try:
            answer = result.encode(self.request_id, close=self._closes())
        except FilterError as exc:
            self._filter_failed(name, exc)
            return True
        self._send_answer(result.status, answer)
        self._finish()
        return True

    def _filters_done(self, view: FilterRequest, now: float) -> None:
        if view.headers.changed:
            self.info.raw_head = None  # the head for backends is written anew from info.headers
        if view.pool != self.pool.name:
            pool = self.ctx.pools.get(view.pool) if isinstance(view.pool, str) else None
            if pool is None:
                self._filter_failed("(pool)", ValueError(f"a filter chose {view.pool!r}, which is not a pool"))
                return
            self.pool, self.lb, self.upstreams = pool, pool.lb, pool.upstream
            self.cookie, self.prefer = pool.binding(self.info, self.request.session_id)
        self._begin(now)

    def _filter_failed(self, name: str, exc: BaseException) -> None:
        """A filter raised or misbehaved: 500 with the request id, logged, counted; no backend hears of it."""
        self.note_filter_error(name, exc)
        if self.phase is Phase.DONE:
            return
        self._answer(HttpError(500, f"filter {name} failed"))
        self._finish()

    def _closes(self) -> bool:
        return not self.body_done or self.conn.closing or not self.keep_alive

    def _send_answer(self, status: int, answer: bytes) -> None:
        """Send a complete answer of the proxy's own (a redirect, a filter's)."""
        self.status = status
        self.responded = self.response_done = True
        if self._closes():
            self.keep_alive = False
        self._write_answer(answer)

    # -- ROUTING -> CONNECTING | SENT ---------------------------------------------------------------

    def _route(self, now: float) -> None:
        """Route now (``now``: the loop's time), or in a task when the library must wait. Entered from
        callbacks (the reader's, the loop's): a fault of the proxy's ends the exchange with a 500,
        never the caller."""
        self.phase = Phase.ROUTING
        try:
            route = self.lb.route_now(self.request, self.prefer)
            if route is None:  # a limit, a session or a queue to consult: a task waits for the library
                self._spawn(self._route_later)
            else:
                self._routed(route, now)
        except Exception as exc:
            self._internal_error(exc)

    async def _route_later(self) -> None:
        try:
            route = await self.lb.route_request(self.request, self.prefer)
        except RateLimitExceededError as exc:
            self._answer(HttpError(429, "rate limit exceeded", retry_after=max(1, math.ceil(exc.retry_after))))
        except RequestTimeoutError:
            self._answer(HttpError(504, "no backend could take the request in time"))
        except BackendUnavailableError as exc:
            self._answer(HttpError(503, f"no backend available: {exc}", retry_after=1))
        else:
            self._routed(route, self.loop.time())
            return
        self._finish()

    def _routed(self, route: RouteResult, now: float) -> None:
        previous = self.route
        if previous is not None:  # a retry
            if self.earlier is None:
                self.earlier = [previous.backend]
            else:
                self.earlier.append(previous.backend)
        self.route = route
        self.attempts += 1
        self._connect(route, now, fresh=False)

    def _tried(self) -> list[Backend]:
        """The backends tried so far, the current try's included."""
        tried = [] if self.earlier is None else list(self.earlier)
        if self.route is not None:
            tried.append(self.route.backend)
        return tried

    def _connect(self, route: RouteResult, now: float, *, fresh: bool) -> None:
        """A pooled connection to ``route``'s backend (unless ``fresh``), else a new one; ``now``:
        the loop's time, as the caller read it."""
        self.attempt_at = now
        # A new try starts as the library routed it; the same try on a fresh connection, now.
        hr = self.attempt_hr = self.lb.clock.monotonic() if fresh else route.started_at
        if self.first_attempt_hr is None:
            self.first_attempt_hr = hr
        self.head_ms = None
        upstreams = self.upstreams
        key = route.backend_id
        preamble = None
        if upstreams.proxy_protocol:
            # A connection that began with a PROXY header speaks for this client only: it is
            # pooled under the backend and the header, and reused for no one else.
            preamble = self.conn.proxy_header(upstreams.proxy_protocol)
            key = key + "|" + preamble.decode("latin-1")
        up = None if fresh else upstreams.take(key, now)
        if up is not None:
            self._send(route, up)
            return
        self.phase = Phase.CONNECTING
        timeout = max(0.0, min(self.ctx.connect_timeout, self.deadline - now))
        self._spawn(self._connect_later, route, key, preamble, timeout)

    async def _connect_later(self, route: RouteResult, key: str, preamble: bytes | None, timeout: float) -> None:
        pool = self.upstreams
        begun = self.lb.clock.monotonic()
        try:
            up = await pool.connect(key, route.host, route.port, timeout, preamble)
        except (OSError, asyncio.TimeoutError) as exc:
            failure = connect_failure(self.ctx, route, exc, timeout)
            failure.retry = failure.backend_fault and self.pool.retry_connect and self._may_retry(never_sent=True)
            self.phase = Phase.SETTLING
            self._settle(failure)
            return
        if self.phase is not Phase.CONNECTING or self.conn.lost:  # the client went as it connected
            pool.release(up, reusable=True)
            return
        self.connected = (self.attempts, (self.lb.clock.monotonic() - begun) * 1000.0)
        self._send(route, up)

    # -- SENT -----------------------------------------------------------------------------------------

    def _send(self, route: RouteResult, up: UpstreamConnection) -> None:
        """Send the request on ``up``; the upstream's callbacks bring the outcome."""
        self.phase = Phase.SENT
        self.upstream = up
        up.begin(self, head_request=self.info.method == b"HEAD")
        self._send_request(up, route)
        if self.conn.write_paused:
            up.pause_reading()
        when = self.deadline if self.body_done else self.attempt_at + self.pool.request_timeout
        self.timer_at = when
        self.conn.watch(when)

    def _send_request(self, up: UpstreamConnection, route: RouteResult) -> None:
        head = self.backend_head
        if head is None:
            conn = self.conn
            head = self.backend_head = backend_head(
                self.ctx,
                self.info,
                conn.peer,
                conn.forwarded_lines(),
                self.request_id_line(),
                conn.scheme,
                conn.client_cert,
            )
        head = for_route(head, self.info, route)
        info = self.info
        if info.websocket:  # bytes the client sent early wait for the 101
            up.write(head)
            return
        if not self.backlog and not info.chunked:
            if self.body_done:  # the whole request: with the batch at the end of the loop's turn
                up.write_later(head)
            else:
                up.write(head)
            self.conn.resume_reading(BY_BACKLOG)
            return
        parts = [head]
        if info.chunked:
            for piece in self.backlog:
                parts += (b"%x\r\n" % len(piece), piece, b"\r\n")
            if self.body_done:
                parts.append(b"0\r\n\r\n")
        else:
            parts.extend(self.backlog)
        up.writelines(parts)
        self.backlog = []
        self.backlog_bytes = 0
        self.conn.resume_reading(BY_BACKLOG)

    # -- SETTLING: the one place a try's outcome is acted on -----------------------------------------

    def _settle(self, outcome: Failure | None, now: float | None = None) -> None:
        """SETTLING -> DONE | CONNECTING | BACKOFF. ``now``: the loop's time, when just read."""
        if self.phase is not Phase.SETTLING:
            return
        try:
            failure = self._end_attempt(outcome)
            if failure is None or failure is CLIENT_GONE or self.responded or self.conn.lost:
                self._finish(now)
            elif failure.stale:  # the same try on a fresh connection, with the slot it holds
                assert self.route is not None
                self._connect(self.route, self.loop.time(), fresh=True)
            elif not failure.retry:
                self._answer(self._failure_answer(failure))
                self._finish()
            else:
                self._retry(failure)
        except Exception as exc:
            self._internal_error(exc)

    def _end_attempt(self, failure: Failure | None) -> Failure | None:
        """Release the backend's slot with the try's result: only the backend's own failures count."""
        self.timer_at = None
        if failure is not None and failure.stale:
            return failure  # the try goes on, on a fresh connection, with its slot and its budget unit
        self._release_budget()
        route = self.route
        if route is None:
            return failure
        if failure is None:  # a status above 599 is no HTTP: a failure, whatever failure_statuses says
            status = self.status
            success = status not in self.pool.failure_statuses and status < 600
        elif failure.answered:  # a status dropped for a retry: the backend's failure only if listed
            success = not failure.backend_fault
        elif not failure.backend_fault:
            self.lb.abandon_request(route)
            return failure
        else:
            success = False
        latency = self.head_ms if self.head_ms is not None else (self.lb.clock.monotonic() - self.attempt_hr) * 1000.0
        self.lb.complete_now(route, success=success, latency_ms=latency)
        return failure

    # -- BACKOFF -> ROUTING ----------------------------------------------------------------------------

    def _retry(self, failure: Failure) -> None:
        self.retries += 1
        self.budgeted = not failure.never_sent  # a backend may have done work: counted against the budget
        self.lb.begin_retry(budgeted=self.budgeted)
        route = self.route
        log_event(
            "proxy_retry",
            logging.DEBUG,
            request_id=self.request_id,
            retry=self.retries,
            failed_backend=None if route is None else route.backend_id,
            error=failure.message,
        )
        self.phase = Phase.BACKOFF
        delay = min(self.lb.backoff(self.retries), max(0.0, self.deadline - self.loop.time()))
        self._spawn(self._retry_later, delay, failure)

    async def _retry_later(self, delay: float, failure: Failure) -> None:
        lb = self.lb
        await lb.clock.sleep(delay)
        self.phase = Phase.ROUTING
        try:
            route = await lb.route_retry(self.request, self._tried(), attempt=self.attempts + 1, started=self.started)
        except RequestTimeoutError:
            self._answer(HttpError(504, "no backend could take the request in time"))
        except BackendUnavailableError:
            self._answer(self._failure_answer(failure))
        else:
            self._routed(route, self.loop.time())
            return
        self._finish()

    def _release_budget(self) -> None:
        """A retry's unit of the retry budget goes back once its try has an outcome, or the exchange ends."""
        if self.budgeted:
            self.budgeted = False
            self.lb.end_retry()

    # -- the steps that wait ------------------------------------------------------------------------

    def _spawn(self, step: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Run ``step(*args)`` in a task. The coroutine is made when the task starts: a task
        cancelled before that (the client went at once) leaves no coroutine never awaited."""
        self.task = self.loop.create_task(self._run(step, *args))

    async def _run(self, step: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        try:
            await step(*args)
        except asyncio.CancelledError:
            self._stop()  # cancelled from outside (the loop closing): the exchange ends here
            raise
        except Exception as exc:
            self._internal_error(exc)

    def _internal_error(self, exc: Exception) -> None:
        log_event("proxy_internal_error", logging.ERROR, request_id=self.request_id, error=repr(exc))
        if self.phase is Phase.DONE:
            return
        self._abort_attempt()  # its slot is released by _finish, without an outcome
        if not self.responded:
            self.keep_alive = False
            self._answer(HttpError(500, "internal error of the proxy"))
        else:
            self.conn.abort()
        self._finish()

    # -- the client side (called by ClientConnection) ---------------------------------------------

    def client_body(self, data: bytes) -> None:
        size = len(data)
        total = self.body_bytes = self.body_bytes + size
        limit = self.ctx.max_body_bytes
        if limit and total > limit:
            raise HttpError(413, f"request body larger than {limit} bytes")
        retained = self.retained
        if retained is not None:
            if total <= RETAIN_LIMIT:
                retained.append(data)
            else:
                self.retained = None
        if self.response_done or self.body_refused:
            return  # answered already: the rest of the body is dropped
        up = self.upstream
        if up is not None and self.phase is not Phase.TUNNEL:  # the head went out: the body follows it
            if self.info.chunked:
                up.writelines([b"%x\r\n" % size, data, b"\r\n"])
            else:
                up.write(data)
            return
        self.backlog.append(data)
        self.backlog_bytes += size
        if self.backlog_bytes >= BUFFER_LIMIT:
            self._body_buffered()
            if self.backlog_bytes > BACKLOG_LIMIT:
                self.conn.pause_reading(BY_BACKLOG)

    def client_done(self) -> None:
        self.body_done = True
        if not self.info.has_body:
            return
        self.deadline = max(self.deadline, self.loop.time() + self.pool.request_timeout)
        if self.upstream is not None and self.info.chunked and not self.body_refused:
            self.upstream.write(b"0\r\n\r\n")
        self._body_buffered()

    def early_data(self, data: bytes) -> None:
        """Bytes after a WebSocket upgrade request, before the backend's 101."""
        if self.phase is Phase.TUNNEL and self.upstream is not None:
            self.upstream.write(data)
            return
        self.backlog.append(data)
        self.backlog_bytes += len(data)
        if self.backlog_bytes > BACKLOG_LIMIT:
            self.conn.pause_reading(BY_BACKLOG)

    def client_failed(self, error: HttpError) -> None:
        """The client's request went wrong after the exchange started (body too large, stalled, malformed)."""
        self.keep_alive = False
        if self.phase is Phase.DONE:
            return
        if not self.responded:
            self._answer(error)
        else:
            self.conn.abort()
        self._stop()

    def client_lost(self) -> None:
        if self.phase is Phase.DONE:
            return
        if not self.responded:
            self.status = 499  # as NGINX logs a request whose client went away
        self.keep_alive = False
        self._stop()

    def discard(self) -> None:
        """The connection closes before this queued exchange's turn: it ends without a word."""
        self.phase = Phase.DONE

    def _stop(self) -> None:
        """The client ended the exchange: whatever it was doing stops, and no backend is blamed."""
        phase = self.phase
        if phase in ON_UPSTREAM:
            self._abort_attempt()
            self._resolve(None if phase is Phase.TUNNEL else CLIENT_GONE)  # a tunnel ends when either side closes
        elif phase is not Phase.SETTLING and phase is not Phase.DONE:  # nothing out: it ends now
            task = self.task
            if task is not None and not task.done():
                task.cancel()
            self._finish()  # releases a slot still held, without an outcome

    # -- decisions ----------------------------------------------------------------------------------

    def _may_retry(self, *, never_sent: bool) -> bool:
        """Whether a failed try may go to another backend: never once the client has part of an
        answer; a request a backend may have received only if it is idempotent, its body is still
        held and the library's retry budget allows it."""
        if self.responded or self.retries >= self.pool.max_retries or self.conn.lost or self.phase is Phase.DONE:
            return False
        if len(self._tried()) >= self.lb.backend_count:
            return False  # every backend was tried: the last answer stands
        if not never_sent:
            if not self.info.idempotent or self.retained is None:
                return False
            if not self.lb.retry_allowed():
                return False
        return self.loop.time() < self.deadline

    def _failure_answer(self, failure: Failure) -> HttpError:
        """The proxy's answer when a try's failure ends the request: 504 once the deadline has run
        out (the client waited ``request_timeout`` for nothing), else the failure's own status."""
        if failure.status == 502 and self.loop.time() >= self.deadline:
            timeout = self.pool.request_timeout
            return HttpError(504, f"no backend answered within {timeout:g} s ({failure.message})")
        return HttpError(failure.status, failure.message, retry_after=1 if failure.status == 503 else None)

    # -- the end --------------------------------------------------------------------------------------

    def _finish(self, now: float | None = None) -> None:
        """The exchange ends. ``now``: ``data_at``, the loop's time of the upstream read being
        handled, whose twin on the module's clock is ``data_hr``; None: both are read."""
        if self.phase is Phase.DONE:
            return
        self.phase = Phase.DONE
        self.timer_at = None
        self._release_budget()
        ctx = self.ctx
        if now is None:
            now = self.loop.time()
            end = self.lb.clock.monotonic()
        else:
            end = self.data_hr
        route = self.route
        if route is not None:  # a slot still held (a stale try the client left): released, nobody blamed
            self.lb.abandon_request(route)
        access = ctx.access
        if access is not None and access.enabled():  # the entry is made only when logging
            self._log(access, route, end)
        self.lb.request_stats.record(
            "none" if route is None else route.backend_id, self.status or 499, end - self.started
        )
        self.conn.exchange_done(self, now)

    def _log(self, access: AccessLog, route: RouteResult | None, end: float) -> None:
        """The exchange's access log entry (``end``: on the module's clock)."""
        info = self.info
        entry = Entry(self.request_id, self.request.client_ip, info.method, info.target, self.status or 499)
        entry.http11 = info.http11
        entry.backend_id = None if route is None else route.backend_id
        entry.attempts = self.attempts
        first = self.first_attempt_hr
        upstream_end = self.upstream_end
        entry.upstream_ms = None if first is None or upstream_end is None else (upstream_end - first) * 1000.0
        entry.total_ms = (end - self.started) * 1000.0
        head_ms = entry.header_ms = self.head_ms
        connected = self.connected
        if connected is not None and connected[0] == self.attempts:  # the last try's new connection
            entry.connect_ms = connected[1]
        elif head_ms is not None:  # a pooled connection answered
            entry.connect_ms = 0.0
        entry.request_bytes = self.body_bytes
        entry.response_bytes = self.frame_sent + self.body_sent
        entry.body_bytes = self.body_sent
        entry.host = info.host
        entry.headers = info.headers
        entry.tls_version = self.conn.tls_version()
        entry.route = None if self.rule is None else self.rule.name
        entry.pool = self.pool.name
        access.emit(entry)


class TracedExchange(Exchange):
    """An exchange of a proxy with ``tracing:`` (``ctx.tracer``): the same phases, with a server span
    for the request and a client span per try, whose context goes to the backend as ``traceparent``.
    A separate class, so that an exchange without tracing checks nothing for it. It overrides as
    few methods as it can (``_settle`` is overridden already): mypyc calls an overridden method
    through the class's vtable, one that is not directly."""

    __slots__ = ("trace", "plain_head")

    def __init__(
        self,
        conn: ClientSide,
        ctx: ProxyContext,
        pool: Pool,
        rule: Route | None,
        info: RequestInfo,
        request: Request,
        request_id: str | None,
        rid_seq: int,
        prefer: str | None,
        cookie: bool,
        now: float,
    ) -> None:
        super().__init__(conn, ctx, pool, rule, info, request, request_id, rid_seq, prefer, cookie, now)
        tracer = ctx.tracer
        assert tracer is not None
        self.trace: RequestTrace | None = tracer.request(
            info.method, info.target, info.headers, conn.scheme, conn.peer, request.client_ip
        )
        self.plain_head: bytes | None = None  # the head without trace lines; each try gets its own

    def _send_request(self, up: UpstreamConnection, route: RouteResult) -> None:
        trace = self.trace
        if trace is not None:
            if trace.attempt is None:  # a new try (the same try on a fresh connection keeps its span)
                self._begin_attempt(trace, route)
            head = self.plain_head
            if head is None:
                conn = self.conn
                head = self.plain_head = backend_head(
                    self.ctx,
                    self.info,
                    conn.peer,
                    conn.forwarded_lines(),
                    self.request_id_line(),
                    conn.scheme,
                    conn.client_cert,
                )
            self.backend_head = traced_head(head, trace.head_lines())
        super()._send_request(up, route)

    def _settle(self, outcome: Failure | None, now: float | None = None) -> None:
        trace = self.trace
        if trace is not None and self.phase is Phase.SETTLING and (outcome is None or not outcome.stale):
            if outcome is None:
                trace.attempt_ended(self.status, None)
            elif outcome is CLIENT_GONE:
                trace.attempt_abandoned(outcome.message)
            else:
                route = self.route
                if trace.attempt is None and route is not None:  # it failed before its request went (a connect)
                    self._begin_attempt(trace, route)
                trace.attempt_ended(None, outcome.message)
        super()._settle(outcome, now)

    def _begin_attempt(self, trace: RequestTrace, route: RouteResult) -> None:
        """The try's span, begun when the try did (``attempt_hr``, on the module's clock)."""
        started_ns = time.time_ns() - int((self.lb.clock.monotonic() - self.attempt_hr) * 1e9)
        trace.attempt_begun(route.backend_id, route.host, route.port, self.retries, started_ns)

    def _finish(self, now: float | None = None) -> None:
        trace = self.trace
        if trace is not None and self.phase is not Phase.DONE:  # ended before the next pipelined request starts
            self.trace = None
            rule = self.rule
            trace.end(self.status or 499, self.pool.name, None if rule is None else rule.name, self.attempts)
        super()._finish(now)
