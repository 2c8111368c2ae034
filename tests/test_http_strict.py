"""HTTP strictness where a proxy must be strict, leniency where the RFC says a message is valid.

Black-box through the proxy on real sockets; parser paths are fed all at once, byte by byte
and in a few other splits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from proxy_helpers import AioBackend, RawBackend, RawClient, start_proxy


def splits(data: bytes) -> Iterator[list[bytes]]:
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for size in (2, 7, 64):
        yield [data[i : i + size] for i in range(0, len(data), size)]


SPLITS = ["whole", "bytes", "by2", "by7", "by64"]


async def send_split(client: RawClient, pieces: list[bytes]) -> None:
    for piece in pieces:
        await client.send(piece)
        if len(pieces) > 1:
            await asyncio.sleep(0)


def pieces(data: bytes, how: str) -> list[bytes]:
    return list(splits(data))[SPLITS.index(how)]


@pytest.mark.parametrize("how", SPLITS)
async def test_an_absolute_form_target_replaces_host(how: str) -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await send_split(
            client, pieces(b"GET http://other.example:8080/x?y=1 HTTP/1.1\r\nHost: client.test\r\n\r\n", how)
        )
        answer = (await client.read_response()).json()
        headers = {k.lower(): v for k, v in answer["headers"]}
        assert answer["path"] == "/x?y=1" and headers["host"] == "other.example:8080"
        assert headers["x-forwarded-host"] == "other.example:8080"


@pytest.mark.parametrize("target", [b"ftp://a.test/x", b"http://user@a.test/x", b"http:///x", b"a.test/x"])
async def test_a_bad_absolute_form_is_refused(target: bytes) -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        response = await client.request(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert response.status == 400 and backend.requests == []


async def test_an_asterisk_target_is_for_options_only() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy:
        client = proxy.client()
        assert (await client.request(b"GET * HTTP/1.1\r\nHost: t\r\n\r\n")).status == 400
        await client.close()
        client = proxy.client()
        assert (await client.request(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n")).status != 400
        await client.close()


async def test_header_names_with_underscores_are_dropped() -> None:
    async with AioBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        response = await client.request(
            b"GET / HTTP/1.1\r\nHost: t\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX-Kept: yes\r\n\r\n"
        )
        names = [k.lower() for k, _ in response.json()["headers"]]
        assert "x-kept" in names and not any("_" in n for n in names)
        assert "6.6.6.6" not in str(response.json()["headers"])


@pytest.mark.parametrize("how", SPLITS)
async def test_max_header_bytes_holds_however_the_bytes_arrive(how: str) -> None:
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-A:" + b" " * 3000 + b"v\r\n\r\n"  # llhttp drops the spaces
    async with AioBackend() as backend, start_proxy([backend.port], limits={"max_header_bytes": 1024}) as proxy:
        client = proxy.client()
        await send_split(
            client, pieces(head, how) if how != "bytes" else [head[i : i + 50] for i in range(0, len(head), 50)]
        )
        assert (await client.read_response()).status == 431
        await client.close()
        assert backend.requests == []


@pytest.mark.parametrize("name", [b"Host", b"Content-Length", b"Transfer-Encoding"])
async def test_connection_cannot_strip_a_header_the_proxy_needs(name: bytes) -> None:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        body = b"hello" if name != b"Transfer-Encoding" else b"5\r\nhello\r\n0\r\n\r\n"
        framing = b"Content-Length: 5" if name != b"Transfer-Encoding" else b"Transfer-Encoding: chunked"
        request = b"POST / HTTP/1.1\r\nHost: t\r\n%s\r\nConnection: %s\r\n\r\n%s" % (framing, name, body)
        assert (await client.request(request)).status == 200
        assert backend.bodies == [b"hello"] and backend.requests[0].headers  # framed and hosted upstream
        assert any(k == b"host" for k, _ in backend.requests[0].headers)


CHUNKED_HEAD = b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize(
    "body",
    [
        b"5 ;name=value\r\nhello\r\n0\r\n\r\n",
        b"5;name=value\r\nhello\r\n0\r\n\r\n",
        b"5  ;a\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
    ],
    ids=["space-before-semicolon", "plain-ext", "two-spaces", "space-no-ext"],
)
async def test_chunk_extensions_with_optional_whitespace_are_accepted(body: bytes, how: str) -> None:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await send_split(client, pieces(CHUNKED_HEAD + body, how))
        assert (await client.read_response()).status == 200
        assert backend.bodies == [b"hello"]


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize(
    "bad",
    [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"-5\r\nhello\r\n0\r\n\r\n", b"5\nhello\r\n0\r\n\r\n"],
    ids=["size", "no-crlf", "negative", "bare-lf"],
)
async def test_invalid_chunked_framing_is_refused_and_reaches_no_backend(bad: bytes, how: str) -> None:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await send_split(client, pieces(CHUNKED_HEAD + bad, how))
        assert (await client.read_response()).status == 400
        assert await client.closed()
    assert backend.received == b""


async def test_long_chunk_extensions_are_refused_before_they_pile_up() -> None:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await client.send(CHUNKED_HEAD + b"5;x=")
        for _ in range(200):
            if proxy.proxy.in_flight:
                break
            await asyncio.sleep(0.005)
        for _ in range(200):  # 12.8 MB of extension at most, as a stream: refused long before
            try:
                await client.send(b"a" * 65536)
            except ConnectionError:
                break
            await asyncio.sleep(0)
            if proxy.proxy.in_flight == 0:
                break
        response = await client.read_response()
        assert response.status == 400 and "chunk extensions" in response.json()["error"]
    assert backend.received == b""


@pytest.mark.parametrize("how", SPLITS)
async def test_trailers_never_reach_the_backend(how: str) -> None:
    trailers = b"Host: evil.test\r\nAuthorization: Bearer x\r\nX-Checksum: 1\r\n\r\n"
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        await send_split(client, pieces(CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n" + trailers, how))
        assert (await client.read_response()).status == 200
    assert backend.bodies == [b"hello"]
    assert b"evil.test" not in backend.received and b"Authorization" not in backend.received
    assert b"X-Checksum" not in backend.received


async def test_a_chunked_body_without_its_final_crlf_is_not_answered_as_complete() -> None:
    async with RawBackend() as backend, start_proxy([backend.port], limits={"idle_timeout": 0.2}) as proxy:
        client = proxy.client()
        await client.send(CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n")  # the last CRLF never comes
        response = await client.read_response()
        assert response.status == 408  # the body stalled: not complete, never forwarded
        await client.close()
    assert backend.received == b""


async def test_a_framing_trailer_is_refused() -> None:
    async with RawBackend() as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
        response = await client.request(CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n")
        assert response.status == 400
    assert backend.received == b""
