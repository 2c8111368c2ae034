"""Upstream side of the proxy: keep-alive connections to backends, pooled per backend.

An :class:`UpstreamConnection` is an ``asyncio.Protocol`` with an llhttp
response parser. While it serves one exchange it reports everything to that
exchange's :class:`UpstreamSink` (:class:`.relay.Relay`): the
response head, body pieces, the end, a lost connection, and write-buffer
pressure (``pause_writing``/``resume_writing``), so the exchange can pause the
client that feeds it. After a ``101 Switching Protocols`` the connection is a
raw tunnel and every byte goes to :meth:`UpstreamSink.upstream_tunnel`.

:class:`UpstreamPool` keeps idle connections per backend id (last in, first
out, so the surplus ages out), closes them after ``idle_timeout`` or when the
backend closes them, and never hands out one that has closed. A backend closes
an idle connection when its own keep-alive timeout runs out, and a request
written at that moment is lost: so a connection is not reused once it has been
idle for nearly the backend's timeout (learned from ``Keep-Alive: timeout=N``),
one idle for a while is checked for an end of stream before it is handed out,
and an exchange on a reused connection that ends before any byte of a response
is tried again on a fresh one (see ``relay.py``, ``upstream_lost``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from .response import ResponseInfo, UpstreamProtocolError
from .upstream_tls import UpstreamTLSError, tls_error

if TYPE_CHECKING:
    from .upstream_tls import UpstreamTLS

IDLE_TIMEOUT: Final = 30.0  # seconds an unused pooled connection is kept
MAX_IDLE_PER_BACKEND: Final = 128
MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024
MAX_KEYS_LEARNED: Final = 4096  # Keep-Alive values remembered per key, at most
PEEK_AFTER: Final = 0.25  # seconds idle after which a pooled connection is checked for EOF before reuse
_get_running_loop: Final = asyncio.get_running_loop  # held: the compiled build reads a module's attribute by name


class UpstreamSink:
    """What an exchange is told about its upstream connection (all called from protocol callbacks).

    ``upstream_batch(True)`` and ``upstream_batch(False)`` bracket the handling of one read, so
    that what it produces for the client can go out in one write. A base class rather than a
    Protocol: the compiled build then calls these methods directly, not by name."""

    __slots__ = ()

    def upstream_head(self, response: ResponseInfo, keep_alive: bool) -> None:
        raise NotImplementedError

    def upstream_body(self, data: bytes) -> None:
        raise NotImplementedError

    def upstream_done(self) -> None:
        raise NotImplementedError

    def upstream_lost(self, error: BaseException | None) -> None:
        raise NotImplementedError

    def upstream_tunnel(self, data: bytes) -> None:
        raise NotImplementedError

    def upstream_paused(self, paused: bool) -> None:
        raise NotImplementedError

    def upstream_batch(self, begin: bool) -> None:
        raise NotImplementedError


class _Stop(Exception):
    """Raised in a parser callback to stop parsing the rest of the data."""


def _no_transport(data: bytes) -> None:
    raise RuntimeError("not connected")


def _no_transport_closing() -> bool:
    raise RuntimeError("not connected")


class WriteBatch:
    """Sends what connections wrote during one turn of the event loop together, at its end.

    The loop runs every callback of one wake-up (reads from many connections) and then this
    batch's flush: the writes go out in one burst, so a peer that sleeps in ``epoll_wait`` is
    woken once for a burst of answers, not once per answer (waking a process on another CPU
    is a large share of a proxied request's kernel time). Nothing waits longer than the rest
    of the loop's turn."""

    __slots__ = ("_queue", "_scheduled", "_run")

    def __init__(self) -> None:
        self._queue: list[Callable[[], None]] = []  # the connections' flush methods
        self._scheduled = False
        self._run = self.run  # bound once

    def add(self, flush: Callable[[], None]) -> None:
        self._queue.append(flush)
        if not self._scheduled:
            self._scheduled = True
            _get_running_loop().call_soon(self._run)

    def run(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for flush in queue:
            flush()


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "pool",
        "key",
        "transport",
        "parser",
        "sink",
        "head_request",
        "keep_alive",
        "tunnel",
        "closed",
        "received",
        "reused",
        "tls",
        "retired",
        "read_paused",
        "held",
        "idle_since",
        "_reason",
        "_response",
        "_head_bytes",
        "_later",
        "_sock",
        "_write",
        "_is_closing",
        "_feed",
        "_status",
        "_keeps_alive",
        "_flush",
    )

    def __init__(self, pool: UpstreamPool, key: str) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        # llhttp's methods on the request path, bound once (and again with every new parser): the
        # compiled build calls a method of an object whose class it does not know by name (a lookup each time).
        parser = self.parser = HttpResponseParser(self)
        self._feed = parser.feed_data
        self._status = parser.get_status_code
        self._keeps_alive = parser.should_keep_alive
        # The transport's methods on the request path, bound once by connection_made.
        self._write: Callable[[bytes], object] = _no_transport
        self._is_closing: Callable[[], bool] = _no_transport_closing
        self._flush = self.flush  # handed to the write batch
        self.sink: UpstreamSink | None = None
        self.head_request = False
        self.keep_alive = True  # of the latest response; a fresh connection is reusable
        self.tunnel = False
        self.closed = False
        self.received = False  # a byte of the current exchange's response arrived
        self.reused = False  # the current exchange runs on a connection taken from the pool
        self.tls = False  # over TLS: the extra descriptor sees TLS records, not HTTP
        self.retired = False  # made with TLS settings a reload has replaced: not pooled again
        self.read_paused = False
        self.held = False  # reading was paused during this exchange: its client did not keep up
        self.idle_since = 0.0
        self._reason = b""
        self._response = ResponseInfo()  # the head being parsed
        self._head_bytes = 0
        self._later: bytes | None = None  # a request head to send with the pool's batch
        # A second descriptor of the same socket, for what the transport cannot do: peek for an
        # end of stream before reuse, and read what the backend sent before a write failed (the
        # event loop closes its descriptor on a write error without reading what is buffered).
        self._sock: socket.socket | None = None

    def _new_parser(self) -> None:
        parser = self.parser = HttpResponseParser(self)
        self._feed = parser.feed_data
        self._status = parser.get_status_code
        self._keeps_alive = parser.should_keep_alive

    # -- used by the exchange --------------------------------------------------------

    def begin(self, sink: UpstreamSink, *, head_request: bool) -> None:
        self.sink = sink
        self.head_request = head_request
        self.received = False
        self.held = False
        self.keep_alive = False

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self._write(data)

    def write_later(self, head: bytes) -> None:
        """Send a whole request (nothing follows it) with the pool's batch, at the end of the loop's turn."""
        self._later = head
        self.pool.batch.add(self._flush)

    def flush(self) -> None:
        head, self._later = self._later, None
        if head is not None and self.transport is not None and not self._is_closing():
            self._write(head)

    def writelines(self, parts: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(parts)

    def write_eof(self) -> None:
        if self.transport is not None and not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.transport.is_closing():
            self.read_paused = self.held = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Close without reporting to the sink (the exchange gave the connection up)."""
        self.sink = None
        self._later = None  # a request not sent yet is not sent at all
        if self.transport is not None:
            self.transport.close()
        self._drop_sock()

    def abort(self) -> None:
        self.sink = None
        self._later = None
        if self.transport is not None:
            self.transport.abort()
        self._drop_sock()

    def peer_closed(self) -> bool:
        """True if the backend has ended the stream (or reset it) while the connection sat idle,
        though the event loop has not seen it yet; a byte waiting counts too (nothing may come
        between two exchanges). One ``recv`` with MSG_PEEK, without blocking. Over TLS the byte
        is a record's (a close_notify alert before the end, most likely): not reusable either."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False  # nothing to read: open and quiet
        except OSError:
            return True  # reset
        return True  # an end of stream, or a stray byte: either way not reusable

    def _drop_sock(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _read_what_is_left(self) -> None:
        """After a failed write: hand the parser what the backend sent before it closed, such as
        a ``413`` answered before the request body was read. Not over TLS: the socket holds
        encrypted records that only the transport's TLS state could read, and it is gone."""
        if self.tls:
            return
        sock = self._sock
        while sock is not None and self.sink is not None:
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except OSError:  # nothing more (EAGAIN), or the reset itself
                return
            if not data:
                return
            self.data_received(data)

    @property
    def write_buffer_size(self) -> int:
        return 0 if self.transport is None else self.transport.get_write_buffer_size()

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport
        self._write = self.transport.write
        self._is_closing = self.transport.is_closing
        raw = transport.get_extra_info("socket")
        if raw is not None:
            try:
                self._sock = socket.socket(fileno=socket.dup(raw.fileno()))
            except OSError:  # out of descriptors: the connection works without the extra checks
                self._sock = None

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            self.abort()  # a byte while idle: nothing can be trusted on this connection any more
            return
        if self.tunnel:
            sink.upstream_tunnel(data)
            return
        self.received = True
        sink.upstream_batch(True)
        try:
            self._feed(data)
        except HttpParserUpgrade as exc:
            self.tunnel = True
            rest = data[exc.args[0] :]
            if rest and self.sink is not None:
                self.sink.upstream_tunnel(rest)
        except HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Stop):
                return
            self._fail(exc.__context__ or exc)
        except HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid response from the backend: {exc}"))
        finally:
            sink.upstream_batch(False)

    def eof_received(self) -> bool | None:
        return False  # close; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.sink is not None and not self.tunnel:
            self._read_what_is_left()
        self._drop_sock()
        self.closed = True
        sink = self.sink
        self.sink = None
        self.pool.forget(self)
        if sink is not None:
            sink.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_paused(False)

    def _fail(self, error: BaseException) -> None:
        sink = self.sink
        self.abort()
        if sink is not None:
            sink.upstream_lost(error)

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.sink is None:  # bytes after the response: the connection cannot be reused
            self.abort()
            raise _Stop
        self._reason = b""
        self._response.reset()
        self._head_bytes = 0

    def on_status(self, reason: bytes) -> None:
        self._reason = self._reason + reason if self._reason else reason  # usually one piece: not copied

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
            raise UpstreamProtocolError(f"response head larger than {MAX_RESPONSE_HEAD_BYTES} bytes")
        if len(name) == 10 and name[0] | 0x20 == 0x6B and name.lower() == b"keep-alive":  # not Connection
            self.pool.learn_keep_alive(self.key, value)
        self._response.add(name, value)

    def on_headers_complete(self) -> None:
        sink = self.sink
        if sink is None:
            raise _Stop
        status = self._status()
        self.keep_alive = self._keeps_alive()  # flags are reset once the message ends
        response = self._response
        response.complete(status, self._reason)
        sink.upstream_head(response, self.keep_alive)
        if self.head_request and status >= 200 and self.sink is sink:
            # llhttp cannot be told that a response to HEAD has no body: end it here.
            self._new_parser()
            sink.upstream_done()
            raise _Stop
        if self.sink is not sink:
            raise _Stop  # the exchange gave up on this response

    def on_body(self, body: bytes) -> None:
        if self.sink is None:
            raise _Stop
        self.sink.upstream_body(body)

    def on_message_complete(self) -> None:
        sink = self.sink
        if sink is None:
            raise _Stop
        if self._response.status // 100 != 1 or self.tunnel:
            sink.upstream_done()


class UpstreamPool:
    """Idle keep-alive connections per backend id."""

    def __init__(
        self,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_idle: int = MAX_IDLE_PER_BACKEND,
        batch: WriteBatch | None = None,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._open: set[UpstreamConnection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._keep_alive: dict[str, float] = {}  # backend id -> the idle age up to which reuse is safe
        self._keep_alive_seen: dict[str, bytes] = {}  # backend id -> the Keep-Alive value it was learned from
        self.connects = 0  # connections opened, for tests and stats
        self.stale = 0  # pooled connections found closed or too old when taken
        self.batch = batch if batch is not None else WriteBatch()  # the proxy's client connections use it too
        self.tls: UpstreamTLS | None = None  # of new connections (configure_tls)
        # The PROXY protocol version new connections begin with (0: none). Such a connection speaks
        # for one client: it is pooled under a key of its own (see the exchange's _connect).
        self.proxy_protocol = 0

    def take(self, key: str, now: float) -> UpstreamConnection | None:
        """An idle connection to backend ``key`` that is still open and young enough, or None.
        ``now``: the loop's time."""
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            if conn.closed or conn.transport is None or conn._is_closing():
                continue
            idle = now - conn.idle_since
            if idle >= self._keep_alive.get(key, self.idle_timeout) or (idle >= PEEK_AFTER and conn.peer_closed()):
                self.stale += 1
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    def learn_keep_alive(self, key: str, value: bytes) -> None:
        """``Keep-Alive: timeout=N`` from backend ``key``: reuse its connections only while they are
        clearly younger than N seconds (a quarter of N, at most 1 s, is kept as a margin)."""
        if self._keep_alive_seen.get(key) == value:
            return  # the usual case: the same header on every response
        if len(self._keep_alive_seen) >= MAX_KEYS_LEARNED:  # keys per client (PROXY protocol): bounded
            self._keep_alive_seen.clear()
            self._keep_alive.clear()
        self._keep_alive_seen[key] = value
        for param in value.split(b","):
            name, _, number = param.partition(b"=")
            if name.strip().lower() == b"timeout" and number.strip().isdigit():
                seconds = float(number.strip()[:6])
                self._keep_alive[key] = min(self.idle_timeout, max(0.0, seconds - min(1.0, seconds / 4)))
                return

    def configure_tls(self, tls: UpstreamTLS | None) -> None:
        """TLS for new connections from now on (None: plain TCP). Changed settings (or a changed
        file they name) retire every connection made before: idle ones close now, busy ones once
        their exchange ends, so no request goes out with the old settings (nor in plaintext
        after a switch to TLS)."""
        old = self.tls
        if (old is None and tls is None) or (
            old is not None and tls is not None and old.fingerprint == tls.fingerprint
        ):
            return
        self.tls = tls
        self._retire_all()

    def configure_proxy_protocol(self, version: int) -> None:
        """Begin new connections with a PROXY protocol header of ``version`` (0: none); a change
        retires every connection made before, as a TLS change does."""
        if version != self.proxy_protocol:
            self.proxy_protocol = version
            self._retire_all()

    def _retire_all(self) -> None:
        for conn in self._open:
            conn.retired = True
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()

    async def connect(
        self, key: str, host: str, port: int, timeout: float, preamble: bytes | None = None
    ) -> UpstreamConnection:
        """A new connection to backend ``key`` at ``host:port``, its TLS handshake done (when the
        pool has TLS), within ``timeout`` seconds: else :class:`asyncio.TimeoutError` (the TCP
        connect), :class:`UpstreamTLSError` (the handshake) or the connect's OSError.
        ``preamble``: bytes sent first, before any TLS (a PROXY protocol header)."""
        loop = _get_running_loop()
        tls = self.tls
        version = self.proxy_protocol
        if tls is None:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self, key), host, port), timeout
            )
            if preamble is not None:
                conn.write(preamble)  # before anything the exchange writes
        else:
            conn = await self._connect_tls(loop, tls, key, host, port, timeout, preamble)
        if self.tls is not tls or self.proxy_protocol != version:  # settings changed while it connected
            conn.retired = True
        self.connects += 1
        self._open.add(conn)
        return conn

    async def _connect_tls(
        self,
        loop: asyncio.AbstractEventLoop,
        tls: UpstreamTLS,
        key: str,
        host: str,
        port: int,
        timeout: float,
        preamble: bytes | None,
    ) -> UpstreamConnection:
        """TCP first, then the handshake on it (``start_tls``), so that a failure is known to be
        the handshake's: a backend failure of its own kind, logged as such, never a plain retry."""
        deadline = loop.time() + timeout
        raw, placeholder = await asyncio.wait_for(loop.create_connection(asyncio.Protocol, host, port), timeout)
        if preamble is not None:
            raw.write(preamble)  # a PROXY header goes before the ClientHello, in the clear
        left = max(0.0, deadline - loop.time())
        try:
            transport = await asyncio.wait_for(
                loop.start_tls(
                    raw,
                    placeholder,
                    tls.context,
                    server_hostname=tls.server_hostname(host),
                    ssl_handshake_timeout=timeout,  # the loop's own bound; wait_for's (what is left) comes first
                ),
                left,
            )
        except (OSError, ValueError, asyncio.TimeoutError) as exc:  # SSLError is an OSError
            raw.abort()
            raise tls_error(exc, timeout) from exc
        except BaseException:
            raw.abort()
            raise
        if transport is None:  # the loop had nothing to wrap (closed under it)
            raw.abort()
            raise UpstreamTLSError("the handshake failed", "the connection closed during the handshake")
        conn = UpstreamConnection(self, key)
        conn.tls = True
        transport.set_protocol(conn)
        conn.connection_made(transport)
        return conn

    def release(self, conn: UpstreamConnection, *, reusable: bool, now: float | None = None) -> None:
        """Give a connection back after an exchange; kept only if ``reusable`` and keep-alive.
        ``now``: the loop's time, when the caller has it."""
        conn.sink = None
        transport = conn.transport
        if (
            not reusable
            or not conn.keep_alive
            or conn.closed
            or conn.retired
            or transport is None
            or conn._is_closing()
        ):
            conn.close()
            return
        stack = self._idle.setdefault(conn.key, [])
        if len(stack) >= self.max_idle:
            conn.close()
            return
        conn.resume_reading()
        conn.idle_since = now if now is not None else asyncio.get_running_loop().time()
        stack.append(conn)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.idle_timeout / 2, self._expire)

    def forget(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)  # idle stacks drop closed connections lazily

    def _expire(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self.idle_timeout
        for key, stack in list(self._idle.items()):
            live = []
            for conn in stack:
                if conn.closed:
                    continue
                if conn.idle_since <= cutoff:
                    conn.close()
                else:
                    live.append(conn)
            if live:
                self._idle[key] = live
            else:
                del self._idle[key]
        if self._idle:
            self._sweep = loop.call_later(self.idle_timeout / 2, self._expire)

    @property
    def idle(self) -> int:
        return sum(len(s) for s in self._idle.values())

    def retire(self) -> None:
        """No longer used for new requests (its pool went): close the idle connections now, and
        the busy ones as their exchanges give them back."""
        self.max_idle = 0
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()

    def close(self) -> None:
        """Close every connection, idle or busy."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._idle.clear()
        for conn in list(self._open):
            conn.abort()
        self._open.clear()
