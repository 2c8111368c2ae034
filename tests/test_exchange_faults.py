"""Who is to blame: only a backend's own failures reach its breaker and statistics.

Black-box, on real sockets: a backend that answers before reading a large body, clients that
go away, stall, send garbage or stop reading, a drain that cuts requests off, pooled
connections the backend has closed, a backend whose listen queue is full. After each, the
backend's breaker and failure count say what the backend did, and nothing the client did.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest
import uvloop
from aiohttp import web

from load_balancing_module import BackendConfig, CircuitBreakerConfig, CircuitState
from proxy_helpers import HOST, AioBackend, ProxyHarness, RawBackend, get, start_proxy

BREAKER = CircuitBreakerConfig(failure_threshold=3, timeout=60)
FAST = {"header_timeout": 0.3, "idle_timeout": 0.3}


def untouched(proxy: ProxyHarness, index: int = 0) -> None:
    """The backend's breaker and failure count heard nothing."""
    backend = proxy.lb.backends[proxy.backend_ids[index]]
    assert backend.failed == 0, f"{backend.failed} failures counted against {backend.id}"
    assert backend.breaker.state is CircuitState.CLOSED and backend.breaker.failures == 0
    assert backend.in_flight == 0


B = TypeVar("B", bound="ScriptedBackend")


class ScriptedBackend:
    """A plain asyncio server on 127.0.0.1 whose ``_serve`` plays one scripted backend."""

    port = 0
    _server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self: B) -> B:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


class EarlyAnswer(ScriptedBackend):
    """A backend that reads a request head, answers at once and closes without reading the body
    (so the kernel resets the connection: the unread body is still in its buffer)."""

    def __init__(self, read_first: int = 0) -> None:
        self.read_first = read_first  # body bytes read before answering (the proxy is then mid-stream)
        self.port = 0
        self.answered = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            if self.read_first:
                await reader.readexactly(self.read_first)
            body = b'{"error": "too large"}'
            writer.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.answered += 1
            await writer.drain()
        writer.close()


async def post_big(port: int, body_size: int, *, chunked: bool = False) -> tuple[int, bytes]:
    """Send a large POST while reading the answer; the status line and body of the answer."""
    reader, writer = await asyncio.open_connection(HOST, port)
    if chunked:
        head = b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    else:
        head = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % body_size

    async def send() -> None:
        writer.write(head)
        piece = b"x" * 65536
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < body_size:
                n = min(len(piece), body_size - sent)
                writer.write(b"%x\r\n%s\r\n" % (n, piece[:n]) if chunked else piece[:n])
                sent += n
                await writer.drain()
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()

    sender = asyncio.create_task(send())
    try:
        head_bytes = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head_bytes.decode("latin-1").split("\r\n")
        fields = dict(line.lower().split(":", 1) for line in lines[1:] if line)
        length = int(fields["content-length"])
        answer = await asyncio.wait_for(reader.readexactly(length), 5)
        return int(lines[0].split()[1]), answer
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        writer.close()


async def early_answers(chunked: bool, read_first: int) -> None:
    async with EarlyAnswer(read_first) as backend, start_proxy([backend.port], circuit_breaker=BREAKER) as proxy:
        for _ in range(8):  # more than failure_threshold: a breaker counting them would open
            status, body = await post_big(proxy.port, 5 * 1024 * 1024, chunked=chunked)
            assert (status, body) == (413, b'{"error": "too large"}')
        untouched(proxy)
        assert proxy.lb.backends[proxy.backend_ids[0]].successful == 8


EARLY = pytest.mark.parametrize(
    ("chunked", "read_first"),
    [(False, 0), (True, 0), (False, 1 << 20), (True, 1 << 20)],
    ids=["content-length", "chunked", "content-length-mid-stream", "chunked-mid-stream"],
)


@EARLY
async def test_an_early_answer_before_a_large_body_is_forwarded_and_not_a_failure(
    chunked: bool, read_first: int
) -> None:
    await early_answers(chunked, read_first)


@EARLY
def test_an_early_answer_before_a_large_body_on_uvloop(chunked: bool, read_first: int) -> None:
    """The same on uvloop, which closes a socket on a failed write without reading what it holds."""
    uvloop.run(early_answers(chunked, read_first))


async def test_a_4xx_answer_is_the_backend_working() -> None:
    async def not_found(request: web.Request) -> web.Response:
        return web.json_response({"error": "no such thing"}, status=404)

    async with AioBackend(handler=not_found) as backend, start_proxy([backend.port], circuit_breaker=BREAKER) as proxy:
        client = proxy.client()
        for _ in range(5):
            assert (await client.request(get("/missing"))).status == 404
        await client.close()
        untouched(proxy)
        assert proxy.lb.backends[proxy.backend_ids[0]].successful == 5


async def slow(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(0.3)
    return web.Response(text="late")


async def test_a_client_that_goes_away_is_not_the_backends_failure() -> None:
    async with AioBackend(handler=slow) as backend, start_proxy([backend.port], circuit_breaker=BREAKER) as proxy:
        for _ in range(5):
            client = proxy.client()
            await client.send(get("/slow"))
            await asyncio.sleep(0.02)
            await client.close()
        await until(lambda: proxy.proxy.in_flight == 0)
        untouched(proxy)


async def test_a_client_whose_body_stalls_gets_408_and_the_backend_hears_nothing() -> None:
    async with AioBackend() as backend, start_proxy([backend.port], circuit_breaker=BREAKER, limits=FAST) as proxy:
        for _ in range(4):
            client = proxy.client()
            response = await client.request(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly part")
            assert response.status == 408
            await client.close()
        untouched(proxy)
        assert backend.requests == []  # the body never arrived whole: no backend was even chosen


async def test_a_client_protocol_error_mid_stream_is_not_the_backends_failure() -> None:
    async with RawBackend() as backend, start_proxy([backend.port], circuit_breaker=BREAKER) as proxy:
        for _ in range(4):
            client = proxy.client()
            big = b"a" * 70_000  # past the part read before routing: the request is streaming
            await client.send(
                b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(big), big)
            )
            await until(lambda: backend.received.endswith(b"a\r\n"))
            await client.send(b"zz\r\n")
            assert (await client.read_response()).status == 400
            await client.close()
            backend.received.clear()
        await until(lambda: proxy.proxy.in_flight == 0)
        untouched(proxy)


async def test_a_backend_that_gives_up_on_a_slow_body_is_not_blamed() -> None:
    """The backend closes while the proxy waits for the client's body: it may have timed the
    client out, so the 502 does not count against it."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.05)
        writer.close()

    server = await asyncio.start_server(hang_up, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with start_proxy([port], circuit_breaker=BREAKER) as proxy:
            for _ in range(4):
                client = proxy.client()
                await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n" + b"b" * 70_000)
                assert (await client.read_response()).status == 502
                await client.close()
            untouched(proxy)
    finally:
        server.close()


async def test_a_response_the_client_stops_reading_is_not_the_backends_failure() -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(2000):
                await response.write(b"z" * 65536)
        return response

    async with (
        AioBackend(handler=endless) as backend,
        start_proxy([backend.port], circuit_breaker=BREAKER, limits=FAST) as proxy,
    ):
        for _ in range(2):
            client = proxy.client()
            await client.send(get("/stream"))  # and never read
            await until(lambda: proxy.proxy.in_flight == 1)  # the request is in
            await until(lambda: proxy.proxy.in_flight == 0, timeout=5)  # the client's write timeout ends it
            await client.close()
        untouched(proxy)


async def test_a_backend_that_gives_up_on_a_client_not_reading_is_not_blamed() -> None:
    """The client stops reading, the proxy stops reading the backend, the backend's write times
    out and it closes the connection mid-response: the client's doing, not the backend's."""

    async def impatient(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(2000):
                await asyncio.wait_for(response.write(b"z" * 65536), 0.1)
        except asyncio.TimeoutError:  # gives up on a stuck write, as a send timeout does: hangs up
            assert request.transport is not None
            request.transport.abort()
        return response

    async with (
        AioBackend(handler=impatient) as backend,
        start_proxy([backend.port], circuit_breaker=BREAKER, limits={"idle_timeout": 5}) as proxy,
    ):
        for _ in range(3):
            client = proxy.client()
            await client.send(get("/stream"))
            await asyncio.sleep(0.3)  # reads nothing meanwhile; the backend gives up after 0.1 s
            assert await client.closed()  # then reads what there is: the response is cut short
            await until(lambda: proxy.proxy.in_flight == 0)
            await client.close()
        untouched(proxy)


async def test_requests_cut_off_by_a_drain_are_not_the_backends_failure() -> None:
    async with AioBackend(handler=slow) as backend, start_proxy([backend.port], circuit_breaker=BREAKER) as proxy:
        clients = [proxy.client() for _ in range(4)]
        for client in clients:
            await client.send(get("/slow"))
        await until(lambda: proxy.proxy.in_flight == 4)
        assert await proxy.proxy.drain(0.05) == 4
        for client in clients:
            await client.close()
        untouched(proxy)


async def test_half_open_with_its_trial_in_flight_answers_503_at_once() -> None:
    breaker = CircuitBreakerConfig(failure_threshold=1, success_threshold=1, timeout=0.05, half_open_max_calls=1)
    async with (
        AioBackend(handler=slow) as backend,
        start_proxy([backend.port], circuit_breaker=breaker, request_timeout=30) as proxy,
    ):
        only = proxy.lb.backends[proxy.backend_ids[0]]
        only.breaker.on_failure()  # as if a request had failed: OPEN for 50 ms
        await asyncio.sleep(0.06)
        trial = proxy.client()
        await trial.send(get("/slow"))  # HALF_OPEN's one trial: takes 300 ms
        await until(lambda: only.in_flight == 1)
        started = time.monotonic()
        second = await proxy.client().request(get("/"))
        assert second.status == 503 and time.monotonic() - started < 0.25
        assert "half-open" in second.json()["error"]
        assert (await trial.read_response()).status == 200


class ClosingOnReuse(ScriptedBackend):
    """A backend whose keep-alive timeout runs out just as the proxy reuses the connection: it
    answers the first request on each connection and closes the connection, without a word, when
    the next one arrives (as a backend does that closed the idle socket that instant)."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            self.requests += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the next request: hang up on it
        writer.transport.abort()


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_pooled_connection_closed_by_the_backend_is_retried_fresh(method: str) -> None:
    async with ClosingOnReuse() as backend, start_proxy([backend.port], circuit_breaker=BREAKER) as proxy:
        client = proxy.client()
        body = b'{"n": 1}'
        request = (f"{method} /x HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        for _ in range(4):
            response = await client.request(request)
            assert (response.status, response.body) == (200, b"ok")
        await client.close()
        assert backend.requests == 4 and backend.connections == 4
        assert proxy.lb.counters["retries"] == 0  # not a retry elsewhere: the same try on a new connection
        untouched(proxy)


async def test_a_connection_idle_near_the_backends_keep_alive_timeout_is_not_reused() -> None:
    async def keep_alive_1s(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Keep-Alive": "timeout=1"})

    async with AioBackend(handler=keep_alive_1s) as backend, start_proxy([backend.port]) as proxy:
        client = proxy.client()
        assert (await client.request(get("/"))).status == 200
        pool = proxy.proxy.pool
        assert pool.connects == 1
        idle = pool._idle[proxy.backend_ids[0]][0]
        idle.idle_since -= 0.5  # within the learned limit (1 s less its margin: 0.75 s): reused
        assert (await client.request(get("/"))).status == 200
        assert pool.connects == 1
        pool._idle[proxy.backend_ids[0]][0].idle_since -= 0.8  # past it: a fresh connection
        assert (await client.request(get("/"))).status == 200
        assert pool.connects == 2 and pool.stale == 1
        await client.close()


async def test_a_pooled_connection_is_checked_for_an_end_of_stream_before_reuse() -> None:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy:
        client = proxy.client()
        assert (await client.request(get("/"))).status == 200
        key = proxy.backend_ids[0]
        pool = proxy.proxy.pool
        conn = pool._idle[key][0]
        for writer in backend._writers:  # the backend ends its side of the idle connection, now
            writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
        time.sleep(0.02)  # the FIN arrives while the event loop, blocked, cannot see it
        assert not conn.closed  # the loop has not read the end of stream yet
        conn.idle_since -= 0.3  # idle long enough to be checked
        assert pool.take(key, asyncio.get_running_loop().time()) is None
        assert pool.stale == 1
        await client.close()


@contextlib.asynccontextmanager
async def hung_backend() -> AsyncIterator[int]:
    """A port whose listen queue is full: a connect to it hangs (SYNs are dropped)."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect((HOST, port))
        fillers.append(filler)
    await asyncio.sleep(0.05)
    try:
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_a_hung_backend_costs_one_connect_timeout_then_another_backend_answers() -> None:
    async with hung_backend() as hung, AioBackend() as good:
        backends = [BackendConfig(host=HOST, port=hung), BackendConfig(host=HOST, port=good.port)]
        async with start_proxy(backends, request_timeout=3, upstream={"connect_timeout": 0.2}) as proxy:
            client = proxy.client()
            started = time.monotonic()
            for _ in range(4):  # each costs at most one connect timeout on the hung backend
                assert (await client.request(get("/"))).status == 200
            hung_failures = proxy.lb.backends[proxy.backend_ids[0]].failed
            assert 1 <= hung_failures <= 4  # connect timeouts are the backend's failures
            assert time.monotonic() - started < 0.2 * hung_failures + 0.5
            await client.close()


async def test_a_connect_cut_short_by_the_deadline_is_a_504_and_not_counted() -> None:
    async with (
        hung_backend() as hung,
        start_proxy([hung], request_timeout=0.3, upstream={"connect_timeout": 2}) as proxy,
    ):
        client = proxy.client()
        response = await client.request(get("/"))
        assert response.status == 504
        await client.close()
        untouched(proxy)


async def test_expect_100_continue_is_answered_by_the_proxy() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy:
        client = proxy.client()
        await client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = await client.read_response(informational=True)
        assert interim.status == 100
        await client.send(b"hello")
        response = await client.read_response()
        assert response.status == 200 and response.json()["body_size"] == 5
        headers = {k.lower() for k, _ in response.json()["headers"]}
        assert "expect" not in headers  # the backend gets the body at once, so no expectation
        await client.close()


async def test_expect_100_continue_with_a_body_over_the_limit_gets_413_and_no_100() -> None:
    async with AioBackend() as backend, start_proxy([backend.port], limits={"max_body_bytes": 1000}) as proxy:
        client = proxy.client()
        await client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        response = await client.read_response(informational=True)
        assert response.status == 413
        await client.close()


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_after_an_early_answer_the_proxy_lingers_while_the_client_still_sends() -> None:
    """The client gets its 413 and may go on sending its body: the proxy reads and drops it
    until the client has been quiet for a while, so no reset destroys the answer."""
    async with AioBackend() as backend, start_proxy([backend.port], limits={"max_body_bytes": 1000}) as proxy:
        proxy.proxy.linger_seconds = 0.1
        reader, writer = await asyncio.open_connection(HOST, proxy.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 413 ")
        for _ in range(10):  # 0.5 s of sending, five times the quiet period, never in a pause of it
            writer.write(b"x" * 1000)
            await writer.drain()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # quiet for three times the period: the proxy has closed
        with pytest.raises(ConnectionError):  # so writes meet a reset
            for _ in range(5):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.02)
        writer.close()
        assert backend.requests == []


BACKEND_PROCESS = """
import sys
from aiohttp import web

async def ok(request):
    await request.read()
    return web.Response(text="ok")

app = web.Application()
app.router.add_post("/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), keepalive_timeout=float(sys.argv[2]), print=None,
            access_log=None)
"""


async def test_posts_spaced_around_the_backends_keep_alive_timeout_all_succeed() -> None:
    """The race as it happens: an aiohttp backend in its own process closes connections idle for
    50 ms, and POSTs come every 40 to 60 ms, so some go out just as the backend closes."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    backend = await asyncio.create_subprocess_exec(sys.executable, "-c", BACKEND_PROCESS, str(port), "0.05")
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex((HOST, port)) != 0:
            assert time.monotonic() < deadline, "the backend did not start"
            await asyncio.sleep(0.02)
        async with start_proxy([port], circuit_breaker=BREAKER) as proxy:
            client = proxy.client()
            statuses = []
            for i in range(60):
                await asyncio.sleep(0.04 + 0.02 * ((i * 7) % 11) / 10)  # 40..60 ms, spread evenly
                response = await client.request(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
                statuses.append(response.status)
            await client.close()
            assert statuses == [200] * 60
            untouched(proxy)
    finally:
        backend.terminate()
        await backend.wait()
