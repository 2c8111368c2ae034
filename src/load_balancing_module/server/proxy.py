"""The proxy's data plane: the listener and client connections (the request cycle is in ``cycle.py``).

Built like uvicorn's ``httptools_impl``: a :class:`ClientConnection` is an
``asyncio.Protocol`` whose llhttp parser callbacks collect a request head;
when the head is complete (and passed :func:`.http.inspect_request`) a
:class:`RequestCycle` is created and, once every earlier pipelined request on
the connection has been answered, its task runs::

    route (lb.route_request) -> upstream connection (pool or connect) -> send head + body
      -> response head: forward it, or retry elsewhere -> stream the body -> lb.complete_request

llhttp is never given the client's stream as it comes: the connection's
reader (``ClientConnection._feed``) cuts it at the boundaries of every request
and of its parts, reads each method and each chunk-size line itself, and gives
llhttp exactly one head, Content-Length body or trailer section at a time; so
every bound holds in any split of the stream (``docs/http.md``).

Bodies are streamed by callbacks, not by the task: a client body piece goes
straight to the upstream socket, a response piece straight to the client
socket. Flow control pauses the reading side whenever the writing side's
buffer is full (``pause_writing``/``resume_writing``), so memory stays
bounded whatever the sizes. Up to :data:`.cycle.RETAIN_LIMIT` bytes of a request
body are kept so that a failed try can be replayed on another backend.

Timeouts (the event loop's clock): ``limits.header_timeout`` for a complete
head (408), ``limits.idle_timeout`` for an idle keep-alive connection (closed
silently), for a client that stops sending its body (408) or stops reading its
response (closed); ``request_timeout`` for the whole routing and retrying up to
a backend's response head, counted from the end of the request (504), and for
a backend that stops sending its response or reading the request body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from .._log import log_event
from ..config import Request
from ..enums import WorkloadType
from ..models import RouteResult
from .accesslog import AccessLog
from .affinity import AffinityCookies
from .config import ServerConfig, parse_address
from .cycle import _BY_PIPELINE, RequestCycle
from .http import (
    LLHTTP_METHODS,
    Header,
    HttpError,
    RequestInfo,
    TrustedProxies,
    check_raw_transfer_encoding,
    chunk_size,
    error_response,
    inspect_request,
    request_framing,
    request_method,
)
from .listener import Listener, bind
from .upstream import UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from ..backend import Backend
    from ..module import LoadBalancingModule

# After an answer that closes the connection while the client may still be sending (an error, an
# early answer before its body), read and drop what it sends, so that a close with unread input
# (a reset) cannot destroy the answer before the client has read it: until it has been quiet for
# LINGER_SECONDS, and at most LINGER_MAX seconds (NGINX's lingering_timeout and lingering_time).
LINGER_SECONDS: Final = 1.0
LINGER_MAX: Final = 30.0
CHUNK_LINE_LIMIT: Final = 4096  # bytes of a chunk-size line (size, extensions, CRLF)
MAX_PIPELINE: Final = 32  # requests queued on one connection; more are not read
# What a connection's reader expects next (ClientConnection._phase, see _feed). The reader cuts the
# stream at every request's boundaries itself, so that it sees each request line and each chunk-size
# line before llhttp does, and counts a head (or a trailer section) as the bytes it really is.
_AT_START: Final = 0  # a request line, after any empty lines
_IN_HEAD: Final = 1  # a head, given to llhttp up to the blank line found here
_IN_LENGTH: Final = 2  # a Content-Length body, given to llhttp
_CHUNK_SIZE: Final = 3  # a chunk-size line, read here (llhttp never sees one)
_CHUNK_DATA: Final = 4  # a chunk's data, handed on here
_CHUNK_END: Final = 5  # the CRLF after a chunk's data
_TRAILERS: Final = 6  # the trailer section, given to llhttp after a last-chunk line "0" of the reader's own
# What a client connection is doing, for its timeouts.
_IDLE: Final = 0
_HEAD: Final = 1
_BODY: Final = 2
_WAIT: Final = 3
access_logger = logging.getLogger("load_balancing_module.access")


class _Stop(Exception):
    """Raised in a parser callback: parse no further, the connection is closing."""


_REQUEST_FIELDS = ("client_ip", "workload_type", "session_id", "request_id", "metadata")
# What Request.model_construct does for these five fields, without its general field loop (a fifth of the
# proxy's own time per request); model_construct itself if the model ever needs more than this.
_FAST_REQUEST: Final = (tuple(Request.model_fields) == _REQUEST_FIELDS and not Request.__pydantic_post_init__
                 and not Request.__pydantic_root_model__ and Request.model_config.get("extra") != "allow")  # fmt: skip
_set = object.__setattr__


def _new_request(client_ip: str, workload: WorkloadType, session_id: str | None, request_id: str | None) -> Request:
    """``Request.model_construct(...)`` of already validated values (metadata: a new empty dict)."""
    if not _FAST_REQUEST:
        # metadata is passed because pydantic inspects a default_factory's signature on every model_construct
        return Request.model_construct(client_ip=client_ip, workload_type=workload, session_id=session_id,
                                       request_id=request_id, metadata={})  # fmt: skip
    request = object.__new__(Request)
    _set(request, "__dict__", {"client_ip": client_ip, "workload_type": workload, "session_id": session_id,
                               "request_id": request_id, "metadata": {}})  # fmt: skip
    _set(request, "__pydantic_fields_set__", set(_REQUEST_FIELDS))
    _set(request, "__pydantic_extra__", None)
    _set(request, "__pydantic_private__", None)
    return request


class _Alarm:
    """A one-shot event-loop timer that is only ever moved earlier until it fires."""

    __slots__ = ("_loop", "_callback", "_handle", "_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf

    def arm(self, when: float) -> None:
        if when < self._at:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)
            self._at = when

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._at = math.inf

    def _fire(self) -> None:
        self._handle = None
        self._at = math.inf
        self._callback()


class ProxyServer:
    """The HTTP/1.1 reverse proxy on ``config.listen``, routing through ``lb``."""

    def __init__(self, lb: LoadBalancingModule, config: ServerConfig, *,
                 access_log: logging.Logger | None = None) -> None:  # fmt: skip
        self.lb = lb
        self._access_logger = access_log or access_logger
        self.pool = UpstreamPool()
        self.config = config  # a new config may be assigned at any time (reload): see the setter
        self.connections: set[ClientConnection] = set()
        self.in_flight = 0
        self.port = 0
        self.draining = False
        self._address = parse_address(config.listen)
        self._listeners: list[Listener] = []
        self._accepting: set[asyncio.Task[object]] = set()  # accepted sockets being wrapped in transports
        self._drained: asyncio.Future[None] | None = None
        self._rid_prefix = f"{lb.rng.getrandbits(40):010x}-"
        self.rid_line_prefix = b"X-Request-ID: " + self._rid_prefix.encode()
        self._rid_seq = 0
        # The proxy's own host out of descriptors or memory, by where it showed: never a backend's failure.
        self.affinity: AffinityCookies | None = None  # made at start (its key may come from the store)
        self.exhausted = {"accept": 0, "connect": 0}
        self.linger_seconds = LINGER_SECONDS
        self._exhausted_logged_at = -math.inf

    @property
    def config(self) -> ServerConfig:
        return self._config

    @config.setter
    def config(self, config: ServerConfig) -> None:
        """Apply limits, timeouts, retries, trusted proxies, affinity and the access log switch;
        requests in flight keep the deadlines they started with. ``listen`` needs a restart."""
        self._config = config
        limits = config.limits
        self.max_header_bytes = limits.max_header_bytes
        self.max_body_bytes = limits.max_body_bytes  # 0: no limit (as NGINX's client_max_body_size 0)
        self.header_timeout = limits.header_timeout
        self.idle_timeout = limits.idle_timeout
        self.request_timeout = config.request_timeout
        self.connect_timeout = config.upstream.connect_timeout
        self.pool.idle_timeout = config.upstream.idle_timeout
        self.pool.max_idle = config.upstream.max_idle_per_backend
        self.max_retries = config.max_retries
        self.sticky = config.session_affinity
        self.trusted = TrustedProxies(config.trusted_proxies)
        self.access = AccessLog(self._access_logger, self.lb.clock) if config.access_log else None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self.affinity is None:
            self.affinity = AffinityCookies(await self._affinity_key())
        host, port = self._address
        sockets = await bind(host, port)
        self._listeners = [Listener(sock, self._accepted, self._accept_exhausted) for sock in sockets]
        for listener in self._listeners:
            listener.start()
        self.port = self._listeners[0].port
        log_event("proxy_listening", host=host, port=self.port)

    async def _affinity_key(self) -> bytes:
        """The key that signs affinity cookies: from ``affinity_secret_env`` when set (every balancer
        that shares traffic must have the same), else the state store's shared key, so that
        balancers sharing a Redis agree by themselves; a store of this process's own makes one."""
        name = self.config.affinity_secret_env
        secret = os.environ.get(name) if name else None
        if secret:
            return hashlib.sha256(secret.encode()).digest()
        return await self.lb.store.shared_secret("affinity")

    def _accepted(self, sock: socket.socket) -> None:
        """A client's socket, accepted by a :class:`Listener`: give it a transport and a connection."""
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: ClientConnection(self), sock=sock))
        self._accepting.add(task)
        task.add_done_callback(self._wrapped)

    def _wrapped(self, task: asyncio.Task[object]) -> None:
        self._accepting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log_event("accept_failed", logging.WARNING, error=repr(task.exception()))

    def _accept_exhausted(self, exc: OSError) -> None:
        self.note_exhaustion("accept", exc)

    async def stop_accepting(self) -> None:
        for listener in self._listeners:
            listener.close()

    async def drain(self, timeout: float) -> int:
        """Let requests in flight finish (up to ``timeout`` s) and close idle connections.

        Returns how many requests were still running at the timeout (they are cut off)."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        if self.in_flight:
            self._drained = asyncio.get_running_loop().create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
        left = self.in_flight
        for conn in list(self.connections):
            conn.abort()
        log_event("proxy_drained", cut_off=left)
        return left

    async def close(self) -> None:
        """Close the listener, every client connection and every upstream connection."""
        await self.stop_accepting()
        for conn in list(self.connections):
            conn.abort()
        self.pool.close()
        for task in list(self._accepting):
            task.cancel()

    # -- used by connections and cycles ---------------------------------------------------

    def new_request_id(self) -> str:
        return self.request_id_of(self.next_request_seq())

    def next_request_seq(self) -> int:
        """The sequence number of a new generated request id (formatted only when needed)."""
        self._rid_seq += 1
        return self._rid_seq

    def request_id_of(self, seq: int) -> str:
        return self._rid_prefix + str(seq)  # "<10 hex digits>-<decimal sequence>"

    def cycle_done(self) -> None:
        self.in_flight -= 1
        self.cycle_done_drained()

    def cycle_done_drained(self) -> None:
        """After ``in_flight`` went down: wake ``drain`` once nothing is left."""
        if self.in_flight == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def route_again(self, request: Request, started: float, tried: Sequence[Backend],
                          attempt: int) -> RouteResult:  # fmt: skip
        """Route a retry, excluding the backends already tried (the library's general routing path)."""
        return await self.lb.route_retry(request, tried, attempt=attempt, started=started)

    def abandon(self, route: RouteResult) -> None:
        """Release a route's slot without an outcome: the client, not the backend, ended the try."""
        self.lb.abandon_request(route)

    def backoff(self, retry: int) -> float:
        return self.lb.backoff(retry)

    def note_exhaustion(self, where: str, exc: OSError) -> None:
        """Count the proxy's own resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM); log it at most
        once a second, so that a flood of it does not become a flood of log lines."""
        self.exhausted[where] += 1
        now = self.lb.clock.monotonic()
        if now - self._exhausted_logged_at >= 1.0:
            self._exhausted_logged_at = now
            log_event("proxy_out_of_resources", logging.ERROR, where=where, error=exc.strerror or repr(exc),
                      errno=exc.errno, count=self.exhausted[where])  # fmt: skip

    def log(self, *, request_id: str | None, client_ip: str | None, method: bytes | None, target: bytes | None,
            status: int, backend_id: str | None = None, attempts: int = 0, upstream_ms: float | None = None,
            total_ms: float = 0.0) -> None:  # fmt: skip
        access = self.access
        if access is None or not access.enabled():
            return
        path = None if target is None else target.partition(b"?")[0].decode("latin-1")
        access.emit(request_id=request_id, client_ip=client_ip, method=None if method is None else method.decode(),
                    path=path, status=status, backend_id=backend_id, attempts=attempts, upstream_ms=upstream_ms,
                    total_ms=total_ms)  # fmt: skip


class ClientConnection(asyncio.Protocol):
    """One client's TCP connection: parses requests, queues them, writes their answers in order."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.peer = "127.0.0.1"
        self.parser = HttpRequestParser(self)
        self.cycles: deque[RequestCycle] = deque()  # cycles[0] is being answered
        self.closing = False  # no further request is read on this connection
        self.lost = False
        self.write_paused = False
        self._receiving: RequestCycle | None = None  # whose body the parser is reading
        self._upgraded: RequestCycle | None = None  # a WebSocket request: its bytes wait for the 101
        self._tunnel: UpstreamConnection | None = None
        self._final: bytes | None = None  # an error answer to send once the queued cycles are answered
        self._out: list[bytes] | None = None  # writes collected while corked
        self._queued = False
        self._discard = False  # drop all further input
        self._synthetic = False  # feeding a made-up head to a fresh parser (see _on_upgrade)
        self._reframe = False
        self._paused = 0
        # the head being parsed
        self._url = b""
        self._headers: list[Header] = []
        self._in_head = False
        self._method = b""
        # the reader (see _feed)
        self._phase = _AT_START
        self._pending = b""  # the start of a request line that ended a read before its method did
        self._skip = 0  # bytes of a method llhttp was given "GET" for, still to be skipped
        self._seen = 0  # bytes of the head (or trailer section) in earlier reads
        self._tail = b""  # their last bytes, up to 3: a blank line may begin in one read and end in the next
        self._raw: list[bytes] | None = None  # the head's bytes from earlier reads
        self._data = b""  # the read in which the head ended, from _head_from to _head_to
        self._head_from = 0
        self._head_to = 0
        self._left = 0  # bytes left of a Content-Length body, or of a chunk's data
        self._line = b""  # a chunk-size line so far
        self._crlf = 0  # bytes of the CRLF after a chunk's data read so far
        self._now = 0.0  # the loop's time when the read being parsed arrived
        # timeouts
        self._state = _HEAD
        self._head_deadline = 0.0
        self._idle_since = 0.0
        self._body_at = 0.0
        self._write_paused_at = 0.0
        self._timer = _Alarm(self.loop, self._on_timer)  # the connection's own timeouts
        # One timer for the request timeouts of the cycles (RequestCycle.timer_at): it is moved only
        # when a cycle needs it earlier, so a keep-alive connection does not create a timer per request.
        self._cycle_timer = _Alarm(self.loop, self._on_cycle_timer)
        self._linger: asyncio.TimerHandle | None = None
        self._linger_until = 0.0
        self._discarded_at = 0.0
        self._request: Request | None = None  # the latest routing request (see _new_cycle)
        self._request_ip = ""
        self._request_workload = WorkloadType.CLASSICAL
        self._request_session: str | None = None
        self._forwarded: bytes | None = None  # X-Forwarded-For/-Proto of a request that sent neither

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = peer[0]
        server = self.server
        server.connections.add(self)
        if server.draining:
            transport.close()
            return
        self._head_deadline = self.loop.time() + server.header_timeout
        self._arm(self._head_deadline)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write(data)
        elif self._discard:
            self._discarded_at = self._now = self.loop.time()  # lingering: the client is still sending
            return
        elif self._upgraded is not None:
            self._upgraded.early_data(data)
        else:
            self._feed(data)

    def eof_received(self) -> bool | None:
        # As NGINX does: a client that closes its side has gone; what is in flight is abandoned
        # (499). What was already written to the socket is still sent before it closes.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        self._timer.cancel()
        self._cycle_timer.cancel()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        for cycle in list(self.cycles):
            cycle.client_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._write_paused_at = self.loop.time()
        self._arm(self._write_paused_at + self.server.idle_timeout)
        if self.cycles:
            up = self.cycles[0].upstream
            if up is not None:
                up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.cycles:
            up = self.cycles[0].upstream
            if up is not None:
                up.resume_reading()

    # -- parsing ------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Cut ``data`` at the boundaries of requests and of their parts, and hand each part on.

        llhttp reads heads, Content-Length bodies and trailer sections, given exactly those bytes;
        the reader itself finds where each ends, reads request methods (llhttp knows a fixed list:
        it is given "GET" for any other) and chunk-size lines (llhttp refuses whitespace the RFC
        allows in extensions). So every bound and every check holds in any split of the stream."""
        self._now = self.loop.time()  # for everything this read brings
        if self._pending:
            data = self._pending + data
            self._pending = b""
        pos = 0
        end = len(data)
        try:
            while pos < end and not self._discard:
                phase = self._phase
                if phase == _AT_START:
                    if not data.startswith(b"GET ", pos):
                        pos = self._read_start(data, pos)
                        continue
                    self._method = b"GET"  # most requests: nothing more to read before the head
                    self._phase = _IN_HEAD
                    pos = self._read_head(data, pos)
                elif phase == _IN_HEAD:
                    pos = self._read_head(data, pos)
                elif phase == _CHUNK_DATA:
                    pos = self._read_chunk_data(data, pos)
                elif phase == _IN_LENGTH:
                    pos = self._read_length(data, pos)
                elif phase == _CHUNK_SIZE:
                    pos = self._read_chunk_size(data, pos)
                elif phase == _CHUNK_END:
                    pos = self._read_chunk_end(data, pos)
                else:
                    pos = self._read_trailers(data, pos)
        except HttpParserCallbackError as exc:
            self._parse_error(exc.__context__ or exc)
        except HttpParserError as exc:
            self._parse_error(HttpError(400, f"malformed request: {exc}"))
        except Exception as exc:  # an HttpError of the reader's, or a fault of the proxy's (500)
            self._parse_error(exc)

    def _read_start(self, data: bytes, pos: int) -> int:
        """A request line other than ``GET ...`` begins at ``pos``: read its method."""
        first = data[pos]
        if first == 13 or first == 10:  # empty lines before a request (RFC 9112 2.2): llhttp skips them
            stop = pos + 1
            while stop < len(data) and (data[stop] == 13 or data[stop] == 10):
                stop += 1
            self.parser.feed_data(data[pos:stop])
            return stop
        method = request_method(data, pos)
        if method is None:  # the method goes on in the next read
            self._pending = data[pos:]
            return len(data)
        self._method = method
        if method not in LLHTTP_METHODS:
            self.parser.feed_data(b"GET")  # llhttp reads the rest of the line as for any method
            self._skip = len(method)
        self._phase = _IN_HEAD
        return pos

    def _read_head(self, data: bytes, pos: int) -> int:
        """The head from ``pos`` on, to llhttp, up to its blank line: at most ``max_header_bytes``
        from its first byte to its blank line included, whatever llhttp itself would drop.
        Between heads, ``_seen`` is 0, ``_tail`` empty and ``_raw`` None."""
        end = len(data)
        if self._tail:
            stop = self._blank_line(data, pos)
        else:
            stop = data.find(b"\r\n\r\n", pos)
            if stop >= 0:
                stop += 4
        seen = self._seen
        if seen + (end if stop < 0 else stop) - pos > self.server.max_header_bytes:
            raise HttpError(431, "request head too large")
        skip = self._skip
        if skip:
            self._skip = 0
        if stop < 0:  # the head goes on in the next read
            piece = data[pos:] if pos else data
            self._seen = seen + end - pos
            self._keep_tail(piece)
            if self._raw is None:
                self._raw = [piece]
            else:
                self._raw.append(piece)
            self.parser.feed_data(piece[skip:] if skip else piece)
            return end
        if seen:
            self._seen = 0
            self._tail = b""
        self._data = data
        self._head_from = pos
        self._head_to = stop
        try:
            self.parser.feed_data(data if stop == end and not pos and not skip else data[pos + skip : stop])
        except HttpParserUpgrade:
            return self._upgraded_at(data, stop)
        finally:
            self._data = b""  # a read may be large: not kept beyond its head
            self._raw = None
        if self._in_head:  # llhttp did not end the head at its blank line (it never should)
            raise HttpError(400, "malformed request head")
        return stop

    def _blank_line(self, data: bytes, pos: int) -> int:
        """Where the CRLF CRLF that ends a head (or a trailer section) ends, from ``pos`` on, counting
        the bytes of ``_tail`` before it; -1 if it is not in ``data``."""
        tail = self._tail
        if tail:
            i = (tail + data[pos : pos + 3]).find(b"\r\n\r\n")
            if i >= 0:
                return pos + i + 4 - len(tail)
        i = data.find(b"\r\n\r\n", pos)
        return i + 4 if i >= 0 else -1

    def _keep_tail(self, piece: bytes) -> None:
        self._tail = piece[-3:] if len(piece) >= 3 else (self._tail + piece)[-3:]

    def _raw_head(self) -> bytes:
        """The head being parsed as it came, blank line included."""
        last = self._data[self._head_from : self._head_to]
        return last if self._raw is None else b"".join(self._raw) + last

    def _read_length(self, data: bytes, pos: int) -> int:
        end = len(data)
        stop = min(end, pos + self._left)
        self._left -= stop - pos
        self.parser.feed_data(data if stop == end and not pos else data[pos:stop])
        return stop

    def _read_chunk_size(self, data: bytes, pos: int) -> int:
        line = self._line
        lf = data.find(b"\n", pos, pos + CHUNK_LINE_LIMIT - len(line))
        if lf < 0:
            if len(line) + len(data) - pos >= CHUNK_LINE_LIMIT:
                raise HttpError(400, f"chunk extensions longer than {CHUNK_LINE_LIMIT} bytes (a chunk-size line)")
            self._line = line + data[pos:]
            return len(data)
        self._line = b""
        size = chunk_size(line + data[pos : lf + 1] if line else data[pos : lf + 1])
        if size:
            self._left = size
            self._phase = _CHUNK_DATA
        else:  # the last chunk: llhttp reads the trailer section, after a last-chunk line of the reader's
            self._phase = _TRAILERS
            self._tail = b"\r\n"  # the blank line that ends an empty trailer section begins with this CRLF
            self.parser.feed_data(b"0\r\n")
        return lf + 1

    def _read_chunk_data(self, data: bytes, pos: int) -> int:
        end = len(data)
        stop = min(end, pos + self._left)
        self._left -= stop - pos
        if not self._left:
            self._phase = _CHUNK_END
            self._crlf = 0
        self.on_body(data if stop == end and not pos else data[pos:stop])
        return stop

    def _read_chunk_end(self, data: bytes, pos: int) -> int:
        end = len(data)
        got = self._crlf
        while got < 2 and pos < end:
            if data[pos] != (13 if got == 0 else 10):
                raise HttpError(400, "malformed request: chunk data not followed by CRLF")
            pos += 1
            got += 1
        self._crlf = got
        if got == 2:
            self._phase = _CHUNK_SIZE
        return pos

    def _read_trailers(self, data: bytes, pos: int) -> int:
        """The trailer section, to llhttp (which checks its lines), up to its blank line: at most
        ``max_header_bytes``. Trailers are not forwarded (see ``on_header``)."""
        end = len(data)
        stop = self._blank_line(data, pos)
        if self._seen + (end if stop < 0 else stop) - pos > self.server.max_header_bytes:
            raise HttpError(431, "request trailers too large")
        if stop < 0:
            piece = data[pos:]
            self._seen += end - pos
            self._keep_tail(piece)
            self.parser.feed_data(piece)
            return end
        self._seen = 0
        self._tail = b""
        self.parser.feed_data(data[pos:stop])
        if self._phase == _TRAILERS:  # llhttp did not end the message at the blank line (it never should)
            raise HttpError(400, "malformed request: trailer section")
        return stop

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        if self.closing:
            raise _Stop
        if len(self.cycles) >= MAX_PIPELINE:
            self.closing = True
            raise _Stop
        self._url = b""
        self._headers = []
        self._in_head = True
        if self._state != _HEAD:
            self._state = _HEAD
            self._head_deadline = self._now + self.server.header_timeout
            self._arm(self._head_deadline)

    def on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # The reader has bounded the head. Trailers (after the head) are dropped: none is forwarded,
        # so none of the fields that must not be trailers (RFC 9110 6.5.1) can reach a backend as one.
        if self._in_head and not self._synthetic:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        self._in_head = False
        parser = self.parser
        upgrade = parser.should_upgrade()
        info = inspect_request(self._method, self._url, parser.get_http_version(), self._headers,
                               keep_alive=parser.should_keep_alive(), upgrade=upgrade)  # fmt: skip
        if info.chunked:
            check_raw_transfer_encoding(self._raw_head())
            self._phase = _CHUNK_SIZE
            self._line = b""
        elif info.content_length:
            self._phase = _IN_LENGTH
            self._left = info.content_length
        elif info.plain and self._raw is None and not self._head_from:
            # The head is the start of this read (the usual case): it is sent on as it came.
            info.raw_head = self._data[: self._head_to - 2]
        server = self.server
        limit = server.max_body_bytes
        if limit and info.content_length is not None and info.content_length > limit:
            raise HttpError(413, f"request body larger than {limit} bytes")
        now = self._now
        cycle = self._new_cycle(info, now)
        self._reframe = info.has_body and upgrade  # an ignored upgrade (h2c...) with a body
        if not info.keep_alive or info.websocket:
            self.closing = True
        self._state = _BODY if info.has_body else _WAIT
        self._body_at = now
        if info.has_body:
            self._arm(now + server.idle_timeout)
        self._receiving = cycle
        self.cycles.append(cycle)
        server.in_flight += 1
        if len(self.cycles) == 1:
            cycle.start(now)
        else:
            self.pause(_BY_PIPELINE)

    def on_body(self, body: bytes) -> None:
        cycle = self._receiving
        if cycle is not None:
            self._body_at = self._now
            cycle.client_body(body)

    def on_message_complete(self) -> None:
        if self._synthetic:
            return
        if self._reframe:
            self._reframe = False  # llhttp ends an upgrade request at its head; the body follows
            return
        self._phase = _AT_START
        cycle, self._receiving = self._receiving, None
        if self._state != _HEAD:
            self._state = _WAIT
        if cycle is not None:
            cycle.client_done()

    def _new_cycle(self, info: RequestInfo, now: float) -> RequestCycle:
        server = self.server
        client_ip = server.trusted.client_ip(self.peer, info.forwarded_for) if server.trusted.networks else self.peer
        # X-Session-ID names a session of the client's own: the session store binds it. Without one,
        # the affinity cookie names the backend itself (signed), so nothing is stored per client.
        session = info.session_id
        prefer = None
        cookie = server.sticky and session is None and server.affinity is not None
        if cookie and info.cookie_session is not None:
            assert server.affinity is not None
            prefer = server.affinity.backend_of(info.cookie_session)
        seq = 0 if info.request_id else server.next_request_seq()
        # What routing reads of a request; the same for most requests on a connection, so it is kept
        # (routing never changes it). Its request_id is left out: the cycle carries the request's.
        request = self._request
        if (request is None or self._request_ip != client_ip or self._request_workload is not info.workload
                or self._request_session != session):  # fmt: skip
            request = self._request = _new_request(client_ip, info.workload, session, None)  # validated above
            # Its fields, as plain attributes: a pydantic model's are slower to read.
            self._request_ip, self._request_workload, self._request_session = client_ip, info.workload, session
        return RequestCycle(self, info, request, info.request_id, seq, prefer, cookie, now)

    def _upgraded_at(self, data: bytes, stop: int) -> int:
        """llhttp stopped at the end of an upgrade request's head, at ``data[stop]``: where the
        reader goes on (the end of ``data`` when the rest is not HTTP)."""
        cycle = self.cycles[-1] if self.cycles else None
        if cycle is None or cycle.finished:
            self._discard = True
            return len(data)
        if cycle.info.websocket:
            self._upgraded = cycle  # nothing more is HTTP on this connection
            if stop < len(data):
                cycle.early_data(data[stop:])
            return len(data)
        if not cycle.body_done:
            # An upgrade the proxy ignores, with a body: llhttp stopped at the head. Read the body
            # (and what follows) with a fresh parser primed by a head with the same framing.
            self.parser = HttpRequestParser(self)
            self._synthetic = True
            try:
                self.parser.feed_data(b"POST / HTTP/1.1\r\nHost: x\r\n%s\r\n" % request_framing(cycle.info))
            finally:
                self._synthetic = False
        return stop

    def _parse_error(self, exc: BaseException) -> None:
        if isinstance(exc, _Stop):
            self._discard = True
            return
        if not isinstance(exc, HttpError):
            log_event("proxy_internal_error", logging.ERROR, stage="parsing", error=repr(exc))
            exc = HttpError(500, "internal error of the proxy")
        self._discard = True
        self.closing = True
        cycle, self._receiving = self._receiving, None
        if cycle is not None and cycle.task is not None:
            cycle.client_failed(exc)
            return
        if cycle is not None:  # queued behind another request: it is simply refused
            cycle.finished = True
            self.cycles.remove(cycle)
            self.server.cycle_done()
        self.refuse(exc)

    def refuse(self, error: HttpError) -> None:
        """Answer ``error`` after the requests already queued, then close."""
        self._discard = True
        self.closing = True
        request_id = self.server.new_request_id()
        self.server.log(request_id=request_id, client_ip=self.peer, method=None, target=None, status=error.status)
        answer = error_response(error.status, error.message, request_id, close=True, retry_after=error.retry_after)
        if self.cycles:
            self._final = answer
        else:
            self.write(answer)
            self.linger_close()

    # -- reading, writing, closing ----------------------------------------------------------

    def pause(self, reason: int) -> None:
        if not self._paused:
            self.transport.pause_reading()
        self._paused |= reason

    def resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused:
                self.transport.resume_reading()
                self._body_at = self.loop.time()  # a pause of ours is not the client's idleness

    def write(self, data: bytes) -> None:
        if self._out is not None:
            self._out.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def cork(self) -> None:
        """Collect writes until :meth:`uncork` (one send for a head and a body that came in one read)."""
        if self._out is None:
            self._out = []

    def uncork(self) -> None:
        if not self._out:
            self._out = None
        elif not self._queued:  # sent with the batch at the end of the loop's turn
            self._queued = True
            self.server.pool.batch.add(self.flush)

    def flush(self) -> None:
        self._queued = False
        out, self._out = self._out, None
        if out and not self.transport.is_closing():
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)

    def forwarded_lines(self) -> bytes:
        """``X-Forwarded-For`` and ``X-Forwarded-Proto`` for a request that brought neither: the same
        for every such request on this connection."""
        lines = self._forwarded
        if lines is None:
            lines = self._forwarded = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\n" % self.peer.encode()
        return lines

    def start_tunnel(self, upstream: UpstreamConnection, early: list[bytes]) -> None:
        self._upgraded = None
        self._tunnel = upstream
        self._state = _WAIT
        if early:
            upstream.writelines(early)

    def drain(self) -> None:
        """Serve what is in flight, then close; close now if nothing is."""
        self.closing = True
        if not self.cycles:
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
        self._discard = True
        transport = self.transport
        if transport.is_closing():
            return
        if self._queued:
            self.flush()
        if self._paused:
            self._paused = 0
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
            now = self.loop.time()
            self._discarded_at = now
            self._linger_until = now + LINGER_MAX
            self._linger = self.loop.call_later(self.server.linger_seconds, self._linger_check)
        else:
            transport.close()

    def _linger_check(self) -> None:
        now = self.loop.time()
        quiet_at = self._discarded_at + self.server.linger_seconds
        if now >= quiet_at or now >= self._linger_until:
            self._linger = None
            self.transport.close()
        else:
            self._linger = self.loop.call_at(min(quiet_at, self._linger_until), self._linger_check)

    def cycle_finished(self, cycle: RequestCycle, now: float) -> None:
        server = self.server
        server.in_flight -= 1
        if server._drained is not None:
            server.cycle_done_drained()
        cycles = self.cycles
        if cycles and cycles[0] is cycle:
            cycles.popleft()
        elif cycle in cycles:
            cycles.remove(cycle)
        if self.lost:
            return
        if cycle.tunnel:
            self.close()
            return
        if not cycle.keep_alive or server.draining:
            self.closing = True
            if self.cycles:  # the answer said the connection closes: requests queued behind it are dropped
                for queued in self.cycles:
                    queued.finished = True
                    server.cycle_done()
                self.cycles.clear()
                self._receiving = self._upgraded = None
                self._discard = True
        if self.cycles:
            if len(self.cycles) == 1:
                self.resume(_BY_PIPELINE)
            self.cycles[0].start(self.loop.time())
        elif self._final is not None:
            self.write(self._final)
            self.linger_close()
        elif self.closing:
            if self._receiving is not None or self._discard:
                self.linger_close()
            else:
                self.close()
        elif self._state == _WAIT:
            self._state = _IDLE
            self._idle_since = now
            self._arm(self._idle_since + server.idle_timeout)

    # -- timeouts ------------------------------------------------------------------------------

    def watch(self, when: float) -> None:
        """Have the cycle timer fire at ``when`` at the latest (a cycle's ``timer_at``)."""
        self._cycle_timer.arm(when)

    def _on_cycle_timer(self) -> None:
        now = self.loop.time()
        later = math.inf
        for cycle in list(self.cycles):
            when = cycle.timer_at
            if when is None:
                continue
            if now >= when:
                cycle._on_timer()
            elif when < later:
                later = when
        if later < math.inf:
            self.watch(later)

    def _arm(self, when: float) -> None:
        self._timer.arm(when)

    def _on_timer(self) -> None:
        if self.lost or self._discard:
            return
        server = self.server
        now = self.loop.time()
        state = self._state
        deadline = math.inf
        if state == _HEAD:
            if now >= self._head_deadline:
                self._parse_error(HttpError(408, f"request head not received within {server.header_timeout:g} s"))
                return
            deadline = self._head_deadline
        elif state == _IDLE and not self.cycles:
            if now >= self._idle_since + server.idle_timeout:
                self.close()
                return
            deadline = self._idle_since + server.idle_timeout
        elif state == _BODY and not self._paused:
            if now >= self._body_at + server.idle_timeout:
                self._parse_error(HttpError(408, f"request body stalled for {server.idle_timeout:g} s"))
                return
            deadline = self._body_at + server.idle_timeout
        elif state == _BODY:
            deadline = now + server.idle_timeout  # paused by us: the upstream side watches the backend
        if self.write_paused:
            if now >= self._write_paused_at + server.idle_timeout:
                log_event("client_not_reading", logging.DEBUG, client_ip=self.peer)
                self.transport.abort()
                return
            deadline = min(deadline, self._write_paused_at + server.idle_timeout)
        if deadline < math.inf:
            self._arm(deadline)
