"""One request on a client connection: route, forward, stream back, retry.

Split from ``proxy.py``: the client protocol there parses requests and hands
each to a :class:`RequestCycle`, which drives the attempts against backends.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Final

from .._log import log_event
from ..config import Request
from ..exceptions import BackendUnavailableError, RateLimitExceededError, RequestTimeoutError
from ..health import LOCAL_ERRNOS
from ..models import RouteResult
from .http import (
    HttpError,
    RequestInfo,
    ResponseInfo,
    error_response,
    request_framing,
    request_head,
    response_head,
)
from .upstream import UpstreamConnection, UpstreamSink

if TYPE_CHECKING:
    from ..backend import Backend
    from .proxy import ClientConnection


RETAIN_LIMIT: Final = 64 * 1024  # request body bytes kept to allow a retry
BACKLOG_LIMIT: Final = 64 * 1024  # request body bytes buffered while no upstream connection takes them
# A request body is read up to this size before a backend is chosen (as NGINX's request buffering
# and HAProxy's http-buffer-request do): a slow client then holds no backend slot, a small body
# reaches the backend whole or not at all (bad chunked framing is refused before any byte goes
# out), and a backend answering early cannot race the body. Larger bodies stream from there on.
BUFFER_LIMIT: Final = BACKLOG_LIMIT
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# Why reading from a client is paused (bits).
_BY_UPSTREAM: Final = 1  # the upstream socket's write buffer is full
_BY_BACKLOG: Final = 2  # body is waiting for an upstream connection
_BY_PIPELINE: Final = 4  # a complete request waits behind the one being answered


class _Failure:
    """Why one try did not deliver a response; ``retry`` says whether another backend may be tried.

    ``backend_fault`` says whether the backend's breaker and statistics hear of it: only a
    failure of the backend's own does (it refused or timed out a connect, closed or reset the
    connection once it had the request, answered 5xx or garbage, or stalled); what the client
    or the proxy's own host did never does. ``stale``: a connection taken from the pool was
    already closed by the backend (its keep-alive timeout), which is nobody's failure: the same
    try goes again on a fresh connection."""

    __slots__ = ("status", "message", "retry", "never_sent", "backend_fault", "stale")

    def __init__(self, status: int, message: str, *, retry: bool = False, never_sent: bool = False,
                 backend_fault: bool = True, stale: bool = False) -> None:  # fmt: skip
        self.status = status
        self.message = message
        self.retry = retry
        self.never_sent = never_sent
        self.backend_fault = backend_fault
        self.stale = stale


_CLIENT_GONE: Final = _Failure(499, "the client went away", backend_fault=False)


class _Eager:
    """``RequestCycle.task`` of a cycle that runs without a task (see ``RequestCycle.start``)."""

    __slots__ = ()

    def done(self) -> bool:
        return True

    def cancel(self) -> bool:
        return False


_EAGER: Final = _Eager()


class RequestCycle(UpstreamSink):
    """One request: its routing, its tries on backends, and its answer."""

    __slots__ = ("conn", "server", "info", "request", "_request_id", "_rid_seq", "prefer", "cookie", "started",
                 "deadline", "keep_alive", "body_done", "body_bytes", "retained", "backlog", "backlog_bytes",
                 "upstream", "sending", "route", "tried", "attempts", "retries", "task", "running", "waiter",
                 "awaiting", "batching", "deferred", "outcome", "timer_at", "attempt_at", "first_attempt_at",
                 "upstream_end", "head_ms", "status", "response_started", "response_done", "out_chunked",
                 "until_close", "tunnel", "blocked_since", "data_at", "finished", "_head", "_rid_line",
                 "body_wait", "continued", "body_refused")  # fmt: skip

    def __init__(self, conn: ClientConnection, info: RequestInfo, request: Request, request_id: str | None,
                 rid_seq: int, prefer: str | None, cookie: bool, now: float) -> None:  # fmt: skip
        """``request_id``: the client's; when None, the proxy's, number ``rid_seq``."""
        server = conn.server
        self.conn = conn
        self.server = server
        self.info = info
        self.request = request
        self._request_id = request_id
        self._rid_seq = rid_seq
        self.prefer = prefer  # the backend the client's affinity cookie names (verified)
        self.cookie = cookie  # sticky by cookie: the answer binds the client to the backend that gave it
        self.started = now  # the loop's time when the head was complete
        self.deadline = self.started + server.request_timeout
        self.keep_alive = info.keep_alive
        self.body_done = not info.has_body
        self.body_bytes = 0
        self.retained: list[bytes] | None = []  # the body so far, while it is small enough to replay
        self.backlog: list[bytes] = []  # body not yet sent on the current try (or WebSocket bytes)
        self.backlog_bytes = 0
        self.upstream: UpstreamConnection | None = None
        self.sending = False  # the head went out on self.upstream: body pieces follow it directly
        self.route: RouteResult | None = None
        self.tried: list[Backend] = []
        self.attempts = 0
        self.retries = 0
        self.task: asyncio.Task[None] | _Eager | None = None
        self.running = False
        self.waiter: asyncio.Future[_Failure | None] | None = None  # the task's try, while it awaits
        self.awaiting = False  # a try is out, its outcome not yet known
        self.batching = False  # inside the upstream's data_received (see upstream_batch)
        self.deferred = False  # an eager try's outcome waits for the end of the batch
        self.outcome: _Failure | None = None
        self.timer_at: float | None = None  # when _on_timer is due (the connection's timer calls it)
        self.attempt_at = 0.0
        self.first_attempt_at: float | None = None
        self.upstream_end: float | None = None
        self.head_ms: float | None = None
        self.status = 0
        self.response_started = False
        self.response_done = False
        self.out_chunked = False
        self.until_close = False
        self.tunnel = False
        self.blocked_since: float | None = None
        self.data_at = 0.0
        self.finished = False
        self._head: bytes | None = None
        self._rid_line: bytes | None = None
        self.body_wait: asyncio.Future[None] | None = None  # the task waits for the body to be buffered
        self.continued = False  # "100 Continue" was sent
        self.body_refused = False  # the backend answered early and closes: the rest of the body is dropped

    def start(self, now: float) -> None:
        """Route and send now (``now``: the loop's time), or hand the request to a task."""
        if self.task is not None or self.finished:
            return
        info = self.info
        if info.has_body or info.websocket:  # the body is read first, as the task would see it
            self.task = self.conn.loop.create_task(self._run())
            return
        # The common case runs without a task: route, take a pooled connection and send, all now; the
        # answer's callbacks end it (_attempt_done). Anything that must wait goes on in a task.
        try:
            route = self.server.lb.route_now(self.request, self.prefer)
            if route is None:
                self.task = self.conn.loop.create_task(self._run())
                return
            backend = route.backend
            assert backend is not None
            self.route = route
            self.attempts += 1
            self.tried.append(backend)
            up = self.server.pool.take(route.backend_id, now)
            if up is None:
                self.task = self.conn.loop.create_task(self._run(route=route))
                return
            self.task = _EAGER
            self.running = True
            self.attempt_at = self.first_attempt_at = now
            self._begin_attempt(route, up, eager=True)
        except Exception as exc:
            self.task = _EAGER
            self.running = True
            self._internal_error(exc)
            self._finish()

    def _attempt_done(self, outcome: _Failure | None, now: float | None = None) -> None:
        """The eager path's answer is in (or it failed): what the task does after ``await waiter``.
        ``now``: the loop's time, when the caller has just read it."""
        try:
            failure = self._end_attempt(outcome)
            if failure is None or failure is _CLIENT_GONE or self.response_started:
                self._finish(now)
            elif not failure.retry and not failure.stale:
                self._answer(self._failure_answer(failure))
                self._finish()
            else:  # a retry waits (backoff) and routes again, or reconnects: in a task
                route = self.route
                self.running = False  # _cancel: a task that has not started yet is only cancelled
                self.task = self.conn.loop.create_task(self._run(route=route, failure=failure))
        except Exception as exc:
            self._internal_error(exc)
            self._finish()

    # -- the task ---------------------------------------------------------------------------

    async def _run(self, *, route: RouteResult | None = None, failure: _Failure | None = None) -> None:
        """The request's task; ``start`` may have routed it (``route``) or tried it once (``failure``)."""
        self.running = True
        try:
            await self._proxy(route, failure)
        except asyncio.CancelledError:  # the client went away while routing, connecting or backing off
            self._abort_attempt()
            if self.route is not None:
                self.server.abandon(self.route)
            raise
        except Exception as exc:
            self._internal_error(exc)
        finally:
            self._finish()

    def _internal_error(self, exc: Exception) -> None:
        log_event("proxy_internal_error", logging.ERROR, request_id=self.request_id, error=repr(exc))
        self._abort_attempt()
        if self.route is not None:
            self.server.abandon(self.route)
        if not self.response_started:
            self.keep_alive = False
            self._answer(HttpError(500, "internal error of the proxy"))
        else:
            self.conn.abort()

    async def _proxy(self, route: RouteResult | None, failure: _Failure | None) -> None:
        server = self.server
        lb = server.lb
        budget = lb.retry_budget
        in_budget = False
        try:
            if route is None and failure is None and self.info.has_body:
                await self._buffer_body()
            while True:
                if route is None:
                    try:
                        if failure is None:
                            route = await lb.route_request(self.request, self.prefer)
                        else:
                            started = lb.clock.monotonic() - (self.conn.loop.time() - self.started)
                            route = await server.route_again(self.request, started, self.tried, self.attempts + 1)
                    except RateLimitExceededError as exc:
                        self._answer(HttpError(429, "rate limit exceeded",
                                               retry_after=max(1, math.ceil(exc.retry_after))))  # fmt: skip
                        return
                    except RequestTimeoutError:
                        self._answer(HttpError(504, "no backend could take the request in time"))
                        return
                    except BackendUnavailableError as exc:
                        if failure is None:
                            self._answer(HttpError(503, f"no backend available: {exc}", retry_after=1))
                        else:
                            self._answer(self._failure_answer(failure))
                        return
                    self.route = route
                    self.attempts += 1
                    self.tried.append(route.backend)
                    failure = await self._attempt(route)
                elif failure is None:  # routed by start(): a connection must be opened
                    failure = await self._attempt(route)
                if failure is not None and failure.stale:  # the same try on a fresh connection
                    failure = await self._attempt(route, fresh=True)
                if in_budget:
                    budget.active -= 1
                    in_budget = False
                if failure is None or failure is _CLIENT_GONE or self.response_started:
                    return
                if not failure.retry:
                    self._answer(self._failure_answer(failure))
                    return
                self.retries += 1
                lb.counters["retries"] += 1
                if not failure.never_sent:  # a backend may have done work: counted against the budget
                    budget.active += 1
                    in_budget = True
                log_event("proxy_retry", logging.DEBUG, request_id=self.request_id, retry=self.retries,
                          failed_backend=route.backend_id, error=failure.message)  # fmt: skip
                delay = min(server.backoff(self.retries), max(0.0, self.deadline - self.conn.loop.time()))
                await lb.clock.sleep(delay)
                route = None
        finally:
            if in_budget:
                budget.active -= 1

    async def _buffer_body(self) -> None:
        """Wait until the whole body, or :data:`BUFFER_LIMIT` bytes of it, have arrived. A client
        that stalls meanwhile meets the connection's body timeout (408), which cancels the task."""
        if self.body_done or self.backlog_bytes >= BUFFER_LIMIT:
            return
        if self.info.expect_continue and self.info.http11 and not self.continued:
            self.continued = True  # the client waits for this before it sends the body
            self.conn.write(CONTINUE)
        wait = self.body_wait = self.conn.loop.create_future()
        try:
            await wait
        finally:
            self.body_wait = None

    def _body_buffered(self) -> None:
        wait = self.body_wait
        if wait is not None and not wait.done():
            wait.set_result(None)

    def _failure_answer(self, failure: _Failure) -> HttpError:
        """The proxy's answer when a try's failure ends the request: 504 once the deadline has run
        out (the client waited ``request_timeout`` for nothing), else the failure's own status."""
        if failure.status == 502 and self.conn.loop.time() >= self.deadline:
            timeout = self.server.request_timeout
            return HttpError(504, f"no backend answered within {timeout:g} s ({failure.message})")
        return HttpError(failure.status, failure.message, retry_after=1 if failure.status == 503 else None)

    async def _attempt(self, route: RouteResult, *, fresh: bool = False) -> _Failure | None:
        """One try on ``route``'s backend: a pooled connection (unless ``fresh``) or a new one."""
        server = self.server
        loop = self.conn.loop
        self.attempt_at = now = loop.time()
        if self.first_attempt_at is None:
            self.first_attempt_at = now
        self.head_ms = None
        up = None if fresh else server.pool.take(route.backend_id, now)
        if up is None:
            timeout = max(0.0, min(server.connect_timeout, self.deadline - now))
            try:
                up = await asyncio.wait_for(server.pool.connect(route.backend_id, route.host, route.port), timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                return self._connect_failed(route, exc, timeout)
        if self.finished or self.conn.lost:
            server.pool.release(up, reusable=True)
            server.abandon(route)
            return _CLIENT_GONE
        waiter = self._begin_attempt(route, up, eager=False)
        assert waiter is not None
        try:
            failure = await waiter
        finally:
            self.waiter = None
            self.awaiting = False
            self.timer_at = None
        return self._end_attempt(failure)

    def _connect_failed(self, route: RouteResult, exc: BaseException, timeout: float) -> _Failure:
        """A connect that failed or timed out; the backend never saw the request, so any method may
        be retried elsewhere."""
        server = self.server
        if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
            # The proxy's own host is out of descriptors or memory: no backend's failure, and
            # another backend would fare no better.
            server.abandon(route)
            server.note_exhaustion("connect", exc)
            return _Failure(503, f"the proxy cannot open a connection now ({exc.strerror})", backend_fault=False)
        if isinstance(exc, asyncio.TimeoutError):
            if timeout < server.connect_timeout:  # cut short by the request's deadline, not the backend's doing
                server.abandon(route)
                return _Failure(504, f"connecting to backend {route.backend_id} did not finish before the deadline",
                                backend_fault=False)  # fmt: skip
            what = f"timed out after {timeout:g} s"
        else:
            what = f"failed ({getattr(exc, 'strerror', None) or exc})"
        server.lb.complete_now(route, success=False, latency_ms=(self.conn.loop.time() - self.attempt_at) * 1000.0)
        return _Failure(502, f"connecting to backend {route.backend_id} {what}", retry=self._may_retry(True),
                        never_sent=True)  # fmt: skip

    def _begin_attempt(self, route: RouteResult, up: UpstreamConnection, *,
                       eager: bool) -> asyncio.Future[_Failure | None] | None:  # fmt: skip
        """Send the request on ``up``. The task awaits the returned future for the try's outcome;
        the eager path has none: :meth:`_resolve` hands the outcome to :meth:`_attempt_done`."""
        loop = self.conn.loop
        if self.first_attempt_at is None:  # the eager path does not pass through _attempt
            self.attempt_at = self.first_attempt_at = loop.time()
            self.head_ms = None
        self.upstream = up
        up.begin(self, head_request=self.info.method == b"HEAD")
        waiter: asyncio.Future[_Failure | None] | None = None if eager else loop.create_future()
        self.waiter = waiter
        self.awaiting = True
        self._send_request(up, route)
        if self.conn.write_paused:
            up.pause_reading()
        when = self.deadline if self.body_done else self.attempt_at + self.server.request_timeout
        self.timer_at = when
        self.conn.watch(when)
        return waiter

    def _end_attempt(self, failure: _Failure | None) -> _Failure | None:
        """After a try's outcome: release the backend's slot with the try's result."""
        self.waiter = None
        self.timer_at = None
        route = self.route
        assert route is not None
        if failure is not None and not failure.backend_fault:
            if not failure.stale:  # a stale connection's try goes on, with the slot it holds
                self.server.abandon(route)
            return failure
        success = failure is None and self.status < 500
        latency = self.head_ms if self.head_ms is not None else (self.conn.loop.time() - self.attempt_at) * 1000.0
        self.server.lb.complete_now(route, success=success, latency_ms=latency)
        return failure

    def _may_retry(self, never_sent: bool) -> bool:
        server = self.server
        lb = server.lb
        if self.response_started or self.retries >= server.max_retries or self.conn.lost or self.finished:
            return False
        if len(self.tried) >= len(lb.router.backends):
            return False  # every backend was tried: the last answer stands
        if not never_sent:
            if not self.info.idempotent or self.retained is None:
                return False
            if not lb.retry_budget.allows(lb.router.in_flight):
                return False
        return self.conn.loop.time() < self.deadline

    def _send_request(self, up: UpstreamConnection, route: RouteResult) -> None:
        head = self._head
        if head is None:
            head = self._head = self._build_head()
        info = self.info
        if info.host is None:  # HTTP/1.0 without Host: HTTP/1.1 upstream needs one, the backend's own
            host = f"[{route.host}]" if ":" in route.host else route.host
            head = head.replace(b"\r\n", b"\r\nHost: %s:%d\r\n" % (host.encode(), route.port), 1)
        self.sending = True
        if info.websocket:  # bytes the client sent early wait for the 101
            up.write(head)
            return
        conn = self.conn
        if not self.backlog and not info.chunked:
            if self.body_done:  # the whole request: with the batch at the end of the loop's turn
                up.write_later(head)
            else:
                up.write(head)
            if conn._paused & _BY_BACKLOG:
                conn.resume(_BY_BACKLOG)
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
        self.conn.resume(_BY_BACKLOG)

    def _build_head(self) -> bytes:
        info = self.info
        conn = self.conn
        trusted = bool(conn.server.trusted.networks) and conn.server.trusted.trusts(conn.peer)
        if info.forwarded_for is None and info.forwarded_proto is None:
            extra = [conn.forwarded_lines()]
        else:
            peer = conn.peer.encode()
            forwarded_for = peer if info.forwarded_for is None else info.forwarded_for + b", " + peer
            proto = info.forwarded_proto if trusted and info.forwarded_proto else b"http"
            extra = [b"X-Forwarded-For: ", forwarded_for, b"\r\nX-Forwarded-Proto: ", proto, b"\r\n"]
        host = info.forwarded_host if trusted and info.forwarded_host else info.host
        if host:
            extra += (b"X-Forwarded-Host: ", host, b"\r\n")
        extra.append(self._request_id_line())
        return request_head(info, extra, request_framing(info))

    @property
    def request_id(self) -> str:
        rid = self._request_id
        if rid is None:
            rid = self._request_id = self.server.request_id_of(self._rid_seq)
        return rid

    def _request_id_line(self) -> bytes:
        """``X-Request-ID: ...`` for both heads, made once."""
        line = self._rid_line
        if line is None:
            if self._request_id is None:  # generated: written straight into the line
                line = self.server.rid_line_prefix + str(self._rid_seq).encode() + b"\r\n"
            else:
                line = b"X-Request-ID: " + self._request_id.encode() + b"\r\n"
            self._rid_line = line
        return line

    # -- the client side (parser callbacks of ClientConnection) ---------------------------------

    def client_body(self, data: bytes) -> None:
        size = len(data)
        total = self.body_bytes = self.body_bytes + size
        limit = self.server.max_body_bytes
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
        if self.sending and up is not None:
            if self.info.chunked:
                up.writelines([b"%x\r\n" % size, data, b"\r\n"])
            else:
                up.write(data)
        else:
            self.backlog.append(data)
            self.backlog_bytes += size
            if self.backlog_bytes >= BUFFER_LIMIT:
                self._body_buffered()
                if self.backlog_bytes > BACKLOG_LIMIT:
                    self.conn.pause(_BY_BACKLOG)

    def client_done(self) -> None:
        self.body_done = True
        if self.info.has_body:
            self._body_buffered()
            self.deadline = max(self.deadline, self.conn.loop.time() + self.server.request_timeout)
            if self.sending and self.upstream is not None and self.info.chunked and not self.body_refused:
                self.upstream.write(b"0\r\n\r\n")

    def early_data(self, data: bytes) -> None:
        """Bytes after a WebSocket upgrade request, before the backend's 101."""
        if self.tunnel and self.upstream is not None:
            self.upstream.write(data)
            return
        self.backlog.append(data)
        self.backlog_bytes += len(data)
        if self.backlog_bytes > BACKLOG_LIMIT:
            self.conn.pause(_BY_BACKLOG)

    def client_failed(self, error: HttpError) -> None:
        """The client's request went wrong after the cycle started (body too large, stalled, malformed)."""
        self.keep_alive = False
        if self.finished:
            return
        if not self.response_started:
            self._answer(error)
        else:
            self.conn.abort()
        self._cancel()

    def client_lost(self) -> None:
        if self.finished:
            return
        if not self.response_started:
            self.status = 499  # as NGINX logs a request whose client went away
        self.keep_alive = False
        self._cancel()

    def _cancel(self) -> None:
        task = self.task
        if task is None or not self.running:
            if task is not None:
                task.cancel()  # never started: its coroutine will not run
            self._finish()
        elif self.awaiting:
            self._abort_attempt()
            self._resolve(None if self.tunnel else _CLIENT_GONE)  # a tunnel ends when either side closes
        elif self.waiter is not None:
            pass  # the try's outcome is in: the task resumes with it and ends the request
        elif not task.done():
            task.cancel()

    # -- the upstream side (UpstreamSink) --------------------------------------------------------

    def upstream_head(self, response: ResponseInfo, keep_alive: bool) -> None:
        info = self.info
        status = response.status
        if status < 200 and status != 101:
            # Interim answers go to HTTP/1.1 clients, but "100 Continue": the proxy answers a
            # client's Expect itself when it starts reading the body (see _buffer_body).
            if info.http11 and status != 100:
                self.conn.write(response_head(response, ()))
            return
        self.head_ms = (self.data_at - self.attempt_at) * 1000.0  # data_at: the time of this read
        if (status == 502 or status == 503 or status == 504) and self._may_retry(False):  # worth another backend
            backend = self.route.backend_id if self.route is not None else "?"
            self._fail(_Failure(502, f"backend {backend} answered {status}", retry=True))
            return
        error = response.error
        if error is None and status == 101 and (not info.websocket or response.upgrade is None):
            error = "the backend switched protocols unasked"
        if error is not None:
            backend = self.route.backend_id if self.route is not None else "?"
            self._fail(_Failure(502, f"backend {backend}: {error}", retry=self._may_retry(False)))
            return
        self.status = status
        self.response_started = True
        if not self.body_done and not keep_alive:
            # An answer before the whole body, from a backend that closes: it will read no more (as
            # a 413 before a large upload). Stop sending, so that no failed write hides the answer;
            # the client's remaining body is read and dropped, then its connection closes.
            self.body_refused = True
            self.sending = False
        extra: list[bytes] = []
        if status == 101:
            extra += (b"Connection: Upgrade\r\nUpgrade: ", response.upgrade or b"", b"\r\n")
        else:
            no_body = status < 200 or status in (204, 304) or info.method == b"HEAD"  # http.bodiless, inlined
            length = response.content_length
            if length is not None and status != 204:
                extra += (b"Content-Length: ", length, b"\r\n")
            elif no_body:
                pass
            elif info.http11:
                self.out_chunked = True
                extra.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # an HTTP/1.0 client reads to the end of the connection
            self.until_close = not no_body and length is None and not response.chunked
            if not self.body_done or info.websocket or self.conn.closing:
                self.keep_alive = False
            if not self.keep_alive:
                extra.append(b"Connection: close\r\n")
            elif not info.http11:
                extra.append(b"Connection: keep-alive\r\n")
        extra.append(self._request_id_line())
        route = self.route
        if self.cookie and route is not None and route.backend_id != self.prefer:
            affinity = self.server.affinity
            assert affinity is not None
            extra.append(affinity.set_cookie(route.backend_id))
        self.conn.write(response_head(response, extra))
        if status == 101 and self.upstream is not None:
            self.tunnel = True
            self.timer_at = None
            early, self.backlog = self.backlog, []
            self.backlog_bytes = 0
            self.conn.resume(_BY_BACKLOG)
            self.conn.start_tunnel(self.upstream, early)

    def upstream_body(self, data: bytes) -> None:
        conn = self.conn
        if self.out_chunked:
            conn.write(b"%x\r\n" % len(data))
            conn.write(data)
            conn.write(b"\r\n")
        else:
            conn.write(data)

    def upstream_batch(self, begin: bool) -> None:
        conn = self.conn
        if begin:
            self.batching = True
            self.data_at = conn.loop.time()  # the time of this read, for everything it brings
            if conn._out is None:
                conn._out = []
            return
        self.batching = False
        conn.uncork()
        if self.deferred:  # the response ended in this read: end the try now, with no loop round trip
            self.deferred = False
            outcome, self.outcome = self.outcome, None
            self._attempt_done(outcome, self.data_at)

    def upstream_done(self) -> None:
        up, self.upstream = self.upstream, None
        self.sending = False
        self._end_response(self.data_at)
        if up is not None:
            self.server.pool.release(up, reusable=self.body_done, now=self.data_at)
        self._resolve(None)

    def upstream_lost(self, error: BaseException | None) -> None:
        up, self.upstream = self.upstream, None
        self.sending = False
        if self.tunnel:
            self.upstream_end = self.conn.loop.time()
            self.conn.close()
            self._resolve(None)
        elif not self.response_started:
            backend = self.route.backend_id if self.route is not None else "?"
            detail = f" ({error})" if error is not None else ""
            if up is not None and up.reused and not up.received and self.retained is not None:
                # A pooled connection that the backend had closed (its keep-alive timeout) as the
                # request went out: nothing came back, the body is still held, so any method may
                # go again on a fresh connection (RFC 9112 9.3.1).
                self._fail(_Failure(502, f"a pooled connection to backend {backend} closed before it answered"
                                         f"{detail}", backend_fault=False, stale=True))  # fmt: skip
                return
            # The backend's failure if it had the whole request or had stopped reading it; if the
            # proxy was still waiting for the client's body, the backend may have given up on a
            # slow client, which must not count against it.
            fault = self.body_done or self.blocked_since is not None
            self._fail(_Failure(502, f"backend {backend} closed the connection before answering{detail}",
                                retry=self._may_retry(False), backend_fault=fault))  # fmt: skip
        elif self.until_close and error is None:
            self._end_response(self.conn.loop.time())
            self._resolve(None)
        else:
            self.keep_alive = False
            self.conn.abort()  # the client must see that the response is cut short
            # Not the backend's failure if the proxy had to stop reading it for a client that did
            # not keep up: the backend may have given up on writes that could not go anywhere.
            self._resolve(_Failure(502, "backend closed the connection in the middle of the response",
                                   backend_fault=up is None or not up.held))  # fmt: skip

    def upstream_tunnel(self, data: bytes) -> None:
        self.conn.write(data)

    def upstream_paused(self, paused: bool) -> None:
        if paused:
            self.blocked_since = self.conn.loop.time()
            self.conn.pause(_BY_UPSTREAM)
        else:
            self.blocked_since = None
            self.conn.resume(_BY_UPSTREAM)

    # -- helpers ----------------------------------------------------------------------------------

    def _end_response(self, now: float) -> None:
        if self.out_chunked:
            self.conn.write(b"0\r\n\r\n")
        self.response_done = True
        self.upstream_end = now

    def _fail(self, failure: _Failure) -> None:
        """This try failed before any of its response reached the client."""
        self._abort_attempt()
        if (failure.retry or failure.stale) and self.retained is not None and not self.info.websocket:
            self.backlog = list(self.retained)  # the next try sends the body again
            self.backlog_bytes = self.body_bytes
        self._resolve(failure)

    def _abort_attempt(self) -> None:
        up, self.upstream = self.upstream, None
        self.sending = False
        if up is not None:
            up.close()
        if self.blocked_since is not None:
            self.blocked_since = None
            self.conn.resume(_BY_UPSTREAM)

    def _resolve(self, outcome: _Failure | None) -> None:
        """The try's outcome is known: wake the task, or end the eager path's try. Within a batch
        that waits for the batch's end (its output is flushed first); otherwise it runs as the
        task would, from the event loop, never inside the caller."""
        if not self.awaiting:
            return
        self.awaiting = False
        waiter = self.waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(outcome)
        elif self.batching:
            self.deferred = True
            self.outcome = outcome
        else:
            self.conn.loop.call_soon(self._attempt_done, outcome)

    def _on_timer(self) -> None:
        self.timer_at = None
        if not self.awaiting or self.tunnel:
            return
        loop = self.conn.loop
        now = loop.time()
        timeout = self.server.request_timeout
        backend = self.route.backend_id if self.route is not None else "?"
        if not self.response_started:
            blocked = self.blocked_since
            if self.body_done and now >= self.deadline:
                self._fail(_Failure(504, f"backend {backend} did not answer within {timeout:g} s"))
                return
            if blocked is not None and now >= blocked + timeout:
                self._fail(_Failure(504, f"backend {backend} stopped reading the request body"))
                return
            when = self.deadline if self.body_done else (blocked if blocked is not None else now) + timeout
        else:
            up = self.upstream
            reading = up is not None and not up.read_paused
            if reading and now >= self.data_at + timeout:
                self.keep_alive = False
                self._abort_attempt()
                self.conn.abort()
                self._resolve(_Failure(504, f"backend {backend} stalled in the middle of the response"))
                return
            when = self.data_at + timeout if reading else now + timeout
        self.timer_at = when
        self.conn.watch(when)

    def _answer(self, error: HttpError) -> None:
        """Answer with the proxy's own JSON error."""
        self.status = error.status
        self.response_started = self.response_done = True
        if not self.body_done or self.conn.closing:
            self.keep_alive = False
        self.conn.write(error_response(error.status, error.message, self.request_id, close=not self.keep_alive,
                                       retry_after=error.retry_after))  # fmt: skip

    def _finish(self, now: float | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.timer_at = None
        conn = self.conn
        server = self.server
        if now is None:
            now = conn.loop.time()
        if server.access is not None:  # building the log call's arguments costs: only when logging
            first = self.first_attempt_at
            end = self.upstream_end
            route = self.route
            server.log(request_id=self.request_id, client_ip=self.request.client_ip, method=self.info.method,
                       target=self.info.target, status=self.status or 499,
                       backend_id=None if route is None else route.backend_id, attempts=self.attempts,
                       upstream_ms=None if first is None or end is None else (end - first) * 1000.0,
                       total_ms=(now - self.started) * 1000.0)  # fmt: skip
        server.lb.request_stats.record("none" if self.route is None else self.route.backend_id, self.status or 499,
                                       now - self.started)  # fmt: skip
        conn.cycle_finished(self, now)
