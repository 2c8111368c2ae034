"""A client's connection to the proxy: the one owner of its state.

Built like uvicorn's ``HttpToolsProtocol``: a :class:`ClientConnection` is an
``asyncio.Protocol`` that owns everything about one client connection: its
:class:`~.reader.RequestReader` (the llhttp parser and the reader that cuts the
stream), the queue of pipelined exchanges (one answered at a time, in order),
flow control (:class:`~.flow.FlowControl`) and its timers. Each request becomes
an :class:`~.exchange.Exchange`, which reads and changes the connection only
through the methods of :class:`~.relay.ClientSide`. Two kinds of listener get a
subclass, so that a plain connection pays nothing for them: a TLS listener's
:class:`TLSConnection` (``X-Forwarded-Proto: https``, the client certificate's
subject) and a ``redirect_https`` listener's :class:`RedirectConnection` (308,
no backend).

Timeouts (the event loop's clock): ``limits.header_timeout`` for a complete
head (408), ``limits.idle_timeout`` for an idle keep-alive connection (closed
silently), for a client that stops sending its body (408) or stops reading its
response (closed); the exchanges' own deadlines (``request_timeout``) share one
timer of the connection's (:meth:`watch`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

from .._log import log_event
from ..config import Request
from ..enums import WorkloadType
from .exchange import Exchange, TracedExchange
from .flow import BY_PIPELINE, FlowControl
from .http import HttpError, RequestInfo
from .logformat import Entry
from .phase import Phase
from .proxy_protocol import encode_local_v2, encode_v1, encode_v2
from .reader import RequestReader
from .relay import ClientSide, Relay
from .response import error_response, https_location, redirect_response
from .timers import Alarm
from .tls import SUBJECT_HEADER, client_subject

if TYPE_CHECKING:
    from .context import ProxyContext
    from .upstream import UpstreamConnection

LINGER_MAX: Final = 30.0  # seconds a closing connection drops input at most (NGINX's lingering_time)
MAX_PIPELINE: Final = 32  # requests queued on one connection; more are not read
# What a client connection is doing, for its timeouts.
_IDLE: Final = 0
_HEAD: Final = 1
_BODY: Final = 2
_WAIT: Final = 3

_REQUEST_FIELDS = ("client_ip", "workload_type", "session_id", "request_id", "metadata")
# What Request.model_construct does for these five fields, without its general field loop (a fifth of the
# proxy's own time per request); model_construct itself if the model ever needs more than this.
_FAST_REQUEST: Final = (
    tuple(Request.model_fields) == _REQUEST_FIELDS
    and not Request.__pydantic_post_init__
    and not Request.__pydantic_root_model__
    and Request.model_config.get("extra") != "allow"
)
_set = object.__setattr__


def _unset(data: object) -> None:
    raise RuntimeError("no transport yet")


def _unset_closing() -> bool:
    raise RuntimeError("no transport yet")


def _new_request(client_ip: str, workload: WorkloadType, session_id: str | None) -> Request:
    """``Request.model_construct(...)`` of already validated values (metadata: a new empty dict)."""
    if not _FAST_REQUEST:
        # metadata is passed because pydantic inspects a default_factory's signature on every model_construct
        return Request.model_construct(
            client_ip=client_ip, workload_type=workload, session_id=session_id, request_id=None, metadata={}
        )
    request = object.__new__(Request)
    _set(
        request,
        "__dict__",
        {
            "client_ip": client_ip,
            "workload_type": workload,
            "session_id": session_id,
            "request_id": None,
            "metadata": {},
        },
    )
    _set(request, "__pydantic_fields_set__", set(_REQUEST_FIELDS))
    _set(request, "__pydantic_extra__", None)
    _set(request, "__pydantic_private__", None)
    return request


class ClientConnection(ClientSide):
    """One client's TCP connection: reads requests, queues them, writes their answers in order."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        # The transport's and the loop's methods on the request path, bound once: the compiled build
        # calls a method of an object whose class it does not know by name (a lookup each time).
        self._write: Callable[[bytes], object] = _unset
        self._is_closing: Callable[[], bool] = _unset_closing
        self._writelines: Callable[[list[bytes]], object] = _unset
        self._time = self.loop.time
        self.flow: FlowControl = None  # type: ignore[assignment]  # set by connection_made
        self.peer = "127.0.0.1"
        self.reader = RequestReader(ctx, self)
        # exchanges[0] is being answered. A list, not a deque: at most MAX_PIPELINE long, and the
        # compiled build appends to and pops from a list without a call by name.
        self.exchanges: list[Exchange] = []
        self._closing = False  # no further request is read on this connection
        self.lost = False
        self._receiving: Exchange | None = None  # whose body the reader is reading
        self._upgraded: Exchange | None = None  # a WebSocket request: its bytes wait for the 101
        self._tunnel: UpstreamConnection | None = None
        self._final: bytes | None = None  # an error answer to send once the queued exchanges are answered
        self._out: list[bytes] | None = None  # writes collected while corked
        self._queued = False
        # timeouts
        self._state = _HEAD
        self._head_deadline = 0.0
        self._idle_since = 0.0
        self._body_at = 0.0
        self._timer = Alarm(self.loop, self._on_timer)  # the connection's own timeouts
        # One timer for the deadlines of the exchanges (Exchange.timer_at): it is moved only when
        # one needs it earlier, so a keep-alive connection does not create a timer per request.
        self._exchange_timer = Alarm(self.loop, self._on_exchange_timer)
        self._flush = self.flush  # handed to the write batch
        self._linger: asyncio.TimerHandle | None = None
        self._linger_until = 0.0
        self._discarded_at = 0.0
        self._request: Request | None = None  # the latest routing request (see _new_exchange)
        self._request_ip = ""
        self._request_workload = WorkloadType.CLASSICAL
        self._request_session: str | None = None
        self._forwarded: bytes | None = None  # X-Forwarded-For/-Proto of a request that sent neither
        self._proxy_header: tuple[int, bytes] | None = None  # (version, the PROXY header for upstream)
        # The client's address and port from a PROXY header on this connection (a trusted proxy's).
        self.proxied: tuple[str, int] | None = None
        self.scheme = b"http"  # X-Forwarded-Proto
        self.client_cert = b""  # the X-Client-Cert-Subject line of a verified client certificate

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport
        self._write = self.transport.write
        self._is_closing = self.transport.is_closing
        self._writelines = self.transport.writelines
        self.flow = FlowControl(self.transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = peer[0]
        if self.proxied is not None:
            self.peer = self.proxied[0]
        ctx = self.ctx
        ctx.connections.add(self)
        if ctx.draining:
            transport.close()
            return
        self._head_deadline = self.loop.time() + ctx.header_timeout
        self._timer.arm(self._head_deadline)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write(data)
        elif self.reader.stopped:
            self._discarded_at = self.loop.time()  # lingering: the client is still sending
        elif self._upgraded is not None:
            self._upgraded.early_data(data)
        else:
            self.reader.feed(data, self._time())

    def eof_received(self) -> bool | None:
        # As NGINX does: a client that closes its side has gone; what is in flight is abandoned
        # (499). What was already written to the socket is still sent before it closes.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.ctx.connections.discard(self)
        self._timer.cancel()
        self._exchange_timer.cancel()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        for exchange in list(self.exchanges):
            exchange.client_lost()

    def pause_writing(self) -> None:
        self.flow.writing_paused(self.loop.time())
        self._timer.arm(self.flow.write_paused_at + self.ctx.idle_timeout)
        if self.exchanges:
            up = self.exchanges[0].upstream
            if up is not None:
                up.pause_reading()

    def resume_writing(self) -> None:
        self.flow.writing_resumed()
        if self.exchanges:
            up = self.exchanges[0].upstream
            if up is not None:
                up.resume_reading()

    # -- what the reader reports (RequestSink) -----------------------------------------------------

    def message_begun(self) -> bool:
        if self._closing:
            return False
        if len(self.exchanges) >= MAX_PIPELINE:
            self._closing = True
            return False
        if self._state != _HEAD:
            self._state = _HEAD
            self._head_deadline = self.reader.now + self.ctx.header_timeout
            self._timer.arm(self._head_deadline)
        return True

    def head_received(self, info: RequestInfo, upgrade: bool) -> None:
        now = self.reader.now
        exchange = self._new_exchange(info, now)
        if not info.keep_alive or info.websocket:
            self._closing = True
        self._state = _BODY if info.has_body else _WAIT
        self._body_at = now
        if info.has_body:
            self._timer.arm(now + self.ctx.idle_timeout)
        self._receiving = exchange
        self.exchanges.append(exchange)
        self.ctx.exchange_begun()
        if len(self.exchanges) == 1:
            exchange.start(now)
        else:
            self.flow.pause(BY_PIPELINE)

    def body_received(self, data: bytes) -> None:
        exchange = self._receiving
        if exchange is not None:
            self._body_at = self.reader.now
            exchange.client_body(data)

    def message_done(self) -> None:
        exchange, self._receiving = self._receiving, None
        if self._state != _HEAD:
            self._state = _WAIT
        if exchange is not None:
            exchange.client_done()

    def upgraded_at(self, data: bytes, stop: int) -> int:
        exchange = self.exchanges[-1] if self.exchanges else None
        if exchange is None or exchange.phase is Phase.DONE:
            self.reader.stopped = True
            return len(data)
        if exchange.info.websocket:
            self._upgraded = exchange  # nothing more is HTTP on this connection
            if stop < len(data):
                exchange.early_data(data[stop:])
            return len(data)
        if not exchange.body_done:
            self.reader.reframe(exchange.info)
        return stop

    def read_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, HttpError):
            log_event("proxy_internal_error", logging.ERROR, stage="parsing", error=repr(exc))
            exc = HttpError(500, "internal error of the proxy")
        self._closing = True
        exchange, self._receiving = self._receiving, None
        if exchange is not None and exchange.phase is not Phase.QUEUED:
            exchange.client_failed(exc)
            return
        if exchange is not None:  # queued behind another request: it is simply refused
            self._drop(exchange)
        self.refuse(exc)

    def _new_exchange(self, info: RequestInfo, now: float) -> Exchange:
        ctx = self.ctx
        routes = ctx.routes
        if routes is None:  # no routes: the default pool, as the request came
            rule = None
            pool = ctx.default_pool
        else:
            rule = routes.match(info)
            pool = ctx.pools[rule.pool]
        client_ip = ctx.trusted.client_ip(self.peer, info.forwarded_for) if ctx.trusted.networks else self.peer
        # X-Session-ID names a session of the client's own: the session store binds it. Without one,
        # the affinity cookie names the backend itself (signed), so nothing is stored per client.
        session = info.session_id
        prefer = None
        if pool is ctx.default_pool:  # its cookie was read with the head
            cookie = ctx.sticky and session is None and ctx.affinity is not None
            if cookie and info.cookie_session is not None:
                assert ctx.affinity is not None
                prefer = ctx.affinity.backend_of(info.cookie_session)
        else:
            cookie, prefer = pool.binding(info, session)
        seq = 0 if info.request_id else ctx.next_request_seq()
        # What routing reads of a request; the same for most requests on a connection, so it is kept
        # (routing never changes it). Its request_id is left out: the exchange carries the request's.
        request = self._request
        if (
            request is None
            or self._request_ip != client_ip
            or self._request_workload is not info.workload
            or self._request_session != session
        ):
            request = self._request = _new_request(client_ip, info.workload, session)  # validated above
            # Its fields, as plain attributes: a pydantic model's are slower to read.
            self._request_ip, self._request_workload, self._request_session = client_ip, info.workload, session
        if ctx.tracer is None:  # the one check tracing costs a request when it is off
            return Exchange(self, ctx, pool, rule, info, request, info.request_id, seq, prefer, cookie, now)
        return TracedExchange(self, ctx, pool, rule, info, request, info.request_id, seq, prefer, cookie, now)

    def refuse(self, error: HttpError) -> None:
        """Answer ``error`` after the requests already queued, then close."""
        self.reader.stopped = True
        self._closing = True
        ctx = self.ctx
        request_id = ctx.new_request_id()
        answer = error_response(error.status, error.message, request_id, close=True, retry_after=error.retry_after)
        if ctx.log_wanted():
            self._log(Entry(request_id, self.peer, None, None, error.status), None, answer)
        if self.exchanges:
            self._final = answer
        else:
            self.write(answer)
            self.linger_close()

    def _log(self, entry: Entry, info: RequestInfo | None, answer: bytes) -> None:
        """Log an answer of the connection's own (a refusal, a redirect): ``answer``'s bytes, ``info``'s head."""
        if info is not None:
            entry.http11 = info.http11
            entry.host = info.host
            entry.headers = info.headers
        entry.response_bytes = len(answer)
        entry.body_bytes = len(answer) - answer.find(b"\r\n\r\n") - 4
        entry.tls_version = self.tls_version()
        self.ctx.log(entry)

    # -- what an exchange may do (ClientSide) -------------------------------------------------------

    def tls_version(self) -> str | None:
        return None

    @property
    def closing(self) -> bool:
        """No further request is read on this connection."""
        return self._closing

    @property
    def write_paused(self) -> bool:
        return self.flow.write_paused

    def pause_reading(self, reason: int) -> None:
        self.flow.pause(reason)

    def resume_reading(self, reason: int) -> None:
        if self.flow.resume(reason):
            self._body_at = self.loop.time()  # a pause of ours is not the client's idleness

    def loop_time(self) -> float:
        return self._time()

    def write(self, data: bytes) -> None:
        if self._out is not None:
            self._out.append(data)
        elif not self._is_closing():
            self._write(data)

    def cork(self) -> None:
        """Collect writes until :meth:`uncork` (one send for a head and a body that came in one read)."""
        if self._out is None:
            self._out = []

    def uncork(self) -> None:
        if not self._out:
            self._out = None
        elif not self._queued:  # sent with the batch at the end of the loop's turn
            self._queued = True
            self.ctx.pool.batch.add(self._flush)

    def flush(self) -> None:
        self._queued = False
        out, self._out = self._out, None
        if out and not self._is_closing():
            if len(out) == 1:
                self._write(out[0])
            else:
                self._writelines(out)  # a head and a body, most often

    def forwarded_lines(self) -> bytes:
        """``X-Forwarded-For`` and ``X-Forwarded-Proto`` for a request that brought neither: the same
        for every such request on this connection."""
        lines = self._forwarded
        if lines is None:
            lines = self._forwarded = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n%s" % (
                self.peer.encode(),
                self.scheme,
                self.client_cert,
            )
        return lines

    def proxy_header(self, version: int) -> bytes:
        """The PROXY header for this client's connection: its source, the address it reached
        (made once per connection and version). Not an IP connection (a unix socket): LOCAL in
        v2, UNKNOWN in v1, as HAProxy sends."""
        known = self._proxy_header
        if known is not None and known[0] == version:
            return known[1]
        peer = self.transport.get_extra_info("peername")
        local = self.transport.get_extra_info("sockname")
        header = b"PROXY UNKNOWN\r\n" if version == 1 else encode_local_v2()
        proxied = self.proxied
        if isinstance(peer, tuple) and isinstance(local, tuple):
            source = proxied if proxied is not None else (self.peer, int(peer[1]))
            destination = (str(local[0]), int(local[1]))
            header = encode_v1(source, destination) if version == 1 else encode_v2(source, destination)
        self._proxy_header = (version, header)
        return header

    def start_tunnel(self, upstream: UpstreamConnection, early: list[bytes]) -> None:
        self._upgraded = None
        self._tunnel = upstream
        self._state = _WAIT
        if early:
            upstream.writelines(early)

    def watch(self, when: float) -> None:
        """Have the exchange timer fire at ``when`` at the latest (an exchange's ``timer_at``)."""
        self._exchange_timer.arm(when)

    def exchange_done(self, exchange: Relay, now: float) -> None:
        """``exchange`` has ended (answered, failed or abandoned): start the next one, or close."""
        ctx = self.ctx
        ctx.exchange_ended()
        exchanges = self.exchanges
        if exchanges and exchanges[0] is exchange:
            exchanges.pop(0)
        elif exchange in exchanges:
            exchanges.remove(exchange)
        if self.lost:
            return
        if exchange.status == 101:  # a tunnel: it ends when either side closes
            self.close()
            return
        if not exchange.keep_alive or ctx.draining:
            self._closing = True
            if exchanges:  # the answer said the connection closes: requests queued behind it are dropped
                for queued in list(exchanges):
                    self._drop(queued)
                self._receiving = self._upgraded = None
                self.reader.stopped = True
        if exchanges:
            if len(exchanges) == 1:
                self.resume_reading(BY_PIPELINE)
            exchanges[0].start(self.loop.time())
        elif self._final is not None:
            self.write(self._final)
            self.linger_close()
        elif self._closing:
            if self._receiving is not None or self.reader.stopped:
                self.linger_close()
            else:
                self.close()
        elif self._state == _WAIT:
            self._state = _IDLE
            self._idle_since = now
            self._timer.arm(now + ctx.idle_timeout)

    def _drop(self, exchange: Exchange) -> None:
        """A queued exchange that will not be answered: it ends without a word."""
        exchange.discard()
        self.exchanges.remove(exchange)
        self.ctx.exchange_ended()

    # -- closing ------------------------------------------------------------------------------------

    def drain(self) -> None:
        """Serve what is in flight, then close; close now if nothing is."""
        self._closing = True
        if not self.exchanges:
            self.close()

    def close(self) -> None:
        """Close once everything written has gone out, what waits for the batch included."""
        if self._queued:
            self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def linger_close(self) -> None:
        """Close after an error answer without losing it: send FIN, drop input for a moment, then close."""
        self.reader.stopped = True
        transport = self.transport
        if transport.is_closing():
            return
        if self._queued:
            self.flush()
        self.flow.resume_all()
        if transport.can_write_eof():
            transport.write_eof()
            now = self.loop.time()
            self._discarded_at = now
            self._linger_until = now + LINGER_MAX
            self._linger = self.loop.call_later(self.ctx.linger_seconds, self._linger_check)
        else:
            transport.close()

    def _linger_check(self) -> None:
        now = self.loop.time()
        quiet_at = self._discarded_at + self.ctx.linger_seconds
        if now >= quiet_at or now >= self._linger_until:
            self._linger = None
            self.transport.close()
        else:
            self._linger = self.loop.call_at(min(quiet_at, self._linger_until), self._linger_check)

    # -- timeouts ------------------------------------------------------------------------------------

    def _on_exchange_timer(self) -> None:
        now = self.loop.time()
        later = math.inf
        for exchange in list(self.exchanges):
            when = exchange.timer_at
            if when is None:
                continue
            if now >= when:
                exchange.on_timer()
            elif when < later:
                later = when
        if later < math.inf:
            self.watch(later)

    def _on_timer(self) -> None:
        if self.lost or self.reader.stopped:
            return
        ctx = self.ctx
        now = self.loop.time()
        state = self._state
        deadline = math.inf
        if state == _HEAD:
            if now >= self._head_deadline:
                self.reader.stopped = True
                self.read_failed(HttpError(408, f"request head not received within {ctx.header_timeout:g} s"))
                return
            deadline = self._head_deadline
        elif state == _IDLE and not self.exchanges:
            if now >= self._idle_since + ctx.idle_timeout:
                self.close()
                return
            deadline = self._idle_since + ctx.idle_timeout
        elif state == _BODY and not self.flow.reading_paused:
            if now >= self._body_at + ctx.idle_timeout:
                self.reader.stopped = True
                self.read_failed(HttpError(408, f"request body stalled for {ctx.idle_timeout:g} s"))
                return
            deadline = self._body_at + ctx.idle_timeout
        elif state == _BODY:
            deadline = now + ctx.idle_timeout  # paused by us: the upstream side watches the backend
        flow = self.flow
        if flow.write_paused:
            if now >= flow.write_paused_at + ctx.idle_timeout:
                log_event("client_not_reading", logging.DEBUG, client_ip=self.peer)
                self.transport.abort()
                return
            deadline = min(deadline, flow.write_paused_at + ctx.idle_timeout)
        if deadline < math.inf:
            self._timer.arm(deadline)


class TLSConnection(ClientConnection):
    """A connection on a TLS listener, made once its handshake is done: requests go upstream with
    ``X-Forwarded-Proto: https`` and, if the listener asks for client certificates, the verified
    certificate's subject (``X-Client-Cert-Subject``, RFC 4514)."""

    def __init__(self, ctx: ProxyContext, client_certs: bool) -> None:
        super().__init__(ctx)
        self.scheme = b"https"
        self._client_certs = client_certs
        self._tls_version: str | None = None  # read when the access log first asks

    def tls_version(self) -> str | None:
        version = self._tls_version
        if version is None:
            ssl_object = self.transport.get_extra_info("ssl_object")
            version = self._tls_version = None if ssl_object is None else ssl_object.version()
        return version

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._client_certs:
            subject = client_subject(transport.get_extra_info("ssl_object"))
            if subject:
                self.client_cert = b"%s: %s\r\n" % (SUBJECT_HEADER, subject)
        super().connection_made(transport)


class RedirectConnection(ClientConnection):
    """A connection on a ``redirect_https`` listener: every request is answered at once, ``308`` to
    ``https://<host><target>`` (400 without a valid Host), and no backend is contacted. A request
    with a body is answered, then the connection closes (its body is not read)."""

    def __init__(self, ctx: ProxyContext, https_port: int) -> None:
        super().__init__(ctx)
        self._port = https_port

    def head_received(self, info: RequestInfo, upgrade: bool) -> None:
        ctx = self.ctx
        now = self.reader.now
        request_id = info.request_id or ctx.new_request_id()
        location = https_location(info.host, info.target, self._port)
        close = not info.keep_alive or info.has_body or upgrade or ctx.draining or location is None
        if location is None:
            status = 400
            answer = error_response(400, "a valid Host header is needed to redirect to https", request_id, close=True)
        else:
            status = 308
            answer = redirect_response(location, request_id, close=close)
        if ctx.log_wanted():
            self._log(Entry(request_id, self.peer, info.method, info.target, status), info, answer)
        self.write(answer)
        if close:
            self._closing = True
            self.linger_close()
        else:
            self._state = _IDLE
            self._idle_since = now
            self._timer.arm(now + ctx.idle_timeout)

    def body_received(self, data: bytes) -> None:
        pass

    def message_done(self) -> None:
        pass  # answered with the head
