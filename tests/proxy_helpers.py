"""Helpers for the proxy's integration tests: everything on 127.0.0.1, started and stopped by the test.

- :func:`server_config`: a ``ServerConfig`` listening on port 0, health checks off.
- :class:`ProxyHarness` (``async with start_proxy(...)``): the config's pools (``PoolModules``,
  the default pool's module as ``lb``) and a ``ProxyServer`` in front of the given backends, with
  the access log captured.
- :class:`AioBackend`: a real aiohttp server; by default it answers every request with
  a JSON echo of what it received (method, path, headers, body size, its name);
  ``handler=`` replaces that.
- :class:`RawBackend`: a plain asyncio server that records every byte it receives and
  answers what h11 parses (or a scripted reply), for smuggling and exact-header tests.
- :class:`RawClient`: sends exact bytes and reads responses with a small reader of its
  own (not llhttp, so the proxy is checked by a second implementation).
- :class:`RssSampler`: the peak growth of this process's resident memory.
- :func:`feed_split`: bytes handed to the proxy's connection object in exact pieces, each
  one read (TCP may merge or split what a client sends; this does neither).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11
from aiohttp import web

from load_balancing_module import BackendConfig, HealthCheckConfig, LoadBalancingModule
from load_balancing_module.clock import Clock
from load_balancing_module.server.client import ClientConnection
from load_balancing_module.server.config import ServerConfig
from load_balancing_module.server.pools import PoolModules
from load_balancing_module.server.proxy import ProxyServer
from servers import AioServer

HOST = "127.0.0.1"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def server_config(**fields: Any) -> ServerConfig:
    """A server config on 127.0.0.1 port 0, health checks off; ``limits`` may be a partial dict."""
    fields.setdefault("health_check", HealthCheckConfig(enabled=False))
    return ServerConfig(listen=f"{HOST}:0", **fields)


class AccessRecords(logging.Handler):
    """Keeps the access log: the JSON lines and the records' field dicts."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.fields.append(getattr(record, "access", {}))


@dataclass
class ProxyHarness:
    lb: LoadBalancingModule
    proxy: ProxyServer
    access: AccessRecords
    pools: PoolModules
    backend_ids: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.proxy.port}"

    def client(self) -> RawClient:
        return RawClient(self.proxy.port)


_harness_seq = 0


@contextlib.asynccontextmanager
async def start_proxy(
    backends: Sequence[int | BackendConfig | dict[str, Any]],
    *,
    config: ServerConfig | None = None,
    clock: Clock | None = None,
    tracer: Any = None,
    **fields: Any,
) -> AsyncIterator[ProxyHarness]:
    """A module and a proxy in front of ``backends`` (ports on 127.0.0.1, or backend configs);
    ``clock``: the modules' (SystemClock if None); ``tracer``: the proxy's ``ProxyTracer``."""
    global _harness_seq
    _harness_seq += 1
    config = config or server_config(**fields)
    logger = logging.getLogger(f"test.proxy.access.{_harness_seq}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    records = AccessRecords()
    logger.addHandler(records)
    pools = PoolModules(config, lambda name, module_config: LoadBalancingModule(module_config, clock=clock))
    lb = pools.default
    proxy = ProxyServer(lb, config, access_log=logger, pools=pools.modules, tracer=tracer)
    await pools.start(config, backends=False)
    harness = ProxyHarness(lb, proxy, records, pools)
    try:
        for backend in backends:
            spec = BackendConfig(host=HOST, port=backend) if isinstance(backend, int) else backend
            harness.backend_ids.append(await lb.add_backend(spec))
        await proxy.start()
        yield harness
    finally:
        await proxy.close()
        await pools.shutdown()
        logger.removeHandler(records)


class AioBackend(AioServer):
    """An aiohttp backend on 127.0.0.1. Counts requests and the TCP connections they came on."""

    client_max_size = 1024**3
    shutdown_timeout = 0.05

    def __init__(self, name: str = "backend", handler: Handler | None = None) -> None:
        super().__init__()
        self.name = name
        self.handler = handler or self.echo
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.peers: set[tuple[str, int]] = set()

    async def echo(self, request: web.Request) -> web.StreamResponse:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        headers = [[k.decode(), v.decode("latin-1")] for k, v in request.raw_headers]
        return web.json_response(
            {
                "backend": self.name,
                "method": request.method,
                "path": request.path_qs,
                "headers": headers,
                "body_size": size,
            }
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add(peer[:2])
        return await self.handler(request)


class RawBackend:
    """Records every byte received; answers each request h11 parses with 200 and its name.

    ``reply`` (bytes) replaces the h11 answer: it is sent whenever a request head has
    arrived on a connection, which is then closed if the reply says ``Connection: close``.
    A request h11 refuses gets 400 and the connection closes.
    """

    def __init__(self, name: str = "raw", reply: bytes | None = None) -> None:
        self.name = name
        self.reply = reply
        self.received = bytearray()
        self.requests: list[h11.Request] = []
        self.bodies: list[bytes] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        body = bytearray()
        pending = bytearray()
        try:
            while True:
                data = await reader.read(65536)
                self.received += data
                if self.reply is not None:  # scripted: one reply per request head (bodies are not expected)
                    pending += data
                    while b"\r\n\r\n" in pending:
                        pending = pending[pending.index(b"\r\n\r\n") + 4 :]
                        writer.write(self.reply)
                        await writer.drain()
                        if b"connection: close" in self.reply.lower():
                            return
                    if not data:
                        return
                    continue
                conn.receive_data(data)
                while True:
                    try:
                        event = conn.next_event()
                    except h11.RemoteProtocolError:
                        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        return
                    if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                        break
                    if isinstance(event, h11.Request):
                        self.requests.append(event)
                        body = bytearray()
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        self.bodies.append(bytes(body))
                        payload = self.name.encode()
                        writer.write(
                            conn.send(
                                h11.Response(
                                    status_code=200,
                                    headers=[("Content-Length", str(len(payload))), ("Content-Type", "text/plain")],
                                )
                            )
                            or b""
                        )
                        writer.write(conn.send(h11.Data(data=payload)) or b"")
                        writer.write(conn.send(h11.EndOfMessage()) or b"")
                        conn.start_next_cycle()
                if conn.their_state is h11.CLOSED or not data:
                    return
        except (ConnectionError, h11.LocalProtocolError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def start(self) -> RawBackend:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RawBackend:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """A TCP client that sends exact bytes and reads HTTP/1.1 responses."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        return self

    async def send(self, data: bytes) -> None:
        if self.writer is None:
            await self.connect()
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, data: bytes, *, head: bool = False) -> Response:
        await self.send(data)
        return await self.read_response(head=head)

    async def read_response(self, *, head: bool = False, informational: bool = False) -> Response:
        return await asyncio.wait_for(self._read(head, informational), self.timeout)

    async def _read(self, head: bool, informational: bool) -> Response:
        assert self.reader is not None
        while True:
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw[:-4].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
            if status >= 200 or status == 101 or informational:
                break
        response = Response(status, headers, b"")
        if head or status < 200 or status in (204, 304):
            return response
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    break
                body += await self.reader.readexactly(size)
                assert await self.reader.readexactly(2) == b"\r\n"
            response.body = bytes(body)
        elif response.header("content-length") is not None:
            response.body = await self.reader.readexactly(int(response.header("content-length") or 0))
        else:
            response.body = await self.reader.read()
        return response

    async def closed(self, timeout: float = 2.0) -> bool:
        """True if the proxy closes the connection (EOF or reset) within ``timeout`` seconds."""
        assert self.reader is not None
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return True
        except (ConnectionError, OSError):
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
            self.writer = None

    async def __aenter__(self) -> RawClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def get(path: str = "/", *headers: str, method: str = "GET", host: str = "test") -> bytes:
    """A request head without a body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RssSampler:
    """Samples resident memory every few milliseconds; ``growth`` is the peak above the start, in bytes."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.rss())
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> RssSampler:
        self.start = self.peak = self.rss()
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, self.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


SPLITS = [0, 1, 2, 3, 7, 64]  # 0: all at once; else pieces of that many bytes
SPLIT_IDS = ["whole", "bytes", "by2", "by3", "by7", "by64"]


def split(data: bytes, size: int) -> list[bytes]:
    return [data] if size == 0 else [data[i : i + size] for i in range(0, len(data), size)]


async def connection_of(harness: ProxyHarness, client: RawClient) -> ClientConnection:
    """The proxy's side of ``client``'s connection (``client`` must be connected)."""
    assert client.writer is not None
    port = client.writer.get_extra_info("sockname")[1]
    for _ in range(400):
        for conn in harness.proxy.connections:
            if conn.transport.get_extra_info("peername")[1] == port:
                return conn
        await asyncio.sleep(0.005)
    raise AssertionError("the proxy did not accept the connection")


async def feed_split(harness: ProxyHarness, client: RawClient, data: bytes, size: int) -> None:
    """Hand ``data`` to the proxy's connection for ``client`` as reads of ``size`` bytes (0: one read),
    exactly: each piece goes to its ``data_received`` in turn. Answers come back on ``client``."""
    conn = await connection_of(harness, client)
    for piece in split(data, size):
        conn.data_received(piece)
