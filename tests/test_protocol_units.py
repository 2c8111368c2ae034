"""The proxy's protocol objects with fake transports: no sockets.

The reader (``server/reader.py``) is fed every input whole and in pieces of
1, 2, 3 and 7 bytes (each piece one read), as h11 and uvicorn test their
parsers; a :class:`ClientConnection` and its :class:`Exchange` run against a
fake client transport and a fake upstream transport taken from the pool, so
every phase of an exchange is driven by hand, byte by byte where it matters.
The socket-level tests (test_proxy*, test_http_*) run the same code for real.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from load_balancing_module import BackendConfig, HealthCheckConfig, LoadBalancingModule
from load_balancing_module.server.client import ClientConnection
from load_balancing_module.server.config import ServerConfig
from load_balancing_module.server.context import ProxyContext
from load_balancing_module.server.exchange import Exchange
from load_balancing_module.server.flow import BY_BACKLOG, BY_PIPELINE, BY_UPSTREAM, FlowControl
from load_balancing_module.server.http import HttpError, RequestInfo
from load_balancing_module.server.phase import Phase
from load_balancing_module.server.reader import RequestReader, RequestSink
from load_balancing_module.server.upstream import UpstreamConnection

SPLITS = [0, 1, 2, 3, 7]
SPLIT_IDS = ["whole", "bytes", "by2", "by3", "by7"]


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data] if size == 0 else [data[i : i + size] for i in range(0, len(data), size)]


class FakeTransport:
    """What asyncio's transports do that the proxy uses, recorded."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.reading = True
        self.closing = False
        self.aborted = False
        self.eof = False

    @property
    def data(self) -> bytes:
        return b"".join(self.out)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def writelines(self, parts: list[bytes]) -> None:
        self.out.append(b"".join(parts))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 0


# -- the reader -------------------------------------------------------------------------------


class Events(RequestSink):
    """A RequestSink that records what the reader reports."""

    def __init__(self) -> None:
        self.heads: list[RequestInfo] = []
        self.bodies: list[bytes] = []
        self.done = 0
        self.errors: list[BaseException] = []
        self.reader: RequestReader | None = None

    def message_begun(self) -> bool:
        self.bodies.append(b"")
        return True

    def head_received(self, info: RequestInfo, upgrade: bool) -> None:
        self.heads.append(info)

    def body_received(self, data: bytes) -> None:
        self.bodies[-1] += data

    def message_done(self) -> None:
        self.done += 1

    def upgraded_at(self, data: bytes, stop: int) -> int:
        return len(data)

    def read_failed(self, exc: BaseException) -> None:
        self.errors.append(exc)


def context(**fields: Any) -> ProxyContext:
    """A proxy context (its module is never initialised: nothing is routed)."""
    config = ServerConfig(
        listen="127.0.0.1:0",
        health_check=HealthCheckConfig(enabled=False),
        retry_backoff_base=0,
        retry_backoff_max=0,
        **fields,
    )
    return ProxyContext(LoadBalancingModule(config.module_config()), config, logging.getLogger("test.protocol"))


def read(data: bytes, size: int, *, max_header_bytes: int = 8192) -> Events:
    events = Events()
    reader = RequestReader(context(limits={"max_header_bytes": max_header_bytes}), events)
    for piece in pieces(data, size):
        reader.feed(piece, 0.0)
    return events


@pytest.mark.parametrize("size", SPLITS, ids=SPLIT_IDS)
def test_the_reader_reports_each_request_its_body_and_its_end_in_any_split(size: int) -> None:
    stream = (
        b"\r\nGET /a HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        b"PURGE /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3 ; ext = "v"\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n'
    )
    events = read(stream, size)
    assert not events.errors
    assert [(h.method, h.target) for h in events.heads] == [(b"GET", b"/a"), (b"POST", b"/b"), (b"PURGE", b"/c")]
    assert events.bodies == [b"", b"hello", b"abcde"]
    assert events.done == 3
    assert events.heads[2].chunked and events.heads[1].content_length == 5


@pytest.mark.parametrize("size", SPLITS, ids=SPLIT_IDS)
@pytest.mark.parametrize(
    ("stream", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 300 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1;" + b"a" * 5000, 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ],
    ids=["head-too-large", "chunk-without-crlf", "chunk-line-too-long", "length-and-chunked"],
)
def test_the_reader_refuses_what_breaks_a_rule_in_any_split(stream: bytes, status: int, size: int) -> None:
    events = read(stream, size, max_header_bytes=256)
    assert [e.status for e in events.errors if isinstance(e, HttpError)] == [status]


def test_the_reader_reads_nothing_once_stopped() -> None:
    events = Events()
    reader = RequestReader(context(), events)
    reader.stopped = True
    reader.feed(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", 0.0)
    assert events.heads == [] and events.done == 0


# -- flow control ------------------------------------------------------------------------------


def test_reading_resumes_only_when_the_last_reason_is_gone() -> None:
    transport = FakeTransport()
    flow = FlowControl(transport)  # type: ignore[arg-type]
    flow.pause(BY_UPSTREAM)
    flow.pause(BY_PIPELINE)
    assert not transport.reading and flow.paused_by(BY_PIPELINE) and not flow.paused_by(BY_BACKLOG)
    assert flow.resume(BY_UPSTREAM) is False and not transport.reading
    assert flow.resume(BY_BACKLOG) is False  # never paused for it: nothing changes
    assert flow.resume(BY_PIPELINE) is True and transport.reading and not flow.reading_paused


# -- a connection and its exchanges, on fake transports ---------------------------------------------


class Rig:
    """A module with ``backends`` (never contacted: each has a pooled fake connection), a proxy
    context, and one client connection on a fake transport."""

    def __init__(self, backends: int = 1, *, pooled: bool = True) -> None:
        self.ctx = context()
        self.lb = self.ctx.lb
        self.backends = backends
        self.pooled = pooled
        self.upstreams: dict[str, list[FakeTransport]] = {}
        self.client = FakeTransport()
        self.conn: ClientConnection | None = None

    async def start(self) -> ClientConnection:
        await self.lb.initialize()
        for port in range(1, self.backends + 1):
            backend_id = await self.lb.add_backend(BackendConfig(host="127.0.0.1", port=port))
            self.upstreams[backend_id] = []
            if self.pooled:
                self.pool_connection(backend_id)
        self.conn = ClientConnection(self.ctx)
        self.conn.connection_made(self.client)  # type: ignore[arg-type]
        return self.conn

    def pool_connection(self, backend_id: str) -> UpstreamConnection:
        up = UpstreamConnection(self.ctx.pool, backend_id)
        transport = FakeTransport()
        up.connection_made(transport)  # type: ignore[arg-type]
        self.upstreams[backend_id].append(transport)
        self.ctx.pool.release(up, reusable=True, now=asyncio.get_running_loop().time())
        return up

    def exchange(self) -> Exchange:
        assert self.conn is not None and self.conn.exchanges
        return self.conn.exchanges[0]

    def feed(self, data: bytes, size: int) -> None:
        assert self.conn is not None
        for piece in pieces(data, size):
            self.conn.data_received(piece)

    async def stop(self) -> None:
        await self.lb.shutdown()


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def upstream_of(exchange: Exchange) -> UpstreamConnection:
    assert exchange.upstream is not None
    return exchange.upstream


@pytest.mark.parametrize("size", SPLITS, ids=SPLIT_IDS)
async def test_an_exchange_goes_sent_streaming_done_and_gives_its_connection_back(size: int) -> None:
    rig = Rig()
    await rig.start()
    try:
        rig.feed(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n", size)
        exchange = rig.exchange()
        assert exchange.phase is Phase.SENT  # routed and sent without waiting (no task)
        assert exchange.task is None
        await turns(1)  # the head goes out with the batch at the end of the loop's turn
        (backend_id,) = rig.upstreams
        sent = rig.upstreams[backend_id][0].data
        assert sent.startswith(b"GET /x HTTP/1.1\r\n") and b"X-Forwarded-For: 127.0.0.1\r\n" in sent
        up = upstream_of(exchange)
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nServer: b\r\n\r\nbody"
        parts = pieces(response, size)
        up.data_received(parts[0])
        if len(parts) > 1:
            assert exchange.phase in (Phase.SENT, Phase.STREAMING)
        for part in parts[1:]:
            up.data_received(part)
        await turns()
        assert exchange.phase is Phase.DONE
        answer = rig.client.data
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nbody")
        assert b"X-Request-ID: " in answer and b"Server: b\r\n" in answer
        backend = rig.lb.backends[backend_id]
        assert (backend.successful, backend.failed, backend.in_flight) == (1, 0, 0)
        assert rig.ctx.pool.idle == 1 and rig.ctx.in_flight == 0
    finally:
        await rig.stop()


# The response head is read from the bytes that carried it once llhttp has accepted it (there is
# no per-header callback): heads split anywhere, interim heads followed by the final one in the
# same read, blank lines before a head, odd whitespace and the body right after the head.
INTERIM_AND_FINAL = (
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    b"\r\nHTTP/1.1 102 Processing\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nServer:b\r\nX-Ws: \t  v \t\r\nE:\r\nConnection: keep-alive, X-Hop\r\n"
    b"X-Hop: 1\r\nKeep-Alive: timeout=3\r\nContent-Length: 4\r\nX-Request-ID: theirs\r\n"
    b'ETag: "a"\r\n\r\nbody'
)


@pytest.mark.parametrize("size", [*SPLITS, 5, 11, 64], ids=[*SPLIT_IDS, "by5", "by11", "by64"])
async def test_a_response_head_is_read_whole_however_its_bytes_come(size: int) -> None:
    rig = Rig()
    await rig.start()
    try:
        for _ in range(2):  # the second exchange on the connection the first gave back
            rig.client.out.clear()
            rig.feed(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n", 0)
            exchange = rig.exchange()
            up = upstream_of(exchange)
            for part in pieces(INTERIM_AND_FINAL, size):
                up.data_received(part)
            await turns()
            assert exchange.phase is Phase.DONE
            answer = rig.client.data
            interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
            assert answer.startswith(interim)
            head, _, body = answer[len(interim) :].partition(b"\r\n\r\n")
            assert body == b"body"
            lines = head.split(b"\r\n")
            assert lines[:5] == [b"HTTP/1.1 200 OK", b"Server: b", b"X-Ws: v \t", b"E: ", b'ETag: "a"']
            assert b"Content-Length: 4" in lines and b"X-Request-ID: theirs" not in lines
            assert not [line for line in lines if line.startswith((b"Connection", b"X-Hop", b"Keep-Alive"))]
            (backend_id,) = rig.upstreams
            assert rig.ctx.pool._keep_alive[backend_id] == 2.25  # learned from Keep-Alive: timeout=3
            assert rig.ctx.pool.idle == 1
    finally:
        await rig.stop()


async def test_a_response_head_over_the_limit_is_refused_complete_or_not() -> None:
    big = b"X-Big: " + b"v" * 1000 + b"\r\n"
    for count, tail in ((70, b"\r\n"), (140, b"")):  # a complete head of 70 kB, and one that never ends
        rig = Rig()
        await rig.start()
        try:
            rig.feed(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n", 0)
            exchange = rig.exchange()
            up = upstream_of(exchange)
            up.data_received(b"HTTP/1.1 200 OK\r\n")
            for _ in range(count):
                if up.sink is None:
                    break
                up.data_received(big)
            if up.sink is not None:
                up.data_received(tail)
            await turns()
            assert up.sink is None and up.transport is not None and up.transport.is_closing()
            assert rig.client.data.startswith(b"HTTP/1.1 502 ")
        finally:
            await rig.stop()


async def test_a_retry_is_a_transition_settling_backoff_routing_to_another_backend() -> None:
    rig = Rig(backends=2)
    await rig.start()
    try:
        rig.feed(b"GET /r HTTP/1.1\r\nHost: t\r\n\r\n", 0)
        exchange = rig.exchange()
        first = exchange.route
        assert first is not None
        upstream_of(exchange).data_received(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        # settled at the end of the read that brought the answer: another backend, after a back-off
        assert exchange.phase is Phase.BACKOFF and exchange.retries == 1 and exchange.upstream is None
        await turns(3)
        second = exchange.route
        assert exchange.phase is Phase.SENT and second is not None and second.backend_id != first.backend_id
        upstream_of(exchange).data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await turns()
        assert exchange.phase is Phase.DONE and rig.client.data.startswith(b"HTTP/1.1 200 OK")
        assert rig.lb.backends[first.backend_id].failed == 1 and rig.lb.backends[second.backend_id].successful == 1
        assert rig.lb.counts()["retries"] == 1 and rig.lb.retry_budget.active == 0  # the retry's unit went back
    finally:
        await rig.stop()


@pytest.mark.parametrize("size", SPLITS, ids=SPLIT_IDS)
async def test_a_client_gone_mid_response_abandons_the_try_and_blames_nobody(size: int) -> None:
    rig = Rig()
    conn = await rig.start()
    try:
        rig.feed(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n", size)
        exchange = rig.exchange()
        up = upstream_of(exchange)
        for part in pieces(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome", size):
            up.data_received(part)
        assert exchange.phase is Phase.STREAMING
        conn.connection_lost(None)
        assert exchange.phase is Phase.SETTLING  # acted on from the event loop, not inside connection_lost
        await turns()
        assert exchange.phase is Phase.DONE and exchange.status == 200
        backend = next(iter(rig.lb.backends.values()))
        assert (backend.successful, backend.failed, backend.in_flight) == (0, 0, 0)
        assert rig.ctx.pool.idle == 0  # a connection cut mid-response is not reused
    finally:
        await rig.stop()


@pytest.mark.parametrize("size", SPLITS, ids=SPLIT_IDS)
async def test_pipelined_requests_are_answered_in_order_one_at_a_time(size: int) -> None:
    rig = Rig()
    conn = await rig.start()
    try:
        rig.feed(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\n", size)
        first, second = conn.exchanges
        assert first.phase is Phase.SENT and second.phase is Phase.QUEUED
        assert conn.flow.paused_by(BY_PIPELINE)
        upstream_of(first).data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        await turns()
        assert first.phase is Phase.DONE and second.phase is Phase.SENT and not conn.flow.reading_paused
        upstream_of(second).data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
        await turns()
        answers = rig.client.data
        assert answers.index(b"\r\n\r\n1") < answers.index(b"\r\n\r\n2")
    finally:
        await rig.stop()


@pytest.mark.parametrize("size", SPLITS, ids=SPLIT_IDS)
async def test_a_broken_request_is_answered_400_and_the_connection_lingers_closed(size: int) -> None:
    rig = Rig()
    await rig.start()
    try:
        rig.feed(b"GET / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", size)
        answer = rig.client.data
        assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close\r\n" in answer
        assert rig.client.eof and not rig.client.closing  # FIN sent; input is read and dropped a while
        backend = next(iter(rig.lb.backends.values()))
        assert backend.total == 0
    finally:
        await rig.stop()


async def test_a_body_is_buffered_before_routing_and_sent_with_the_head() -> None:
    rig = Rig()
    await rig.start()
    try:
        rig.feed(b"PUT /b HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n", 0)
        exchange = rig.exchange()
        assert exchange.phase is Phase.BUFFERING and exchange.route is None  # no slot held for a slow client
        await turns(1)
        assert rig.client.data == b"HTTP/1.1 100 Continue\r\n\r\n"
        rig.feed(b"0123456789", 3)
        assert exchange.phase is Phase.SENT
        (transports,) = rig.upstreams.values()
        sent = transports[0].data
        assert sent.endswith(b"\r\n\r\n0123456789") and b"Expect" not in sent
    finally:
        await rig.stop()


async def test_a_client_gone_while_its_exchange_connects_releases_the_slot_at_once() -> None:
    rig = Rig(pooled=False)  # no pooled connection: the exchange must open one (to 127.0.0.1:1)
    conn = await rig.start()
    try:
        rig.feed(b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n", 0)
        exchange = rig.exchange()
        assert exchange.phase is Phase.CONNECTING and exchange.task is not None
        backend = next(iter(rig.lb.backends.values()))
        assert backend.in_flight == 1
        conn.connection_lost(None)  # before the connect's task has even run
        assert exchange.phase is Phase.DONE and backend.in_flight == 0
        await turns()
        assert exchange.task.cancelled() and (backend.failed, backend.in_flight) == (0, 0)
    finally:
        await rig.stop()


@pytest.mark.parametrize("client", ["lost", "failed"])
async def test_a_stale_try_the_client_leaves_in_the_same_turn_releases_its_slot(client: str) -> None:
    """The backend had closed the pooled connection (a stale try, which keeps its slot to go on on
    a fresh connection) and the client goes, or breaks its request, before that try is settled."""
    rig = Rig()
    conn = await rig.start()
    try:
        rig.feed(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n", 0)
        exchange = rig.exchange()
        up = upstream_of(exchange)
        await turns(1)
        up.connection_lost(None)
        assert exchange.phase is Phase.SETTLING
        if client == "lost":
            conn.connection_lost(None)
        else:
            exchange.client_failed(HttpError(400, "malformed request"))
        await turns(5)
        backend = next(iter(rig.lb.backends.values()))
        assert exchange.phase is Phase.DONE and exchange.route is not None and exchange.route.completed
        assert (backend.in_flight, backend.failed) == (0, 0) and rig.ctx.in_flight == 0
    finally:
        await rig.stop()


async def test_a_stale_try_keeps_its_retry_budget_unit_on_the_fresh_connection() -> None:
    rig = Rig(backends=2)
    await rig.start()
    try:
        rig.feed(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n", 0)
        exchange = rig.exchange()
        upstream_of(exchange).data_received(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        await turns(3)  # back-off, routed to the other backend, sent on its pooled connection
        assert exchange.phase is Phase.SENT and rig.lb.retry_budget.active == 1
        up = upstream_of(exchange)
        up.connection_lost(None)  # that pooled connection was stale: the same try on a fresh one
        await turns(1)
        assert exchange.phase is Phase.CONNECTING and rig.lb.retry_budget.active == 1
        exchange.client_lost()
        assert exchange.phase is Phase.DONE and rig.lb.retry_budget.active == 0
    finally:
        await rig.stop()
