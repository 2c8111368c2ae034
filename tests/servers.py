"""Real local servers for integration tests, on 127.0.0.1 only.

- :func:`closed_port`: a port nothing listens on (bind, read the port, close).
- :class:`TcpListener`: accepts connections and counts them.
- :func:`unaccepting_port`: a listener whose accept queue is full, so a new
  connect hangs (Linux drops the SYN) until the client gives up.
- :class:`HttpServer`: an aiohttp server whose answer per path (status, delay,
  slow body, headers) the test sets, and which records the paths requested.
  It can be stopped and started again on the same port.

Delays never hold a test up: stopping a server releases every stalled handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

from aiohttp import web

HOST = "127.0.0.1"


def closed_port() -> int:
    """A port on 127.0.0.1 with no listener: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def unaccepting_port(fillers: int = 4) -> Iterator[int]:
    """A listening port whose accept queue is full: a new TCP connect hangs."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    clients: list[socket.socket] = []
    try:
        listener.bind((HOST, 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(fillers):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setblocking(False)
            clients.append(client)
            with contextlib.suppress(BlockingIOError):
                client.connect((HOST, port))
        yield port
    finally:
        for client in clients:
            client.close()
        listener.close()


class TcpListener:
    """A TCP server on 127.0.0.1 that accepts, counts and closes connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def _on_connect(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def start(self, port: int = 0) -> TcpListener:
        self._server = await asyncio.start_server(self._on_connect, HOST, port or self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpListener:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


@dataclass
class Answer:
    """How the server answers one path."""

    status: int = 200
    delay: float = 0.0  # seconds before the status line is sent
    body_delay: float = 0.0  # seconds between the headers (and a first chunk) and the end of the body
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


S = TypeVar("S", bound="AioServer")


class AioServer:
    """A real aiohttp server on 127.0.0.1 that sends every path to ``_handle``.

    It can be stopped and started again on the same port. Handlers that stall
    wait on ``release``, which ``stop()`` sets. With ``ssl_context`` set, it serves https.
    """

    client_max_size = 1024**2
    shutdown_timeout = 0.1

    def __init__(self) -> None:
        self.port = 0
        self.ssl_context: ssl.SSLContext | None = None
        self._runner: web.AppRunner | None = None
        self.release = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def start(self: S, port: int = 0) -> S:
        """Start listening; on ``port``, else on the port of the last run, else on a free one."""
        app = web.Application(client_max_size=self.client_max_size)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.release = asyncio.Event()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, HOST, port or self.port, reuse_address=True, ssl_context=self.ssl_context)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop listening and close connections; stalled handlers are released."""
        self.release.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def __aenter__(self: S) -> S:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class HttpServer(AioServer):
    """An aiohttp server on 127.0.0.1 with a configurable answer per path.

    Unknown paths get 404. ``requests`` lists every path requested, in order; ``heads``
    every request's method, path with query, and headers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, Answer] = {}
        self.requests: list[str] = []
        self.heads: list[tuple[str, str, dict[str, str]]] = []

    def answer(
        self,
        path: str,
        status: int = 200,
        *,
        delay: float = 0.0,
        body_delay: float = 0.0,
        headers: dict[str, str] | None = None,
        body: bytes = b"ok",
    ) -> None:
        self.answers[path] = Answer(status, delay, body_delay, dict(headers or {}), body)

    def hits(self, path: str) -> int:
        return self.requests.count(path)

    async def _stall(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.release.wait(), seconds)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        self.heads.append((request.method, request.path_qs, dict(request.headers)))
        answer = self.answers.get(request.path)
        if answer is None:
            return web.Response(status=404, text="not found")
        await self._stall(answer.delay)
        if answer.body_delay <= 0:
            return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        await response.prepare(request)
        await response.write(answer.body)
        await self._stall(answer.body_delay)
        with contextlib.suppress(ConnectionResetError):  # the client may have hung up meanwhile
            await response.write_eof()
        return response
