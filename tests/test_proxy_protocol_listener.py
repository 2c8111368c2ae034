"""PROXY protocol on listeners (``listeners[].proxy_protocol: true``): real clients that send a
header (v1, v2, in pieces, before TLS), from a trusted peer and from an untrusted one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import ValidationError

from load_balancing_module import HealthCheckConfig
from load_balancing_module.server.config import ServerConfig
from load_balancing_module.server.proxy_protocol import encode_local_v2, encode_v1, encode_v2
from proxy_helpers import HOST, AioBackend, start_proxy

CLIENT = ("203.0.113.7", 51234)  # the address a proxy in front says the client has
REQUEST = b"GET /who HTTP/1.1\r\nHost: site.test\r\n\r\n"


def config(*, trusted: list[str] | None = None, **listener: Any) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "listeners": [{"address": f"{HOST}:0", "proxy_protocol": True, **listener}],
            "trusted_proxies": ["127.0.0.0/8"] if trusted is None else trusted,
            "health_check": HealthCheckConfig(enabled=False),
        }
    )


@pytest.fixture
async def backend() -> AsyncIterator[AioBackend]:
    async with AioBackend("a") as started:
        yield started


async def exchange(port: int, *pieces: bytes, pause: float = 0.0) -> bytes:
    """Send ``pieces`` (with ``pause`` between them) and read what comes back until the proxy closes
    or a whole answer (by Content-Length) is in."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        data = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 5)
            except ConnectionResetError:  # closed with the client's bytes unread: a reset
                return data
            if not chunk:
                return data
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = [
                    int(v)
                    for k, _, v in (line.partition(b": ") for line in head.split(b"\r\n"))
                    if k.lower() == b"content-length"
                ]
                if length and len(body) >= length[0]:
                    return data
    finally:
        writer.close()


def seen(answer: bytes) -> dict[str, str]:
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    return {k.lower(): v for k, v in body["headers"]}


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
async def test_a_trusted_proxys_header_names_the_client(backend: AioBackend, encode: Any) -> None:
    async with start_proxy([backend.port], config=config()) as harness:
        header = encode(CLIENT, (HOST, harness.port))
        answer = await exchange(harness.port, header + REQUEST)  # one write: header and request together
        assert answer.startswith(b"HTTP/1.1 200")
        assert seen(answer)["x-forwarded-for"] == CLIENT[0]
        split = await exchange(harness.port, *[bytes([b]) for b in header], REQUEST, pause=0.001)  # in pieces
        assert seen(split)["x-forwarded-for"] == CLIENT[0]
        assert [f["client_ip"] for f in harness.access.fields] == [CLIENT[0], CLIENT[0]]


async def test_a_local_header_keeps_the_real_address(backend: AioBackend) -> None:
    async with start_proxy([backend.port], config=config()) as harness:
        answer = await exchange(harness.port, encode_local_v2() + REQUEST)
        assert seen(answer)["x-forwarded-for"] == HOST


@pytest.mark.parametrize(
    "opening",
    [
        REQUEST,  # no header at all, from a peer that must send one
        b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 1\r\n" + REQUEST,  # a bad port
        b"\r\n\r\n\x00\r\nQUIT\n\x31" + b"\x00" * 8,  # version 3
    ],
)
async def test_a_trusted_peer_without_a_good_header_is_closed_unanswered(backend: AioBackend, opening: bytes) -> None:
    async with start_proxy([backend.port], config=config()) as harness:
        assert await exchange(harness.port, opening) == b""
        assert harness.proxy.proxy_protocol_errors == {harness.proxy.endpoints[0].address: 1}
        assert backend.requests == []


async def test_a_late_header_is_closed_within_the_header_timeout(backend: AioBackend) -> None:
    cfg = config().model_copy(update={"limits": config().limits.model_copy(update={"header_timeout": 0.05})})
    async with start_proxy([backend.port], config=cfg) as harness:
        reader, writer = await asyncio.open_connection(HOST, harness.port)
        writer.write(b"PROXY TCP4 ")  # and no more
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        answer = await exchange(harness.port, encode_v1(CLIENT, (HOST, harness.port)) + REQUEST)
        assert seen(answer)["x-forwarded-for"] == CLIENT[0]  # the listener goes on


async def test_an_untrusted_peer_cannot_pass_itself_off(backend: AioBackend) -> None:
    async with start_proxy([backend.port], config=config(trusted=["10.0.0.0/8"])) as harness:
        forged = await exchange(harness.port, encode_v1(CLIENT, (HOST, harness.port)) + REQUEST)
        assert forged.startswith(b"HTTP/1.1 400")  # not HTTP: refused, and the address is not taken
        plain = await exchange(harness.port, REQUEST)
        assert seen(plain)["x-forwarded-for"] == HOST  # its own address
        assert CLIENT[0] not in [f["client_ip"] for f in harness.access.fields]


def test_proxy_protocol_needs_trusted_proxies() -> None:
    with pytest.raises(ValidationError, match=r"listeners\[0\].proxy_protocol: a PROXY header is accepted only"):
        config(trusted=[])


async def test_the_header_comes_before_tls(backend: AioBackend, tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("site.test")
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    cfg = config(tls={"certificates": [{"cert": str(cert), "key": str(key)}]})
    async with start_proxy([backend.port], config=cfg) as harness:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        sock = socket.create_connection((HOST, harness.port))
        sock.sendall(encode_v2(CLIENT, (HOST, harness.port)))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, ssl=context, server_hostname="site.test")
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().partition(b"content-length: ")[2].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200")
        headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
        assert headers["x-forwarded-for"] == CLIENT[0] and headers["x-forwarded-proto"] == "https"
