"""The proxy's reader: where it cuts the stream, and what it accepts that llhttp alone refuses.

Every case runs through a real proxy to a real backend that records the bytes it gets
(RawBackend), and is handed to the proxy's connection in exact reads (``feed_split``):
all at once, byte by byte, and in pieces of 2, 3, 7 and 64 bytes. The answers come back
on a real socket. The cases:

- any method that is a token (``-BLARGH``, ``FOO``, ``get``) is forwarded as it came, at
  most 32 bytes (501 beyond, RFC 9112 3), also pipelined and after an ignored upgrade;
- chunk extensions with whitespace where RFC 9112 7.1.1 has BWS are accepted and dropped;
  a chunk-size line is at most 4096 bytes, each one, however many chunks came before;
- ``max_header_bytes`` holds for every head, including one that follows another request in
  the same read, and for a trailer section;
- bad framing is refused with 400, the connection closed, and nothing reaches the backend.
"""

from __future__ import annotations

import asyncio

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from load_balancing_module.server.http import MAX_METHOD
from load_balancing_module.server.reader import CHUNK_LINE_LIMIT
from proxy_helpers import (
    SPLIT_IDS,
    SPLITS,
    ProxyHarness,
    RawBackend,
    RawClient,
    connection_of,
    feed_split,
    start_proxy,
)

CHUNKED = b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
split_sizes = pytest.mark.parametrize("size", SPLITS, ids=SPLIT_IDS)


async def answers(proxy: ProxyHarness, client: RawClient, data: bytes, size: int, count: int = 1) -> list[int]:
    """The statuses of the first ``count`` answers to ``data``, fed in reads of ``size`` bytes."""
    await feed_split(proxy, client, data, size)
    return [(await client.read_response()).status for _ in range(count)]


async def refused(data: bytes, size: int, status: int = 400, **limits: int) -> str:
    """``data`` gets ``status`` and the connection closes, with nothing sent to the backend."""
    async with RawBackend() as backend, start_proxy([backend.port], limits=limits) as proxy:
        client = proxy.client()
        await client.connect()
        await feed_split(proxy, client, data, size)
        response = await client.read_response()
        assert response.status == status, response
        assert response.header("Connection") == "close" and await client.closed()
        await client.close()
    assert backend.received == b"" and backend.connections == 0
    error: str = response.json()["error"]
    return error


# -- methods -------------------------------------------------------------------------------------


@split_sizes
@pytest.mark.parametrize(
    "method", [b"-BLARGH", b"FOO", b"get", b"M-SEARCH", b"PROPFIND", b"X_Y.Z~1!", b"A" * MAX_METHOD]
)
async def test_any_token_is_a_method_and_is_forwarded_as_it_came(method: bytes, size: int) -> None:
    request = method + b" /m?q=1 HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\r\n"
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        assert await answers(proxy, client, request, size) == [200]
    assert [(r.method, r.target) for r in backend.requests] == [(method, b"/m?q=1")]
    assert bytes(backend.received).startswith(method + b" /m?q=1 HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n")
    assert proxy.access.fields[-1]["method"] == method.decode()


@split_sizes
async def test_methods_llhttp_does_not_know_keep_pipelining_and_bodies_in_place(size: int) -> None:
    stream = (
        b"FOO /1 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"-BLARGH /3 HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nGET /x HTTP"
        b"\r\n\r\nBAR /4 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nFOO \r\n0\r\n\r\n"
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        assert await answers(proxy, client, stream, size, count=5) == [200] * 5
    assert [(r.method, r.target) for r in backend.requests] == [
        (b"FOO", b"/1"),
        (b"GET", b"/2"),
        (b"-BLARGH", b"/3"),
        (b"BAR", b"/4"),
        (b"OPTIONS", b"*"),
    ]
    assert backend.bodies == [b"", b"", b"GET /x HTTP", b"FOO ", b""]


@split_sizes
@pytest.mark.parametrize(
    ("head", "keeps"),
    [
        (b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n", True),
        (b"FOO /a?b=c HTTP/1.1\r\nHost: t\r\n\r\n", True),
        (b"GET http://t/a HTTP/1.1\r\nHost: t\r\n\r\n", True),
        (b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", False),
        (b"GET /a HTTP/1.1\r\nHost: t\r\nProxy-Connection: close\r\n\r\n", False),  # llhttp reads it too
        (b"GET /a HTTP/1.0\r\n\r\n", False),
        (b"FOO /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET /a HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n", True),
    ],
)
async def test_the_version_and_keep_alive_are_read_as_llhttp_reads_them(size: int, head: bytes, keeps: bool) -> None:
    # The reader reads the version from the request line and asks llhttp about keep-alive only when
    # a header it reads is there; each split of the stream must give llhttp's own answer.
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await feed_split(proxy, client, head, size)
        response = await client.read_response()
        assert response.status == 200
        assert (response.header("Connection") != "close") is keeps
        if keeps:
            await feed_split(proxy, client, b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n", size)
            assert (await client.read_response()).status == 200
        else:
            assert await client.closed()
    assert [r.target.partition(b"?")[0] for r in backend.requests] == ([b"/a", b"/b"] if keeps else [b"/a"])


@split_sizes
async def test_an_ignored_upgrade_with_an_unknown_method_keeps_its_body_and_what_follows(size: int) -> None:
    body = b"BAZ /smuggled HTTP/1.1\r\n\r\n"
    stream = (
        b"FOO /h2c HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body) + b"QUX /next HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        assert await answers(proxy, client, stream, size, count=2) == [200, 200]
    assert [(r.method, r.target) for r in backend.requests] == [(b"FOO", b"/h2c"), (b"QUX", b"/next")]
    assert backend.bodies == [body, b""] and b"Upgrade" not in backend.received


@split_sizes
@pytest.mark.parametrize(
    ("start", "status"),
    [
        (b"A" * (MAX_METHOD + 1) + b" / HTTP/1.1", 501),
        (b"A" * (MAX_METHOD + 1), 501),
        (b"G(T / HTTP/1.1", 400),
        (b" GET / HTTP/1.1", 400),
        (b"GET\t/ HTTP/1.1", 400),
        (b"G\x00T / HTTP/1.1", 400),
        (b"GE\r\nT / HTTP/1.1", 400),
    ],
)
async def test_a_method_that_is_not_a_token_or_too_long_is_refused(start: bytes, status: int, size: int) -> None:
    await refused(start + b"\r\nHost: t\r\n\r\n", size, status)


async def test_connect_is_still_refused_with_405() -> None:
    for size in SPLITS:
        await refused(b"CONNECT internal:22 HTTP/1.1\r\nHost: internal:22\r\n\r\n", size, 405)


# -- chunked bodies ----------------------------------------------------------------------------------


@split_sizes
@pytest.mark.parametrize(
    "line",
    [
        b"5; name=value",
        b"5;name = value",
        b"5;name= value",
        b"5 ; name = value",
        b"5\t;\tname\t=\tvalue",
        b'5; name = "a; b=\\"c\\""',
        b"5;a;b;c=d",
        b"5;a = b ;c",
        b"0005;x",
        b"5 ; name=value ",
        b"5",
    ],
)
async def test_chunk_extensions_with_whitespace_where_the_rfc_allows_it_are_accepted(line: bytes, size: int) -> None:
    request = CHUNKED + line + b'\r\nhello\r\n6;last = 1\r\n world\r\n0 ; end = "x"\r\n\r\n'
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        assert await answers(proxy, client, request, size) == [200]
    assert backend.bodies == [b"hello world"]
    body = bytes(backend.received).split(b"\r\n\r\n", 1)[1]  # the proxy's own chunks: no extension
    assert b";" not in body and b"name" not in body and b"last" not in body and body.endswith(b"\r\n0\r\n\r\n")


@split_sizes
async def test_a_chunk_size_line_is_bounded_each_however_many_chunks_came_before(size: int) -> None:
    small = b"1\r\na\r\n" * 2000  # 2,000 chunks of framing without extensions: no credit for later ones
    at_limit = b"1;x=" + b"v" * (CHUNK_LINE_LIMIT - 6) + b"\r\n"
    assert len(at_limit) == CHUNK_LINE_LIMIT
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        assert await answers(proxy, client, CHUNKED + small + at_limit + b"b\r\n0\r\n\r\n", size) == [200]
    assert backend.bodies == [b"a" * 2000 + b"b"]
    over = b"1;x=" + b"v" * (CHUNK_LINE_LIMIT - 5) + b"\r\n"
    error = await refused(CHUNKED + small[:60] + over + b"b\r\n0\r\n\r\n", size)
    assert "chunk extensions" in error


BAD_CHUNKED = {
    "cr-cr-lf-after-data": b"5\r\nhello\r\r\n0\r\n\r\n",
    "bare-lf-after-data": b"5\r\nhello\n\r\n0\r\n\r\n",
    "data-too-long": b"5\r\nhelloX\r\n0\r\n\r\n",
    "empty-extension": b"5;\r\nhello\r\n0\r\n\r\n",
    "empty-value": b"5;a=\r\nhello\r\n0\r\n\r\n",
    "space-in-name": b"5;a b\r\nhello\r\n0\r\n\r\n",
    "unclosed-quote": b'5;a="b\r\nhello\r\n0\r\n\r\n',
    "control-in-value": b"5;a=\x01\r\nhello\r\n0\r\n\r\n",
    "bare-cr-in-line": b"5\r\r\nhello\r\n0\r\n\r\n",
    "17-digits": b"1" + b"0" * 16 + b"\r\nhello\r\n0\r\n\r\n",
    "no-size": b"\r\nhello\r\n0\r\n\r\n",
    "space-in-size": b"5 5\r\nhello\r\n0\r\n\r\n",
    "0x": b"0x5\r\nhello\r\n0\r\n\r\n",
    "trailer-no-colon": b"5\r\nhello\r\n0\r\nX\r\n\r\n",
    "trailer-space-before-colon": b"5\r\nhello\r\n0\r\nX : 1\r\n\r\n",
    "framing-trailer": b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
}


@split_sizes
@pytest.mark.parametrize("body", list(BAD_CHUNKED.values()), ids=list(BAD_CHUNKED))
async def test_bad_chunked_framing_is_refused_in_every_split(body: bytes, size: int) -> None:
    await refused(CHUNKED + body + b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n", size)


@split_sizes
async def test_a_trailer_section_is_bounded_by_max_header_bytes(size: int) -> None:
    trailer = b"X-T:" + b" " * 1200 + b"1\r\n\r\n"  # llhttp drops the spaces; the reader counts them
    error = await refused(CHUNKED + b"5\r\nhello\r\n0\r\n" + trailer, size, 431, max_header_bytes=1024)
    assert "trailers" in error
    async with RawBackend() as backend, start_proxy([backend.port], limits={"max_header_bytes": 1024}) as proxy:
        small = b"X-T:" + b" " * 900 + b"1\r\n\r\n"
        async with proxy.client() as client:
            assert await answers(proxy, client, CHUNKED + b"5\r\nhello\r\n0\r\n" + small, size) == [200]
    assert backend.bodies == [b"hello"] and b"X-T" not in backend.received


# -- heads ---------------------------------------------------------------------------------------------


@split_sizes
async def test_max_header_bytes_counts_every_head_exactly(size: int) -> None:
    limit = 1024
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-A:"
    fits = head + b" " * (limit - len(head) - 5) + b"v\r\n\r\n"  # exactly the limit, blank line included
    assert len(fits) == limit
    async with (
        RawBackend() as backend,
        start_proxy([backend.port], limits={"max_header_bytes": limit}) as proxy,
        proxy.client() as client,
    ):
        assert await answers(proxy, client, b"\r\n" + fits + fits, size, count=2) == [200, 200]
    assert len(backend.requests) == 2
    await refused(fits.replace(b"X-A:", b"X-A: "), size, 431, max_header_bytes=limit)  # one byte more


@split_sizes
async def test_a_head_after_another_request_in_the_same_read_is_bounded_too(size: int) -> None:
    big = b"GET /second HTTP/1.1\r\nHost: t\r\nX-A:" + b" " * 3000 + b"v\r\n\r\n"
    async with (
        RawBackend() as backend,
        start_proxy([backend.port], limits={"max_header_bytes": 1024}) as proxy,
        proxy.client() as client,
    ):
        await feed_split(proxy, client, b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n" + big, size)
        assert (await client.read_response()).status == 200
        assert (await client.read_response()).status == 431
        assert await client.closed()
    assert [r.target for r in backend.requests] == [b"/first"] and b"/second" not in backend.received


@split_sizes
async def test_empty_lines_before_a_request_are_skipped(size: int) -> None:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        stream = b"\r\n\r\nFOO /a HTTP/1.1\r\nHost: t\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n"
        assert await answers(proxy, client, stream, size, count=2) == [200, 200]
    assert [(r.method, r.target) for r in backend.requests] == [(b"FOO", b"/a"), (b"GET", b"/b")]


async def test_what_the_backend_gets_for_an_unknown_method_parses_as_that_request() -> None:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await answers(proxy, client, b"-BLARGH /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok", 1)
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(bytes(backend.received))
    request = parser.next_event()
    assert isinstance(request, h11.Request) and request.method == b"-BLARGH" and request.target == b"/x"
    assert dict(request.headers)[b"content-length"] == b"2"


async def test_the_same_over_the_socket_byte_by_byte() -> None:
    """The cases above, sent through the socket one byte a write (the kernel may merge some)."""
    stream = (
        b"\r\n-BLARGH /a HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok"
        + CHUNKED
        + b'5 ; a = "b;c"\r\nhello\r\n0;z\r\nX-T: 1\r\n\r\n'
        + b"M-SEARCH /m HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        for i in range(len(stream)):
            await client.send(stream[i : i + 1])
            await asyncio.sleep(0)
        assert [(await client.read_response()).status for _ in range(3)] == [200] * 3
    assert [(r.method, r.target) for r in backend.requests] == [
        (b"-BLARGH", b"/a"),
        (b"POST", b"/c"),
        (b"M-SEARCH", b"/m"),
    ]
    assert backend.bodies == [b"ok", b"hello", b""]


# -- any valid stream, any split -----------------------------------------------------------------------

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOKENS = st.text(TCHAR, min_size=1, max_size=12).map(str.encode)
BWS = st.sampled_from([b"", b" ", b"\t", b" \t "])
QUOTED = st.text("ab ;=,\t!#~", max_size=8).map(lambda t: b'"' + t.encode() + b'"') | st.just(b'"a\\"b"')
EXTENSION = st.tuples(BWS, BWS, TOKENS, st.none() | st.tuples(BWS, BWS, TOKENS | QUOTED)).map(
    lambda e: e[0] + b";" + e[1] + e[2] + (b"" if e[3] is None else e[3][0] + b"=" + e[3][1] + e[3][2])
)


@st.composite
def chunk_line(draw: st.DrawFn, size: int) -> bytes:
    digits = b"%x" % size
    digits = b"0" * draw(st.integers(0, 3)) + (digits.upper() if draw(st.booleans()) else digits)
    return digits + b"".join(draw(st.lists(EXTENSION, max_size=3))) + draw(st.sampled_from([b"", b" "])) + b"\r\n"


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes, bytes, bytes]:
    """(method, target, request bytes, the body the backend must get)."""
    method = draw(TOKENS.filter(lambda m: m not in (b"CONNECT", b"HEAD")))
    target = b"/" + draw(TOKENS)
    head = method + b" " + target + b" HTTP/1.1\r\nHost: t\r\n"
    kind = draw(st.sampled_from(["none", "length", "chunked"]))
    if kind == "none":
        return method, target, head + b"\r\n", b""
    if kind == "length":
        body = draw(st.binary(max_size=40))
        return method, target, head + b"Content-Length: %d\r\n\r\n" % len(body) + body, body
    chunks = draw(st.lists(st.binary(min_size=1, max_size=20), max_size=4))
    framed = b"".join(draw(chunk_line(len(c))) + c + b"\r\n" for c in chunks) + draw(chunk_line(0))
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, t) for i, t in enumerate(draw(st.lists(TOKENS, max_size=2))))
    return method, target, head + b"Transfer-Encoding: chunked\r\n\r\n" + framed + trailers + b"\r\n", b"".join(chunks)


@settings(max_examples=60, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=4), st.lists(st.integers(1, 64), min_size=1, max_size=40))
def test_any_valid_stream_reaches_the_backend_as_the_same_requests_in_any_split(
    stream: list[tuple[bytes, bytes, bytes, bytes]], cuts: list[int]
) -> None:
    data = b"".join(r[2] for r in stream)
    pieces, pos = [], 0
    for cut in cuts * (len(data) // sum(cuts) + 1):
        if pos >= len(data):
            break
        pieces.append(data[pos : pos + cut])
        pos += cut

    async def scenario() -> RawBackend:
        async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
            conn = await connection_of(proxy, client)
            for piece in pieces:
                conn.data_received(piece)
            assert [(await client.read_response()).status for _ in stream] == [200] * len(stream)
        return backend

    backend = asyncio.run(scenario())
    assert [(r.method, r.target) for r in backend.requests] == [(r[0], r[1]) for r in stream]
    assert backend.bodies == [r[3] for r in stream]
