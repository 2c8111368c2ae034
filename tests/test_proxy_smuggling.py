"""Request smuggling: ambiguous framing is refused with 400, the connection closed, and nothing reaches a backend.

The backend is a raw server that records every byte it receives (and answers what
h11 parses), so "nothing reached it" is checked on the bytes themselves. Each case
is followed by a valid request through the same proxy and backend, which shows
the recorder would have seen anything that got through.
"""

from __future__ import annotations

import asyncio

import h11
import pytest

from proxy_helpers import RawBackend, get, start_proxy

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
HEAD = b"POST /upload HTTP/1.1\r\nHost: t\r\n"

REFUSED = {
    # Content-Length and Transfer-Encoding together (CL.TE / TE.CL)
    "cl-and-te": HEAD + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-and-cl": HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n" + SMUGGLED,
    # obfuscated Transfer-Encoding
    "space-before-colon": HEAD + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "chunked-identity": HEAD + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "identity-chunked": HEAD + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "gzip-chunked": HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "xchunked": HEAD + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "chunked-suffix": HEAD + b"Transfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "tab-before-value": HEAD + b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "two-spaces-before-value": HEAD + b"Transfer-Encoding:  chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "vertical-tab-before-value": HEAD + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "vertical-tab-after-value": HEAD + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "trailing-space": HEAD + b"Transfer-Encoding: chunked \r\n\r\n0\r\n\r\n" + SMUGGLED,
    "obs-fold-value": HEAD + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "obs-fold-continuation": HEAD + b"X-Pad: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "quoted": HEAD + b'Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n' + SMUGGLED,
    "duplicate-te": HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "duplicate-te-identity": HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "te-in-http-1.0": b"POST /upload HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "empty-te": HEAD + b"Transfer-Encoding: \r\nContent-Length: 0\r\n\r\n",
    # Content-Length
    "differing-cl": HEAD + b"Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd" + SMUGGLED,
    "repeated-cl": HEAD + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
    "cl-list": HEAD + b"Content-Length: 4, 40\r\n\r\nabcd" + SMUGGLED,
    "cl-plus": HEAD + b"Content-Length: +4\r\n\r\nabcd",
    "cl-minus": HEAD + b"Content-Length: -4\r\n\r\nabcd",
    "cl-hex": HEAD + b"Content-Length: 0x4\r\n\r\nabcd",
    "cl-letters": HEAD + b"Content-Length: 4a\r\n\r\nabcd",
    "cl-inner-space": HEAD + b"Content-Length: 4 0\r\n\r\nabcd",
    "cl-overflow": HEAD + b"Content-Length: 184467440737095516160\r\n\r\nabcd",
    "cl-empty": HEAD + b"Content-Length: \r\n\r\n",
    # chunk framing
    "chunk-0x-prefix": HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-plus": HEAD + b"Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
    "chunk-minus": HEAD + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk-overflow": HEAD + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-size-bare-lf": HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-data-bare-lf": HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n" + SMUGGLED,
    "chunk-all-bare-lf": HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n" + SMUGGLED,
    # "5 \r\n" (spaces after a chunk size) is accepted: RFC 9112 allows whitespace before a ";"
    # extension, and the proxy re-encodes chunks, so no backend reads it (test_http_strict.py).
    "chunk-too-long": HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-extension-bare-lf": HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;a\nhello\r\n0\r\n\r\n" + SMUGGLED,
    # line endings and characters in the head
    "bare-lf-head": b"POST /upload HTTP/1.1\nHost: t\nContent-Length: 0\n\n" + SMUGGLED,
    "bare-cr-head": b"POST /upload HTTP/1.1\rHost: t\r\nContent-Length: 0\r\n\r\n" + SMUGGLED,
    "nul-in-value": HEAD + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "space-before-first-header": b"POST /upload HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: t\r\n\r\n0\r\n\r\n",
}


async def refused(request: bytes) -> RawBackend:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy:
        async with proxy.client() as client:
            response = await client.request(request)
            assert response.status == 400, response
            assert response.header("Connection") == "close" and "error" in response.json()
            assert await client.closed()
        assert bytes(backend.received) == b"" and backend.connections == 0
        assert proxy.lb.backends[proxy.backend_ids[0]].total == 0
        async with proxy.client() as client:  # the control: a valid request does reach the recorder
            valid = HEAD + b"Transfer-Encoding: CHUNKED\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            assert (await client.request(valid)).status == 200
        assert backend.bodies == [b"ok"] and SMUGGLED not in backend.received
    return backend


@pytest.mark.parametrize("request_bytes", list(REFUSED.values()), ids=list(REFUSED))
async def test_ambiguous_framing_is_refused_and_never_reaches_the_backend(request_bytes: bytes) -> None:
    await refused(request_bytes)


async def test_a_smuggling_attempt_after_a_valid_pipelined_request_reaches_nothing() -> None:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await client.send(get("/first") + REFUSED["cl-and-te"] + get("/after"))
        first = await client.read_response()
        assert first.status == 200 and first.header("Connection") == "close"
        assert (await client.read_response()).status == 400
        assert await client.closed()
    assert [r.target for r in backend.requests] == [b"/first"]
    assert b"smuggled" not in backend.received and b"/upload" not in backend.received


async def test_a_bad_chunk_in_a_small_body_reaches_no_backend() -> None:
    """A body is read up to 64 KiB before a backend is chosen: bad framing inside it is refused
    before any byte of the request goes out, however late it arrives."""
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await client.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n")
        await asyncio.sleep(0.05)  # time enough to have forwarded the head, if the proxy did
        await client.send(b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED)
        assert (await client.read_response()).status == 400
        assert await client.closed()
    assert backend.received == b"" and not backend.connections
    assert proxy.lb.backends[proxy.backend_ids[0]].in_flight == 0


async def test_a_bad_chunk_arriving_after_the_body_streamed_leaves_only_the_proxys_framing() -> None:
    big = b"a" * 70_000  # over the 64 KiB read before routing: the request streams from there on
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await client.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(big), big))
        for _ in range(200):  # until the head and the first chunk have reached the backend
            if backend.received.endswith(b"a\r\n"):
                break
            await asyncio.sleep(0.005)
        await client.send(b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED)
        assert (await client.read_response()).status == 400
        assert await client.closed()
        for _ in range(200):
            if backend.connections and not backend._writers:
                break
            await asyncio.sleep(0.005)
    # What the backend got parses as one unfinished chunked request: no second request, no smuggled text.
    received = bytes(backend.received)
    assert received.endswith(b"a\r\n") and b"smuggled" not in received
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(received)
    events = []
    while (event := parser.next_event()) is not h11.NEED_DATA:
        events.append(event)
    assert [type(e) for e in events][:2] == [h11.Request, h11.Data]
    assert set(type(e) for e in events[1:]) == {h11.Data}
    assert proxy.lb.backends[proxy.backend_ids[0]].in_flight == 0


async def test_an_ignored_upgrade_keeps_its_body_as_a_body() -> None:
    # llhttp reads no body after an Upgrade request; the proxy must not read it as a new request.
    h2c = (
        b"POST /h2c HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: %d\r\n\r\n%s"
    ) % (len(SMUGGLED), SMUGGLED)
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        assert (await client.request(h2c)).status == 200
        assert (await client.request(get("/next"))).status == 200  # the connection goes on as HTTP/1.1
        chunked = h2c.replace(b"Content-Length: %d\r\n\r\n" % len(SMUGGLED), b"Transfer-Encoding: chunked\r\n\r\n")
        chunked = chunked.replace(SMUGGLED, b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED))
        assert (await client.request(chunked)).status == 200
    assert [r.target for r in backend.requests] == [b"/h2c", b"/next", b"/h2c"]
    assert backend.bodies == [SMUGGLED, b"", SMUGGLED]
    assert b"Upgrade" not in backend.received and b"HTTP2-Settings" not in backend.received


async def test_connect_is_refused() -> None:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        response = await client.request(b"CONNECT internal:22 HTTP/1.1\r\nHost: internal:22\r\n\r\n")
        assert response.status == 405 and await client.closed()
    assert backend.received == b""


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ],
)
async def test_a_backend_response_with_ambiguous_framing_is_502(reply: bytes) -> None:
    async with RawBackend(reply=reply) as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        response = await client.request(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        assert response.status == 502 and b"ok" not in response.body
