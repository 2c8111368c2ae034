"""Health probes for a pool whose backends expect a PROXY protocol header.

A backend behind ``proxy_protocol: v1|v2`` refuses a connection that does not begin with the
header, so the library's own probes (a TCP connect, an HTTP GET through aiohttp) would find it
down. This probe opens the connection itself, sends the header first (v2: a LOCAL command, "a
connection of the proxy's own"; v1: the probe connection's own addresses, as HAProxy's
``check-send-proxy`` does), then the TLS handshake if the pool has TLS, then, for an HTTP check,
a ``GET`` whose status line decides, as the library's HTTP check does (200..399 passes).
"""

from __future__ import annotations

import asyncio
from typing import Final

from ..config import BackendConfig, HealthCheckConfig
from ..health import Probe, ProbeFailed
from .proxy_protocol import encode_local_v2, encode_v1
from .upstream_tls import UpstreamTLS

MAX_STATUS_LINE: Final = 8192


def proxy_protocol_probe(version: int, check: HealthCheckConfig, tls: UpstreamTLS | None) -> Probe:
    """The probe of a pool with PROXY protocol ``version`` (1 or 2) to its backends."""

    async def probe(backend: BackendConfig) -> bool:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_STATUS_LINE)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.create_connection(lambda: protocol, backend.host, backend.port)
        try:
            transport.write(_header(version, transport))
            if tls is not None:
                secured = await loop.start_tls(
                    transport, protocol, tls.context, server_hostname=tls.server_hostname(backend.host)
                )
                if secured is None:
                    raise ProbeFailed(f"{backend.address} closed the connection during the TLS handshake")
                transport = secured
            if check.type == "http":
                await _get(transport, reader, backend, check.path)
            return True
        finally:
            transport.close()

    return probe


def _header(version: int, transport: asyncio.BaseTransport) -> bytes:
    if version == 2:
        return encode_local_v2()
    local = transport.get_extra_info("sockname")
    peer = transport.get_extra_info("peername")
    if not isinstance(local, tuple) or not isinstance(peer, tuple):
        return b"PROXY UNKNOWN\r\n"
    return encode_v1((str(local[0]), int(local[1])), (str(peer[0]), int(peer[1])))


async def _get(
    transport: asyncio.BaseTransport, reader: asyncio.StreamReader, backend: BackendConfig, path: str
) -> None:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {backend.address}\r\nUser-Agent: omnixan-lb-health\r\nConnection: close\r\n\r\n"
    )
    assert isinstance(transport, asyncio.WriteTransport)
    transport.write(request.encode("latin-1"))
    line = await reader.readline()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProbeFailed(f"{backend.address} did not answer GET {path} with an HTTP status line")
    status = int(parts[1])
    if not 200 <= status < 400:
        raise ProbeFailed(f"HTTP {status} from GET {path}")
