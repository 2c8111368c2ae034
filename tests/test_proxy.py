"""The reverse proxy's data plane, on real sockets on 127.0.0.1 with real backends.

Bodies both ways (Content-Length, chunked, streamed, 100 MB in bounded memory),
keep-alive and pipelining, WebSocket tunnels, forwarding and hop-by-hop headers,
client IP and trusted proxies, session affinity, the proxy's own answers
(503/429/504/502/400/431/413/408), retries and failover, slow clients, the
access log, draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from load_balancing_module import (
    CircuitBreakerConfig,
    LoadBalancingAlgorithmType,
    RateLimitConfig,
)
from proxy_helpers import (
    HOST,
    AioBackend,
    ProxyHarness,
    RawBackend,
    RawClient,
    RssSampler,
    get,
    server_config,
    start_proxy,
)
from servers import closed_port

MB = 1024 * 1024
FAST = {"header_timeout": 0.2, "idle_timeout": 0.2}


def echoed(response_body: bytes) -> dict[str, object]:
    data: dict[str, object] = json.loads(response_body)
    return data


def header_map(echo: dict[str, object]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in echo["headers"]:  # type: ignore[attr-defined]
        headers.setdefault(name.lower(), []).append(value)
    return headers


# -- bodies, methods, streaming -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "HEAD"])
async def test_every_method_round_trips_with_a_content_length_body(method: str) -> None:
    async with AioBackend("a") as backend, start_proxy([backend.port]) as proxy, aiohttp.ClientSession() as http:
        body = b"x" * 3000 if method != "HEAD" else b""
        async with http.request(method, f"{proxy.url}/items/7?q=1", data=body or None) as response:
            assert response.status == 200
            content = await response.read()
        if method == "HEAD":
            assert content == b""
            assert int(response.headers["Content-Length"]) > 0  # the backend's length, for the body not sent
        else:
            echo = echoed(content)
            assert echo["method"] == method and echo["path"] == "/items/7?q=1"
            assert echo["body_size"] == len(body)
        assert backend.requests == [(method, "/items/7")]


async def chunked_echo(request: web.Request) -> web.StreamResponse:
    """Reads the body, answers in chunks: the method, then the body size."""
    size = 0
    async for piece in request.content.iter_any():
        size += len(piece)
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(request.method.encode())
    await response.write(b" %d" % size)
    await response.write_eof()
    return response


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
async def test_every_method_round_trips_with_chunked_bodies_both_ways(method: str) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"c" * 10000

    async with (
        AioBackend(handler=chunked_echo) as backend,
        start_proxy([backend.port]) as proxy,
        aiohttp.ClientSession() as http,
        http.request(method, f"{proxy.url}/c", data=body()) as response,
    ):
        assert response.status == 200 and response.headers["Transfer-Encoding"] == "chunked"
        assert await response.read() == f"{method} 100000".encode()
    assert backend.requests == [(method, "/c")]


async def test_a_chunked_request_body_reaches_the_backend_in_the_proxys_own_framing() -> None:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        request = (
            b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        response = await client.request(request)
        assert response.status == 200 and response.body == b"raw"
    assert backend.bodies == [b"hello world"]
    received = bytes(backend.received)
    assert b"Transfer-Encoding: chunked\r\n" in received
    assert b"ext=1" not in received and b"X-Trailer" not in received  # extensions and trailers are not forwarded
    assert received.endswith(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    ("reply", "http10"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabcdefg", False),  # read until close -> chunked
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabcdefg", True),  # HTTP/1.0 client: until close too
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nabcdefg\r\n0\r\n\r\n", True),
    ],
)
async def test_response_bodies_are_reframed_for_the_client(reply: bytes, http10: bool) -> None:
    async with RawBackend(reply=reply) as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        version = b"1.0" if http10 else b"1.1"
        response = await client.request(b"GET / HTTP/%s\r\nHost: t\r\n\r\n" % version)
        assert response.status == 200 and response.body == b"abcdefg"
        if http10:
            assert response.header("Transfer-Encoding") is None
            assert await client.closed()
        else:
            assert response.header("Transfer-Encoding") == "chunked"


async def test_the_response_is_streamed_before_the_backend_finishes_it() -> None:
    go_on = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        await asyncio.wait_for(go_on.wait(), 5)
        await response.write(b"second")
        await response.write_eof()
        return response

    async with (
        AioBackend(handler=stream) as backend,
        start_proxy([backend.port]) as proxy,
        aiohttp.ClientSession() as http,
        http.get(proxy.url) as response,
    ):
        assert await response.content.readexactly(5) == b"first"  # while the backend waits
        go_on.set()
        assert await response.content.read() == b"second"


async def test_100_mb_each_way_passes_with_bounded_memory() -> None:
    chunk = b"z" * 65536
    total = 100 * MB

    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(total)})
        await response.prepare(request)
        for _ in range(total // len(chunk)):
            await response.write(chunk)
        return response

    backend = AioBackend()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await (download(request) if request.path == "/download" else backend.echo(request))

    backend.handler = handler

    async def upload() -> object:
        for _ in range(total // len(chunk)):
            yield chunk

    limits = {"max_body_bytes": 200 * MB}
    async with backend, start_proxy([backend.port], limits=limits) as proxy, aiohttp.ClientSession() as http:
        await (await http.get(f"{proxy.url}/warm-up")).read()
        async with RssSampler() as rss:
            async with http.post(f"{proxy.url}/upload", data=upload()) as response:
                assert response.status == 200
                assert echoed(await response.read())["body_size"] == total
            received = 0
            async with http.get(f"{proxy.url}/download") as response:
                async for piece in response.content.iter_chunked(65536):
                    received += len(piece)
            assert received == total
    assert rss.growth < 50 * MB, f"resident memory grew by {rss.growth / MB:.1f} MB"


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``condition`` every few milliseconds; fail after ``timeout`` seconds."""
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition did not come true in time")


def proxy_buffered(proxy: ProxyHarness) -> int:
    """Bytes waiting in the proxy's own write buffers (client and upstream sides)."""
    clients = sum(c.transport.get_write_buffer_size() for c in proxy.proxy.connections)
    upstreams = sum(u.write_buffer_size for u in proxy.proxy.pool._open)
    return clients + upstreams


async def test_a_client_that_stops_reading_pauses_the_backend() -> None:
    chunk = b"d" * 65536
    total = 64 * MB
    written = 0

    async def flood(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse(headers={"Content-Length": str(total)})
        await response.prepare(request)
        for _ in range(total // len(chunk)):
            await response.write(chunk)
            written += len(chunk)
        return response

    async with AioBackend(handler=flood) as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await client.send(get())
        await until(lambda: any(u.read_paused for u in proxy.proxy.pool._open))  # the client reads nothing
        await asyncio.sleep(0.05)  # time enough to go on if nothing held the backend back
        assert proxy_buffered(proxy) < MB
        assert written < total
        assert client.reader is not None
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: %d" % total in head
        received = 0
        while received < total:
            received += len(await client.reader.read(1 << 20))
        assert received == total and written == total


async def test_a_backend_that_stops_reading_pauses_the_client() -> None:
    go_on = asyncio.Event()
    backend = AioBackend()

    async def late_reader(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(go_on.wait(), 5)
        return await backend.echo(request)

    backend.handler = late_reader
    total = 64 * MB
    sent = 0
    config = {"limits": {"max_body_bytes": 2 * total}}
    async with backend, start_proxy([backend.port], **config) as proxy, proxy.client() as client:
        assert client.writer is not None

        async def upload() -> None:
            nonlocal sent
            await client.send(b"PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
            chunk = b"u" * (1 << 20)
            for _ in range(total // len(chunk)):
                client.writer.write(chunk)  # type: ignore[union-attr]
                await client.writer.drain()  # type: ignore[union-attr]
                sent += len(chunk)

        uploading = asyncio.create_task(upload())
        await until(lambda: any(c.flow.reading_paused for c in proxy.proxy.connections))  # the backend reads nothing
        await asyncio.sleep(0.05)  # time enough to go on if nothing held the client back
        assert proxy_buffered(proxy) < MB
        assert sent < total and not uploading.done()
        go_on.set()
        await uploading
        response = await client.read_response()
        assert response.status == 200 and echoed(response.body)["body_size"] == total


async def test_http_1_0_keep_alive() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        for _ in range(3):
            response = await client.request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert response.status == 200 and response.header("Connection") == "keep-alive"
        response = await client.request(b"GET / HTTP/1.0\r\n\r\n")
        assert response.status == 200 and response.header("Connection") == "close"
        assert await client.closed()


async def test_keep_alive_on_both_sides_reuses_one_upstream_connection() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        for i in range(20):
            response = await client.request(get(f"/{i}"))
            assert response.status == 200 and response.header("Connection") is None
        assert len(backend.peers) == 1 and proxy.proxy.pool.connects == 1


async def test_pipelined_requests_are_answered_in_order() -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await asyncio.sleep(0.05)
        return web.Response(text=request.path)

    async with AioBackend(handler=handler) as backend, start_proxy([backend.port]) as proxy:
        async with proxy.client() as client:
            post = b"POST /post HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
            await client.send(get("/slow") + post + get("/fast"))
            bodies = [(await client.read_response()).body for _ in range(3)]
        assert bodies == [b"/slow", b"/post", b"/fast"]


async def test_a_request_with_connection_close_is_answered_and_the_connection_closed() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await client.send(get("/a", "Connection: close") + get("/ignored"))
        response = await client.read_response()
        assert response.status == 200 and response.header("Connection") == "close"
        assert await client.closed()
        assert backend.requests == [("GET", "/a")]


async def test_websocket_upgrades_are_tunnelled_both_ways() -> None:
    async def ws_echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo {message.data}")
            elif message.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    async with AioBackend(handler=ws_echo) as backend, start_proxy([backend.port]) as proxy:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{proxy.url}/ws") as ws:
            await ws.send_str("hello")
            assert await ws.receive_str(timeout=2) == "echo hello"
            payload = bytes(range(256)) * 1000
            await ws.send_bytes(payload)
            assert await ws.receive_bytes(timeout=2) == payload[::-1]
            assert proxy.proxy.in_flight == 1  # the tunnel holds its backend slot
            await ws.close()
        for _ in range(100):
            if proxy.proxy.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        backend_state = proxy.lb.backends[proxy.backend_ids[0]]
        assert proxy.proxy.in_flight == 0 and backend_state.in_flight == 0 and backend_state.successful == 1
        assert proxy.access.fields[-1]["status"] == 101


async def test_expect_100_continue_is_relayed() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await client.send(b"PUT /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        interim = await client.read_response(informational=True)
        assert interim.status == 100
        await client.send(b"data")
        response = await client.read_response()
        assert response.status == 200 and echoed(response.body)["body_size"] == 4


async def test_bytes_after_a_response_keep_its_connection_out_of_the_pool() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK"
    async with RawBackend(reply=reply) as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        for _ in range(3):
            response = await client.request(get())
            assert response.status == 200 and response.body == b"ok"
        assert backend.connections == 3


async def test_an_answer_before_the_whole_body_closes_the_client_connection() -> None:
    async def refuse_early(request: web.Request) -> web.Response:
        return web.Response(status=413, text="too big for me")  # without reading the body

    async with AioBackend(handler=refuse_early) as backend, start_proxy([backend.port]) as proxy:
        async with proxy.client() as client:
            await client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"b" * 65536)
            response = await client.read_response()
            assert response.status == 413 and response.body == b"too big for me"
            assert response.header("Connection") == "close" and await client.closed()
        assert proxy.lb.backends[proxy.backend_ids[0]].in_flight == 0


async def test_a_client_that_hangs_up_mid_response_frees_the_backend_slot_without_blame() -> None:
    hung_up = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        await asyncio.wait_for(hung_up.wait(), 5)
        return response

    async with AioBackend(handler=stream) as backend, start_proxy([backend.port]) as proxy:
        async with proxy.client() as client:
            await client.send(get())
            assert client.reader is not None
            await client.reader.readuntil(b"first")
        for _ in range(200):
            if proxy.proxy.in_flight == 0:
                break
            await asyncio.sleep(0.005)
        hung_up.set()
        state = proxy.lb.backends[proxy.backend_ids[0]]
        assert (state.in_flight, state.successful, state.failed) == (0, 0, 0)


async def test_a_response_the_backend_cuts_short_is_cut_short_for_the_client() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789"
    async with RawBackend(reply=reply) as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await client.request(get())
        state = proxy.lb.backends[proxy.backend_ids[0]]
        assert (state.in_flight, state.failed) == (0, 1)


# -- headers ----------------------------------------------------------------------------------------


async def test_forwarding_headers_are_added_and_the_request_id_returned() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        response = await client.request(get("/", "X-Forwarded-For: 203.0.113.9", host="shop.example:8443"))
        headers = header_map(echoed(response.body))
        assert headers["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
        assert headers["x-forwarded-proto"] == ["http"]
        assert headers["x-forwarded-host"] == ["shop.example:8443"]
        generated = headers["x-request-id"][0]
        assert response.header("X-Request-ID") == generated and len(generated) > 8

        response = await client.request(get("/", "X-Request-ID: trace-123"))
        assert header_map(echoed(response.body))["x-request-id"] == ["trace-123"]
        assert response.all("X-Request-ID") == ["trace-123"]
        assert proxy.access.fields[-1]["request_id"] == "trace-123"


PLAIN_HEAD = b"GET /a?b=1 HTTP/1.1\r\nHost: t\r\nUser-Agent:   spaced\r\nCookie: x=1\r\n"
PROXY_LINES = [b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host", b"X-Request-ID"]


def upstream_heads(received: bytes) -> list[bytes]:
    return [head + b"\r\n" for head in received.split(b"\r\n\r\n") if head]


async def test_a_plain_request_goes_upstream_as_the_client_wrote_it() -> None:
    # No header dropped or rewritten and no body: the client's head byte for byte, then the proxy's lines.
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        response = await client.request(PLAIN_HEAD + b"\r\n")
    assert response.status == 200
    (head,) = upstream_heads(bytes(backend.received))
    assert head.startswith(PLAIN_HEAD)
    assert [line.split(b":")[0] for line in head[len(PLAIN_HEAD) :].split(b"\r\n") if line] == PROXY_LINES


@pytest.mark.parametrize(
    "shape", ["leading empty line", "second in one read", "a hop-by-hop header", "head in two reads"]
)
async def test_other_requests_are_rebuilt_from_their_parsed_headers(shape: str) -> None:
    rebuilt = b"GET /a?b=1 HTTP/1.1\r\nHost: t\r\nUser-Agent: spaced\r\nCookie: x=1\r\n"  # leading OWS dropped
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        if shape == "leading empty line":
            await client.send(b"\r\n" + PLAIN_HEAD + b"\r\n")
        elif shape == "second in one read":
            await client.send(PLAIN_HEAD + b"\r\n" + PLAIN_HEAD + b"\r\n")
        elif shape == "a hop-by-hop header":
            await client.send(PLAIN_HEAD + b"Keep-Alive: timeout=5\r\n\r\n")
        else:
            await client.send(PLAIN_HEAD)
            await asyncio.sleep(0.02)
            await client.send(b"\r\n")
        responses = [await client.read_response() for _ in range(2 if shape == "second in one read" else 1)]
    assert all(r.status == 200 for r in responses)
    heads = upstream_heads(bytes(backend.received))
    assert len(heads) == len(responses)
    last = heads[-1]
    assert last.startswith(rebuilt)
    assert [line.split(b":")[0] for line in last[len(rebuilt) :].split(b"\r\n") if line] == PROXY_LINES
    if shape == "second in one read":
        assert heads[0].startswith(PLAIN_HEAD)  # the first began the read: sent as it came


async def test_hop_by_hop_headers_are_removed_from_the_request() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        response = await client.request(
            get(
                "/",
                "Connection: keep-alive, X-Secret-Hop",
                "X-Secret-Hop: 1",
                "Keep-Alive: timeout=5",
                "TE: trailers",
                "Trailer: X-T",
                "Upgrade: something",
                "Proxy-Authorization: Basic eA==",
                "Proxy-Connection: keep-alive",
                "X-End-To-End: kept",
            )
        )
        headers = header_map(echoed(response.body))
    for name in (
        "connection",
        "x-secret-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ):
        assert name not in headers, name
    assert headers["x-end-to-end"] == ["kept"]


async def test_hop_by_hop_headers_are_removed_from_the_response() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nConnection: X-Backend-Hop\r\nX-Backend-Hop: 1\r\nKeep-Alive: timeout=9\r\n"
        b"Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Kept: yes\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    async with RawBackend(reply=reply) as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        response = await client.request(get())
    names = {name.lower() for name, _ in response.headers}
    assert not names & {"connection", "x-backend-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"}
    assert response.header("X-Kept") == "yes" and response.body == b"ok"


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "client_ip"),
    [
        ([], "198.51.100.7", "127.0.0.1"),  # the peer is not trusted: its X-Forwarded-For is not believed
        (["127.0.0.0/8"], "198.51.100.7", "198.51.100.7"),
        (["127.0.0.0/8", "10.0.0.0/8"], "198.51.100.7, 10.1.2.3", "198.51.100.7"),  # skip trusted hops
        (["127.0.0.0/8"], "1.1.1.1, 198.51.100.7, 10.1.2.3", "10.1.2.3"),  # right-most untrusted
        (["127.0.0.0/8"], "not-an-ip", "127.0.0.1"),
    ],
)
async def test_the_client_ip_is_the_peer_or_the_rightmost_untrusted_forwarded_address(
    trusted: list[str], forwarded_for: str, client_ip: str
) -> None:
    async with AioBackend() as backend, start_proxy([backend.port], trusted_proxies=trusted) as proxy:
        async with proxy.client() as client:
            response = await client.request(get("/", f"X-Forwarded-For: {forwarded_for}"))
        assert response.status == 200
        assert proxy.access.fields[-1]["client_ip"] == client_ip


async def test_session_affinity_by_cookie_and_by_header() -> None:
    async with (
        AioBackend("a") as a,
        AioBackend("b") as b,
        start_proxy([a.port, b.port], session_affinity=True) as proxy,
        proxy.client() as client,
    ):
        first = await client.request(get())
        cookie = first.header("Set-Cookie") or ""
        assert cookie.startswith("OMNIXAN_AFFINITY=") and "Path=/" in cookie and "HttpOnly" in cookie
        session = cookie.split(";")[0]
        owner = echoed(first.body)["backend"]
        for _ in range(6):
            response = await client.request(get("/", f"Cookie: theme=dark; {session}"))
            assert echoed(response.body)["backend"] == owner and response.header("Set-Cookie") is None
        by_header = {
            echoed((await client.request(get("/", "X-Session-ID: user-42"))).body)["backend"] for _ in range(6)
        }
        assert len(by_header) == 1
        unsticky = {echoed((await client.request(get())).body)["backend"] for _ in range(4)}
        assert unsticky == {"a", "b"}  # each request without a session gets a new one


async def test_no_affinity_cookie_when_session_affinity_is_off() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        assert (await client.request(get())).header("Set-Cookie") is None


async def test_the_workload_type_header_routes_quantum_work() -> None:
    backends = [{"host": HOST, "port": 0}, {"host": HOST, "port": 0, "quantum_capable": True}]
    async with AioBackend("classical") as c, AioBackend("quantum") as q:
        backends[0]["port"], backends[1]["port"] = c.port, q.port
        quantum_aware = LoadBalancingAlgorithmType.QUANTUM_AWARE
        async with start_proxy(backends, algorithm=quantum_aware) as proxy, proxy.client() as client:
            response = await client.request(get("/", "X-Workload-Type: quantum_ml"))
            assert echoed(response.body)["backend"] == "quantum"
            assert echoed((await client.request(get())).body)["backend"] == "classical"
            bad = await client.request(get("/", "X-Workload-Type: teleportation"))
            assert bad.status == 400 and "X-Workload-Type" in bad.json()["error"]


# -- the proxy's own answers ----------------------------------------------------------------------------


async def test_no_backend_is_503_with_retry_after() -> None:
    async with start_proxy([]) as proxy, proxy.client() as client:
        response = await client.request(get("/", "X-Request-ID: r-1"))
        assert response.status == 503 and response.header("Retry-After") == "1"
        assert response.header("Content-Type") == "application/json"
        assert response.json()["request_id"] == "r-1" and "no backend" in response.json()["error"]
        assert (await client.request(get())).status == 503  # the connection stays usable


async def test_open_circuits_are_503() -> None:
    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500)

    breaker = CircuitBreakerConfig(failure_threshold=1, timeout=60)
    async with AioBackend(handler=fail) as backend, start_proxy([backend.port], circuit_breaker=breaker) as proxy:
        async with proxy.client() as client:
            assert (await client.request(get())).status == 500  # passed through; opens the circuit
            response = await client.request(get())
        assert response.status == 503 and response.header("Retry-After") == "1"
        assert len(backend.requests) == 1


async def test_rate_limited_clients_get_429_with_retry_after() -> None:
    limits = RateLimitConfig(enabled=True, requests_per_second=0.5, burst_size=1)
    async with AioBackend() as backend, start_proxy([backend.port], rate_limit=limits) as proxy:
        async with proxy.client() as client:
            assert (await client.request(get())).status == 200
            response = await client.request(get())
        assert response.status == 429 and response.header("Retry-After") == "2"
        assert response.json()["error"] == "rate limit exceeded"
        assert len(backend.requests) == 1


async def test_a_backend_slower_than_request_timeout_is_504() -> None:
    backend = AioBackend()

    async def stall(request: web.Request) -> web.Response:
        await asyncio.wait_for(backend.release.wait(), 5)
        return web.Response(text="late")

    backend.handler = stall
    async with backend, start_proxy([backend.port], request_timeout=0.2) as proxy, proxy.client() as client:
        started = asyncio.get_running_loop().time()
        response = await client.request(get())
        assert response.status == 504 and "did not answer" in response.json()["error"]
        assert 0.15 < asyncio.get_running_loop().time() - started < 1.5
        state = proxy.lb.backends[proxy.backend_ids[0]]
        assert state.failed == 1 and state.in_flight == 0


async def test_a_5xx_from_the_backend_is_passed_through_and_counted_as_a_failure() -> None:
    async def teapot_or_error(request: web.Request) -> web.Response:
        return web.Response(status=500 if request.path == "/error" else 418, text="backend says")

    async with AioBackend(handler=teapot_or_error) as backend, start_proxy([backend.port]) as proxy:
        async with proxy.client() as client:
            assert (await client.request(get("/teapot"))).status == 418
            response = await client.request(get("/error"))
        assert response.status == 500 and response.body == b"backend says"
        state = proxy.lb.backends[proxy.backend_ids[0]]
        assert (state.successful, state.failed, state.in_flight) == (1, 1, 0)
        assert len(backend.requests) == 2  # a 500 is not retried


async def test_unreachable_backends_are_502_after_trying_each() -> None:
    async with start_proxy([closed_port(), closed_port()]) as proxy, proxy.client() as client:
        response = await client.request(get())
        assert response.status == 502 and "connecting to backend" in response.json()["error"]
    assert proxy.access.fields[-1]["attempts"] == 2
    assert all(proxy.lb.backends[b].failed == 1 for b in proxy.backend_ids)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ],
)
async def test_malformed_requests_are_400_and_the_connection_closed(request_bytes: bytes) -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        response = await client.request(request_bytes)
        assert response.status == 400 and response.header("Connection") == "close"
        assert "error" in response.json() and response.json()["request_id"]
        assert await client.closed()
    assert backend.requests == []


async def test_http_versions_other_than_1_0_and_1_1_are_refused() -> None:
    async with start_proxy([]) as proxy, proxy.client() as client:
        assert (await client.request(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n")).status == 505


async def test_a_head_larger_than_max_header_bytes_is_431() -> None:
    async with AioBackend() as backend, start_proxy([backend.port], limits={"max_header_bytes": 1024}) as proxy:
        async with proxy.client() as client:
            assert (await client.request(get("/", "X-Small: 1"))).status == 200
            response = await client.request(get("/", "X-Big: " + "b" * 2000))
            assert response.status == 431 and await client.closed()
        async with proxy.client() as client:  # a head that never ends is cut off the same way
            await client.send(b"GET / HTTP/1.1\r\nX-Endless: " + b"e" * 4000)
            assert (await client.read_response()).status == 431
    assert len(backend.requests) == 1


async def test_a_body_larger_than_max_body_bytes_is_413() -> None:
    async with AioBackend() as backend, start_proxy([backend.port], limits={"max_body_bytes": 1000}) as proxy:
        async with proxy.client() as client:  # by Content-Length, before any of the body
            response = await client.request(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
            assert response.status == 413 and await client.closed()
        async with proxy.client() as client:  # chunked: while streaming
            await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(3):
                await client.send(b"190\r\n" + b"c" * 400 + b"\r\n")
            response = await client.read_response()
            assert response.status == 413 and await client.closed()
        async with proxy.client() as client:
            ok = await client.request(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"k" * 1000)
            assert ok.status == 200
    assert proxy.lb.backends[proxy.backend_ids[0]].in_flight == 0


async def test_slowloris_is_cut_off_by_header_timeout_while_others_are_served() -> None:
    async with (
        AioBackend() as backend,
        start_proxy([backend.port], limits=FAST) as proxy,
        proxy.client() as slow,
        proxy.client() as fast,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        await slow.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        served = 0
        response = None
        while response is None:
            await slow.send(b"X-Trickle: 1\r\n")
            assert (await fast.request(get())).status == 200
            served += 1
            with contextlib.suppress(asyncio.TimeoutError):
                response = await asyncio.wait_for(slow.read_response(), 0.02)
        assert response.status == 408 and await slow.closed()
        assert 0.15 < loop.time() - started < 1.0 and served >= 3
    assert [f["status"] for f in proxy.access.fields].count(408) == 1


async def test_an_idle_keep_alive_connection_is_closed_silently() -> None:
    async with AioBackend() as backend, start_proxy([backend.port], limits=FAST) as proxy, proxy.client() as client:
        assert (await client.request(get())).status == 200
        assert client.reader is not None
        assert await asyncio.wait_for(client.reader.read(), 2) == b""  # no 408, just the close


async def test_a_body_that_stalls_beyond_idle_timeout_is_cut_off() -> None:
    async with (
        AioBackend() as backend,
        start_proxy([backend.port], limits=FAST) as proxy,
        proxy.client() as slow,
        proxy.client() as fast,
    ):
        await slow.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"s" * 10)
        assert (await fast.request(get())).status == 200
        response = await slow.read_response()
        assert response.status == 408 and await slow.closed()
    assert proxy.lb.backends[proxy.backend_ids[0]].in_flight == 0


# -- retries --------------------------------------------------------------------------------------------


async def test_a_get_is_retried_on_another_backend_when_connecting_fails() -> None:
    async with AioBackend("up") as up, start_proxy([closed_port(), up.port]) as proxy:
        async with proxy.client() as client:
            for _ in range(4):
                response = await client.request(get())
                assert response.status == 200 and echoed(response.body)["backend"] == "up"
        attempts = [f["attempts"] for f in proxy.access.fields]
        assert 2 in attempts and set(attempts) <= {1, 2}


async def test_a_get_is_retried_when_a_backend_answers_503() -> None:
    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")

    async with (
        AioBackend("busy", unavailable) as busy,
        AioBackend("ok") as ok,
        start_proxy([busy.port, ok.port]) as proxy,
        proxy.client() as client,
    ):
        for _ in range(2):
            response = await client.request(get())
            assert response.status == 200 and echoed(response.body)["backend"] == "ok"
        assert len(busy.requests) == 2  # round robin sends each first try there
        assert proxy.lb.backends[proxy.backend_ids[0]].failed == 2


async def test_a_503_is_passed_on_when_no_other_backend_is_left() -> None:
    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy", headers={"Retry-After": "7"})

    async with AioBackend("busy", unavailable) as busy, start_proxy([busy.port]) as proxy, proxy.client() as client:
        response = await client.request(get())
        assert response.status == 503 and response.body == b"busy" and response.header("Retry-After") == "7"
        assert len(busy.requests) == 1 and proxy.access.fields[-1]["attempts"] == 1


class Resetter(RawBackend):
    """Closes every connection as soon as a request head arrives."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        data = await reader.readuntil(b"\r\n\r\n")
        self.received += data
        writer.transport.abort()


async def test_a_get_reset_before_its_response_is_retried_but_a_post_is_not() -> None:
    async with (
        Resetter() as resetter,
        AioBackend("ok") as ok,
        start_proxy([resetter.port, ok.port]) as proxy,
        proxy.client() as client,
    ):
        response = await client.request(get("/g"))  # round robin tries the resetter first
        assert response.status == 200 and echoed(response.body)["backend"] == "ok"
        assert resetter.received.count(b"GET /g ") == 1

        response = await client.request(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        assert response.status == 502 and "before answering" in response.json()["error"]
        assert resetter.received.count(b"POST /p ") == 1 and ok.requests == [("GET", "/g")]


async def test_a_post_is_retried_when_no_backend_received_it() -> None:
    async with AioBackend("ok") as ok, start_proxy([closed_port(), ok.port]) as proxy, proxy.client() as client:
        for _ in range(2):
            response = await client.request(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            assert response.status == 200 and echoed(response.body)["body_size"] == 2


async def test_a_retried_put_replays_its_body() -> None:
    async with Resetter() as resetter, RawBackend("ok") as ok, start_proxy([resetter.port, ok.port]) as proxy:
        async with proxy.client() as client:
            body = b"p" * 30000
            await client.send(b"PUT /doc HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            await client.send(b"%x\r\n%s\r\n" % (len(body), body))
            await asyncio.sleep(0.02)  # the first try has started and failed meanwhile
            await client.send(b"3\r\nend\r\n0\r\n\r\n")
            response = await client.read_response()
        assert response.status == 200 and response.body == b"ok"
        assert ok.bodies == [body + b"end"]


async def test_zero_failed_gets_while_one_of_two_backends_is_killed_under_load() -> None:
    async with AioBackend("a") as a, AioBackend("b") as b:
        async with start_proxy([a.port, b.port]) as proxy:
            statuses: list[int] = []
            served_by: list[str] = []
            stop = asyncio.Event()

            async def worker(http: aiohttp.ClientSession) -> None:
                while not stop.is_set():
                    async with http.get(f"{proxy.url}/load") as response:
                        statuses.append(response.status)
                        if response.status == 200:
                            served_by.append(echoed(await response.read())["backend"])  # type: ignore[arg-type]

            async with aiohttp.ClientSession() as http:
                workers = [asyncio.create_task(worker(http)) for _ in range(8)]
                while len(statuses) < 200:
                    await asyncio.sleep(0.005)
                killed_at = len(statuses)
                await b.stop()
                while len(statuses) < killed_at + 400:
                    await asyncio.sleep(0.005)
                stop.set()
                await asyncio.gather(*workers)
        assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
        assert "b" in served_by[:killed_at] and "b" not in served_by[killed_at + 50 :]


async def test_routes_are_always_completed() -> None:
    async def mixed(request: web.Request) -> web.Response:
        return web.Response(status=500 if request.path == "/bad" else 200)

    async with AioBackend(handler=mixed) as backend, start_proxy([backend.port]) as proxy:
        async with aiohttp.ClientSession() as http:
            for path in ["/ok", "/bad", "/ok", "/bad", "/ok"]:
                async with http.get(proxy.url + path) as response:
                    await response.read()
        state = proxy.lb.backends[proxy.backend_ids[0]]
        assert (state.successful, state.failed, state.in_flight, state.total) == (3, 2, 0, 5)
        assert proxy.lb.router.in_flight == 0 and proxy.proxy.in_flight == 0


# -- access log, drain, loops --------------------------------------------------------------------------------


async def test_the_access_log_has_one_json_line_per_request() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await client.request(get("/path/x?secret=1", "X-Request-ID: log-1"))
        await client.request(b"BAD\r\n\r\n")
    assert len(proxy.access.lines) == 2
    line = json.loads(proxy.access.lines[0])
    assert set(line) == {
        "time",
        "request_id",
        "client_ip",
        "method",
        "path",
        "protocol",
        "status",
        "host",
        "user_agent",
        "tls_version",
        "route",
        "pool",
        "backend_id",
        "attempts",
        "request_bytes",
        "response_bytes",
        "response_body_bytes",
        "upstream_connect_ms",
        "upstream_header_ms",
        "upstream_ms",
        "total_ms",
    }
    assert line["request_id"] == "log-1" and line["method"] == "GET" and line["path"] == "/path/x"
    assert line["status"] == 200 and line["backend_id"] == proxy.backend_ids[0] and line["attempts"] == 1
    assert line["client_ip"] == "127.0.0.1" and line["time"].endswith("Z")
    assert 0 < line["upstream_ms"] <= line["total_ms"]
    assert json.loads(proxy.access.lines[1])["status"] == 400


async def test_no_access_log_when_it_is_off() -> None:
    async with (
        AioBackend() as backend,
        start_proxy([backend.port], access_log=False) as proxy,
        proxy.client() as client,
    ):
        assert (await client.request(get())).status == 200
    assert proxy.access.lines == []


async def test_drain_lets_requests_in_flight_finish_and_closes_idle_connections() -> None:
    backend = AioBackend()
    arrived = asyncio.Event()

    async def slowish(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(0.05)
        return web.Response(text="finished")

    backend.handler = slowish
    async with backend, start_proxy([backend.port]) as proxy, proxy.client() as busy, proxy.client() as idle:
        assert (await idle.request(get())).status == 200
        arrived.clear()
        await busy.send(get())
        await arrived.wait()
        await proxy.proxy.stop_accepting()
        left = await proxy.proxy.drain(5.0)
        response = await busy.read_response()
        assert left == 0 and response.status == 200 and response.body == b"finished"
        assert response.header("Connection") == "close"
        assert await idle.closed() and await busy.closed()
        with pytest.raises(OSError):
            await RawClient(proxy.port).connect()


async def test_drain_cuts_off_what_is_still_running_at_the_timeout() -> None:
    backend = AioBackend()

    async def stall(request: web.Request) -> web.Response:
        await asyncio.wait_for(backend.release.wait(), 5)
        return web.Response()

    backend.handler = stall
    async with backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await client.send(get())
        while proxy.proxy.in_flight == 0:
            await asyncio.sleep(0.005)
        assert await proxy.proxy.drain(0.05) == 1
        assert await client.closed()
        for _ in range(100):
            if proxy.lb.router.in_flight == 0:
                break
            await asyncio.sleep(0.005)
        assert proxy.lb.router.in_flight == 0


async def test_a_new_config_applies_to_the_next_requests() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        assert (await client.request(get("/", "X-Big: " + "b" * 2000))).status == 200
        proxy.proxy.config = server_config(limits={"max_header_bytes": 1024}, access_log=False)
        assert (await client.request(get("/", "X-Big: " + "b" * 2000))).status == 431
    assert len(proxy.access.lines) == 1


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner(loop_factory=...) needs Python 3.11")
def test_the_proxy_runs_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async with AioBackend() as backend, start_proxy([backend.port]) as proxy, aiohttp.ClientSession() as http:
            async with http.post(f"{proxy.url}/u", data=b"u" * (3 * MB)) as response:
                assert echoed(await response.read())["body_size"] == 3 * MB
            async with proxy.client() as client:
                response = await client.request(
                    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                )
                assert echoed(response.body)["body_size"] == 3
                assert (await client.request(b"NOPE\r\n\r\n")).status == 400

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
