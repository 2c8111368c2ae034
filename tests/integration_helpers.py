"""What the httpx and aiohttp integration tests share: real backends on 127.0.0.1 and a module
over them (real clock, seeded randomness, health checks off, back-offs of a millisecond)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator
from typing import Any

import trustme

from load_balancing_module import (
    BackendConfig,
    CircuitBreakerConfig,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
)
from servers import HOST, HttpServer

URL = "http://api.test"  # the name callers use; the integrations send to the backends' addresses


async def make_lb(ports: list[int], **overrides: Any) -> LoadBalancingModule:
    """Round robin over ``ports`` on 127.0.0.1, in that order."""
    overrides.setdefault("algorithm", "round_robin")
    overrides.setdefault("circuit_breaker", CircuitBreakerConfig(failure_threshold=100))
    config = LoadBalancingModuleConfig(
        health_check=HealthCheckConfig(enabled=False), retry_backoff_base=0.001, retry_backoff_max=0.002, **overrides
    )
    lb = LoadBalancingModule(config, rng=random.Random(7))
    for port in ports:
        await lb.add_backend(BackendConfig(host=HOST, port=port))
    return lb


def backend(lb: LoadBalancingModule, port: int) -> Any:
    return lb.backends[f"{HOST}:{port}"]


def in_flight(lb: LoadBalancingModule) -> int:
    return sum(b.in_flight for b in lb.backends.values())


@contextlib.asynccontextmanager
async def http_servers(n: int, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[list[HttpServer]]:
    """``n`` servers answering ``/`` with their index, ``/stream`` with a first chunk and then the
    rest once ``release`` is set (at the latest when the server stops)."""
    servers = []
    try:
        for i in range(n):
            server = HttpServer()
            server.ssl_context = ssl_context
            server.answer("/", body=f"b{i}".encode())
            server.answer("/stream", body=b"first chunk;", body_delay=30.0)
            servers.append(await server.start())
        yield servers
    finally:
        for server in servers:
            await server.stop()


class BrokenBody:
    """A backend that answers a 200 promising 100 bytes, sends 10, and closes: a body broken
    while it is read."""

    def __init__(self) -> None:
        self.port = 0
        self.served = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> BrokenBody:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def certificates(name: str) -> tuple[ssl.SSLContext, trustme.CA]:
    """A server context with a certificate for ``name`` only, and the CA that signed it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context, ca
