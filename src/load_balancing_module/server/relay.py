"""What an exchange does with a backend's response: the upstream side of the proxy.

:class:`Relay` is the base of :class:`.exchange.Exchange`: it holds what the
two sides of an exchange share (the request's framing, the try on an upstream
connection, the answer so far) and receives the upstream connection's events
(:class:`.upstream.UpstreamSink`): the response head (forwarded, or a failure
that may be retried), body pieces, the end, a lost connection, the backend's
write-buffer pressure, and the backend's deadlines. A try's outcome goes to
:meth:`Relay._resolve`, which hands it to the exchange's one decision path
(``_settle``) once the read that brought it has been written to the client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .._log import log_event
from .attempt import Failure
from .filters import RESPONSE_OWN, FilterResponse, Headers, filter_request, response_headers
from .flow import BY_BACKLOG, BY_UPSTREAM
from .http import HttpError, RequestInfo
from .outbound import request_id_line
from .phase import ON_UPSTREAM, Phase
from .reader import RequestSink
from .response import ResponseInfo, UpstreamProtocolError, error_response, response_head
from .upstream import UpstreamConnection, UpstreamSink

if TYPE_CHECKING:
    from ..module import LoadBalancingModule
    from ..route import RouteResult
    from .context import Pool, ProxyContext
    from .routing import Route


class ClientSide(RequestSink):
    """What an exchange may read and do of its client connection (:class:`.client.ClientConnection`).

    A base class rather than a Protocol, as :class:`.reader.RequestSink` (its own base, for the
    compiled build allows one chain of bases): the compiled build calls these directly."""

    loop: asyncio.AbstractEventLoop
    peer: str
    lost: bool
    scheme: bytes  # b"http" or b"https": the listener's
    client_cert: bytes  # the X-Client-Cert-Subject line of a verified client certificate, or b""

    def loop_time(self) -> float:
        """The loop's time (its ``time`` method, bound once per connection)."""
        raise NotImplementedError

    @property
    def closing(self) -> bool:
        """No further request is read on this connection."""
        raise NotImplementedError

    @property
    def write_paused(self) -> bool:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def cork(self) -> None:
        """Collect writes until :meth:`uncork` (one send for what one upstream read brings)."""
        raise NotImplementedError

    def uncork(self) -> None:
        raise NotImplementedError

    def pause_reading(self, reason: int) -> None:
        """Stop reading from the client for ``reason`` (a bit of :mod:`.flow`)."""
        raise NotImplementedError

    def resume_reading(self, reason: int) -> None:
        raise NotImplementedError

    def watch(self, when: float) -> None:
        """Have :meth:`Relay.on_timer` called at ``when`` at the latest."""
        raise NotImplementedError

    def forwarded_lines(self) -> bytes:
        raise NotImplementedError

    def proxy_header(self, version: int) -> bytes:
        """The PROXY protocol header (``version`` 1 or 2) that speaks for this client upstream."""
        raise NotImplementedError

    def start_tunnel(self, upstream: UpstreamConnection, early: list[bytes]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def exchange_done(self, exchange: Relay, now: float) -> None:
        """``exchange`` has ended: start the next one, or close."""
        raise NotImplementedError

    def tls_version(self) -> str | None:
        """The connection's TLS version (TLSv1.3); None on plain TCP. Asked by the access log only."""
        raise NotImplementedError


class Relay(UpstreamSink):
    """The upstream side of one exchange, and the state both sides share."""

    __slots__ = (
        "conn",
        "ctx",
        "pool",
        "lb",
        "upstreams",
        "rule",
        "loop",
        "info",
        "phase",
        "given_id",
        "rid_seq",
        "rid_line",
        "backend_head",
        "deadline",
        "prefer",
        "cookie",
        "keep_alive",
        "body_done",
        "body_bytes",
        "retained",
        "backlog",
        "backlog_bytes",
        "body_refused",
        "upstream",
        "route",
        "batching",
        "deferred",
        "outcome",
        "timer_at",
        "attempt_at",
        "attempt_hr",
        "upstream_end",
        "head_ms",
        "blocked_since",
        "data_at",
        "data_hr",
        "status",
        "frame_sent",
        "body_sent",
        "responded",
        "response_done",
        "out_chunked",
        "until_close",
    )

    def __init__(
        self,
        conn: ClientSide,
        ctx: ProxyContext,
        pool: Pool,
        rule: Route | None,
        info: RequestInfo,
        request_id: str | None,
        rid_seq: int,
        deadline: float,
        prefer: str | None,
        cookie: bool,
    ) -> None:
        self.conn = conn
        self.ctx = ctx
        self.pool = pool  # the pool the request goes to (a request filter may choose another)
        self.lb: LoadBalancingModule = pool.lb
        self.upstreams = pool.upstream
        # The entry of the routes table that took the request (None: there are no routes). Not
        # `route`, which is the backend the library chose for the current try.
        self.rule = rule
        self.loop = conn.loop
        self.info = info
        self.phase = Phase.QUEUED
        self.given_id = request_id  # the client's X-Request-ID; None: the proxy's, number rid_seq
        self.rid_seq = rid_seq
        self.rid_line: bytes | None = None  # made once, for both heads
        self.backend_head: bytes | None = None  # the request's head for backends, made once (outbound.py)
        self.deadline = deadline
        self.prefer = prefer  # the backend the client's affinity cookie names (verified)
        self.cookie = cookie  # sticky by cookie: the answer binds the client to the backend that gave it
        # the request's body (facts about its framing, not phases)
        self.keep_alive = info.keep_alive
        self.body_done = not info.has_body
        self.body_bytes = 0
        self.retained: list[bytes] | None = []  # the body so far, while it is small enough to replay
        self.backlog: list[bytes] = []  # body not yet sent on the current try (or WebSocket bytes)
        self.backlog_bytes = 0
        self.body_refused = False  # the backend answered early and closes: the rest of the body is dropped
        # the current try
        self.upstream: UpstreamConnection | None = None
        self.route: RouteResult | None = None
        self.batching = False  # inside the upstream's data_received (see upstream_batch)
        self.deferred = False  # the try's outcome waits for the end of the batch
        self.outcome: Failure | None = None
        self.timer_at: float | None = None  # when on_timer is due (the connection's timer calls it)
        # Deadlines are on the loop's clock (``*_at``, ``blocked_since``); durations reported or fed
        # to the balancer on the module's (``*_hr``, ``upstream_end``): the loop's ticks in whole
        # milliseconds on uvloop, the module's resolves nanoseconds (clock.py).
        self.attempt_at = 0.0
        self.attempt_hr = 0.0
        self.upstream_end: float | None = None
        self.head_ms: float | None = None
        self.blocked_since: float | None = None
        self.data_at = 0.0
        self.data_hr = 0.0
        # the answer
        self.status = 0
        # Bytes written to the client (the access log's): heads and chunked framing, and body payload.
        self.frame_sent = 0
        self.body_sent = 0
        self.responded = False  # something of the answer went to the client
        self.response_done = False
        self.out_chunked = False
        self.until_close = False

    @property
    def request_id(self) -> str:
        """The client's id, or the proxy's (formatted only when asked)."""
        rid = self.given_id
        if rid is None:
            rid = self.given_id = self.ctx.request_id_of(self.rid_seq)
        return rid

    def request_id_line(self) -> bytes:
        line = self.rid_line
        if line is None:
            line = self.rid_line = request_id_line(self.ctx, self.given_id, self.rid_seq)
        return line

    # -- what the exchange decides (exchange.py) ------------------------------------------------

    def _settle(self, outcome: Failure | None, now: float | None = None) -> None:
        raise NotImplementedError

    def _may_retry(self, *, never_sent: bool) -> bool:
        raise NotImplementedError

    # -- the upstream connection's events (UpstreamSink) -----------------------------------------

    def upstream_head(self, response: ResponseInfo, keep_alive: bool) -> None:
        info = self.info
        status = response.status
        if status < 200 and status != 101:
            # Interim answers go to HTTP/1.1 clients, but "100 Continue": the proxy answers a
            # client's Expect itself when it starts reading the body.
            if info.http11 and status != 100:
                interim = response_head(response, [])
                self.frame_sent += len(interim)
                self.conn.write(interim)
            return
        self.head_ms = (self.data_hr - self.attempt_hr) * 1000.0  # data_hr: the time of this read
        backend = self.route.backend_id if self.route is not None else "?"
        pool = self.pool
        if status >= 400 and status in pool.retry_statuses and self._may_retry(never_sent=False):
            # retry_on.statuses: this response is dropped (its connection closed), nothing of it sent
            fault = status in pool.failure_statuses
            self._fail(
                Failure(502, f"backend {backend} answered {status}", retry=True, backend_fault=fault, answered=True)
            )
            return
        error = response.error
        if error is None and status == 101 and (not info.websocket or response.upgrade is None):
            error = "the backend switched protocols unasked"
        if error is not None:
            retry = pool.retry_junk and self._may_retry(never_sent=False)
            self._fail(Failure(502, f"backend {backend}: {error}", retry=retry))
            return
        rule = self.rule
        if rule is not None and (rule.response_edit is not None or rule.response_filters):
            failed = self._edit_response(rule, response)
            if failed is not None:
                self._fail(Failure(500, f"filter {failed} failed", backend_fault=False))
                return
        self.status = status
        self.responded = True
        if not self.body_done and not keep_alive:
            # An answer before the whole body, from a backend that closes: it will read no more (as
            # a 413 before a large upload). Stop sending, so that no failed write hides the answer;
            # the client's remaining body is read and dropped, then its connection closes.
            self.body_refused = True
        head = response_head(response, self._response_extras(response))
        self.frame_sent += len(head)
        self.conn.write(head)
        if status == 101 and self.upstream is not None:
            self.phase = Phase.TUNNEL
            self.timer_at = None
            early, self.backlog = self.backlog, []
            self.backlog_bytes = 0
            self.conn.resume_reading(BY_BACKLOG)
            self.conn.start_tunnel(self.upstream, early)
        else:
            self.phase = Phase.STREAMING

    def _edit_response(self, rule: Route, response: ResponseInfo) -> str | None:
        """The route's response header rules, then its response filters, on ``response``'s head;
        the name of a filter that failed (logged and counted), else None."""
        response.parts = rule.edit_response(response.parts)
        if not rule.response_filters:
            return None
        parts = response.parts
        headers = Headers(response_headers(parts), RESPONSE_OWN)
        request = filter_request(self.info, self.conn.peer, self.request_id, rule.name, self.pool.name)
        view = FilterResponse(response.status, headers, request)
        for loaded in rule.response_filters:
            hook = loaded.on_response
            assert hook is not None
            try:
                hook(view)
            except Exception as exc:
                self.note_filter_error(loaded.name, exc)
                return loaded.name
        if headers.changed:
            response.parts = parts[:3] + [b"%s: %s\r\n" % item for item in headers.lines()]
        return None

    def note_filter_error(self, name: str, exc: BaseException) -> None:
        """Log and count a filter's failure (the answer is the caller's to give)."""
        ctx = self.ctx
        ctx.filter_errors[name] = ctx.filter_errors.get(name, 0) + 1
        log_event(
            "filter_failed",
            logging.ERROR,
            request_id=self.request_id,
            filter=name,
            route=None if self.rule is None else self.rule.name,
            error=repr(exc),
        )

    def upstream_body(self, data: bytes) -> None:
        conn = self.conn
        size = len(data)
        self.body_sent += size
        if self.out_chunked:
            line = b"%x\r\n" % size
            self.frame_sent += len(line) + 2
            conn.write(line)
            conn.write(data)
            conn.write(b"\r\n")
        else:
            conn.write(data)

    def upstream_batch(self, begin: bool) -> None:
        if begin:
            self.batching = True
            self.data_at = self.conn.loop_time()  # the time of this read, for everything it brings
            self.data_hr = self.lb.clock.monotonic()  # the same, for its latencies
            self.conn.cork()
            return
        self.batching = False
        self.conn.uncork()
        if self.deferred:  # the response ended in this read: settle now, with no loop round trip
            self.deferred = False
            outcome, self.outcome = self.outcome, None
            self._settle(outcome, self.data_at)

    def upstream_done(self) -> None:
        up, self.upstream = self.upstream, None
        self._end_response(self.data_hr)
        if up is not None:
            self.upstreams.release(up, reusable=self.body_done, now=self.data_at)
        self._resolve(None)

    def upstream_lost(self, error: BaseException | None) -> None:
        up, self.upstream = self.upstream, None
        backend = self.route.backend_id if self.route is not None else "?"
        if self.phase is Phase.TUNNEL:
            self.upstream_end = self.lb.clock.monotonic()
            self.conn.close()
            self._resolve(None)
        elif not self.responded:
            detail = f" ({error})" if error is not None else ""
            if up is not None and up.reused and not up.received and self.retained is not None:
                # A pooled connection that the backend had closed (its keep-alive timeout) as the
                # request went out: nothing came back, the body is still held, so any method may
                # go again on a fresh connection (RFC 9112 9.3.1).
                self._fail(
                    Failure(
                        502,
                        f"a pooled connection to backend {backend} closed before it answered{detail}",
                        backend_fault=False,
                        stale=True,
                    )
                )
                return
            # The backend's failure if it had the whole request or had stopped reading it; if the
            # proxy was still waiting for the client's body, the backend may have given up on a
            # slow client, which must not count against it.
            fault = self.body_done or self.blocked_since is not None
            self._fail(
                Failure(
                    502,
                    f"backend {backend} closed the connection before answering{detail}",
                    retry=self._retry_on_loss(error) and self._may_retry(never_sent=False),
                    backend_fault=fault,
                )
            )
        elif self.until_close and error is None:
            self._end_response(self.lb.clock.monotonic())
            self._resolve(None)
        else:
            self.keep_alive = False
            self.conn.abort()  # the client must see that the response is cut short
            # Not the backend's failure if the proxy had to stop reading it for a client that did
            # not keep up: the backend may have given up on writes that could not go anywhere.
            self._resolve(
                Failure(
                    502,
                    "backend closed the connection in the middle of the response",
                    backend_fault=up is None or not up.held,
                )
            )

    def _retry_on_loss(self, error: BaseException | None) -> bool:
        """Whether ``retry_on`` allows a retry of a connection lost before any answer: a response
        the parser refused is ``junk_response``, a close or reset ``empty_response``."""
        if isinstance(error, UpstreamProtocolError):
            return self.pool.retry_junk
        return self.pool.retry_empty

    def upstream_tunnel(self, data: bytes) -> None:
        self.conn.write(data)

    def upstream_paused(self, paused: bool) -> None:
        if paused:
            self.blocked_since = self.loop.time()
            self.conn.pause_reading(BY_UPSTREAM)
        else:
            self.blocked_since = None
            self.conn.resume_reading(BY_UPSTREAM)

    # -- the backend's deadlines ------------------------------------------------------------------

    def on_timer(self) -> None:
        """The connection's exchange timer reached ``timer_at``: the backend's deadlines."""
        self.timer_at = None
        phase = self.phase
        if phase is not Phase.SENT and phase is not Phase.STREAMING:
            return
        now = self.loop.time()
        timeout = self.pool.request_timeout
        backend = self.route.backend_id if self.route is not None else "?"
        if phase is Phase.SENT:
            blocked = self.blocked_since
            if self.body_done and now >= self.deadline:
                self._fail(Failure(504, f"backend {backend} did not answer within {timeout:g} s"))
                return
            if blocked is not None and now >= blocked + timeout:
                self._fail(Failure(504, f"backend {backend} stopped reading the request body"))
                return
            when = self.deadline if self.body_done else (blocked if blocked is not None else now) + timeout
        else:
            up = self.upstream
            reading = up is not None and not up.read_paused
            if reading and now >= self.data_at + timeout:
                self.keep_alive = False
                self._abort_attempt()
                self.conn.abort()
                self._resolve(Failure(504, f"backend {backend} stalled in the middle of the response"))
                return
            when = self.data_at + timeout if reading else now + timeout
        self.timer_at = when
        self.conn.watch(when)

    # -- the answer and the try ---------------------------------------------------------------------

    def _response_extras(self, response: ResponseInfo) -> list[bytes]:
        """The proxy's lines of a response head: its framing, Connection, X-Request-ID, the
        affinity cookie; sets how the body goes to the client."""
        info = self.info
        status = response.status
        extra: list[bytes] = []
        if status == 101:
            extra.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n" % (response.upgrade or b""))
        else:
            no_body = status < 200 or status == 204 or status == 304 or info.method == b"HEAD"
            length = response.content_length
            if length is not None and status != 204:
                extra.append(b"Content-Length: %s\r\n" % length)  # one allocation when compiled
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
        extra.append(self.request_id_line())
        route = self.route
        if self.cookie and route is not None and route.backend_id != self.prefer:
            affinity = self.pool.affinity
            assert affinity is not None
            extra.append(affinity.set_cookie(route.backend_id))
        return extra

    def _end_response(self, end: float) -> None:
        """The backend's response is complete, at ``end`` on the module's clock."""
        if self.out_chunked:
            self.frame_sent += 5
            self.conn.write(b"0\r\n\r\n")
        self.response_done = True
        self.upstream_end = end

    def _fail(self, failure: Failure) -> None:
        """This try failed before any of its response reached the client."""
        self._abort_attempt()
        if (failure.retry or failure.stale) and self.retained is not None and not self.info.websocket:
            self.backlog = list(self.retained)  # the next try sends the body again
            self.backlog_bytes = self.body_bytes
        self._resolve(failure)

    def _abort_attempt(self) -> None:
        up, self.upstream = self.upstream, None
        if up is not None:
            up.close()
        if self.blocked_since is not None:
            self.blocked_since = None
            self.conn.resume_reading(BY_UPSTREAM)

    def _resolve(self, outcome: Failure | None) -> None:
        """The try on the upstream connection has an outcome. It is acted on at the end of the read
        that brought it (whose output is written first), or from the event loop: never inside the
        caller, which may be the upstream connection closing."""
        if self.phase not in ON_UPSTREAM:
            return
        self.phase = Phase.SETTLING
        if self.batching:
            self.deferred = True
            self.outcome = outcome
        else:
            self.loop.call_soon(self._settle, outcome)

    def _answer(self, error: HttpError) -> None:
        """Answer with the proxy's own JSON error."""
        self.status = error.status
        self.responded = self.response_done = True
        if not self.body_done or self.conn.closing:
            self.keep_alive = False
        self._write_answer(
            error_response(
                error.status, error.message, self.request_id, close=not self.keep_alive, retry_after=error.retry_after
            )
        )

    def _write_answer(self, answer: bytes) -> None:
        """Send a whole answer of the proxy's own (head and body), counting its bytes."""
        body_at = answer.find(b"\r\n\r\n") + 4
        if body_at < 4:
            body_at = len(answer)
        self.frame_sent += body_at
        self.body_sent += len(answer) - body_at
        self.conn.write(answer)
