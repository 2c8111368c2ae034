"""A live ``omnixan-lb serve`` in the test's event loop, for the admin API, dashboard and status tests.

- :class:`SlowBackend`: a real aiohttp backend on 127.0.0.1 that answers after ``delay``
  seconds (``status`` for paths under ``/fail``) and counts its requests.
- :func:`live_server`: writes a config file (token from an environment variable, health
  checks off), starts the whole :class:`Server` (module, proxy and admin listener) on free
  ports and yields a :class:`Live` with the URLs and an authenticated admin client.
- :class:`Traffic`: clients that send GET requests through the proxy until stopped,
  counting every answer (bounded in count and time).
- :func:`raw_request`: one request written byte for byte on a fresh socket (any header bytes,
  any Host or none), and its :class:`RawResponse`; blocking, for a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from load_balancing_module.server.app import Server
from load_balancing_module.server.config import load_config
from servers import AioServer

HOST = "127.0.0.1"
# Debian's Chromium, driven by Playwright (whose launch gives each browser a fresh temporary profile).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TOKEN = "test-admin-token-5b0d"
TOKEN_ENV = "OMNIXAN_LB_TEST_ADMIN_TOKEN"


class SlowBackend(AioServer):
    shutdown_timeout = 0.05

    def __init__(self, name: str, delay: float = 0.0, fail_status: int = 503) -> None:
        super().__init__()
        self.name = name
        self.delay = delay
        self.fail_status = fail_status
        self.hits = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.path.startswith("/fail"):
            return web.Response(status=self.fail_status, text=f"{self.name} failed")
        return web.Response(text=self.name)


@dataclass
class Live:
    server: Server
    backends: list[SlowBackend]
    session: aiohttp.ClientSession  # sends the admin token

    @property
    def admin(self) -> str:
        return f"http://{HOST}:{self.server.admin.port}"

    @property
    def proxy(self) -> str:
        return f"http://{HOST}:{self.server.proxy.port}"

    def backend_id(self, backend: SlowBackend) -> str:
        return f"{HOST}:{backend.port}"

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A call as the dashboard makes it: a change is always sent as application/json."""
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        if method in ("POST", "PUT", "PATCH"):
            kwargs["headers"] = {"Content-Type": "application/json"}
        async with self.session.request(method, self.admin + path, **kwargs) as response:
            return response.status, await response.json()


def write_config(
    path: Path,
    backends: Sequence[SlowBackend],
    extra: Sequence[str] = (),
    admin: str = f'{{listen: "127.0.0.1:0", token_env: {TOKEN_ENV}}}',
) -> Path:
    lines = [
        'listen: "127.0.0.1:0"',
        f"admin: {admin}",
        "health_check: {enabled: false}",
        "access_log: false",
        "backends:",
    ]
    lines += [f"  - {{host: {HOST}, port: {b.port}}}" for b in backends]
    lines += list(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.asynccontextmanager
async def live_server(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backends: Sequence[SlowBackend],
    extra: Sequence[str] = (),
    *,
    token: bool = True,
    admin: str | None = None,
) -> AsyncIterator[Live]:
    """Start the backends and a whole server in front of them; stop everything afterwards.

    ``token=False``: the admin listener has no token (allowed on loopback), as in the default setup;
    ``admin``: the config's ``admin`` mapping in YAML flow style, instead of the usual one."""
    if token:
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
    else:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
    started: list[SlowBackend] = []
    server: Server | None = None
    try:
        for backend in backends:
            started.append(await backend.start())
        path = write_config(tmp_path / "lb.yaml", started, extra, *([admin] if admin else []))
        server = Server(path, load_config(path))
        await server.start()
        headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
        async with aiohttp.ClientSession(headers=headers) as session:
            yield Live(server, started, session)
    finally:
        if server is not None:
            await server.shutdown()
        for backend in started:
            await backend.stop()


async def until(condition: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition()`` (sync or async) every 10 ms until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@dataclass
class Traffic:
    """``clients`` loops of GET ``path`` through the proxy, until :meth:`stop` (or ``limit`` requests)."""

    url: str
    clients: int = 4
    path: str = "/"
    limit: int = 20_000
    max_seconds: float = 30.0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    sent: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Traffic:
        self._session = aiohttp.ClientSession()
        deadline = time.monotonic() + self.max_seconds
        self._tasks = [asyncio.create_task(self._client(deadline)) for _ in range(self.clients)]
        return self

    async def _client(self, deadline: float) -> None:
        assert self._session is not None
        while not self._stop.is_set() and self.sent < self.limit and time.monotonic() < deadline:
            self.sent += 1
            try:
                async with self._session.get(self.url + self.path) as response:
                    await response.read()
                    self.statuses[response.status] += 1
            except aiohttp.ClientError as exc:
                self.errors.append(repr(exc))

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return len(self.errors) + sum(n for status, n in self.statuses.items() if status != 200)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def cors_headers(self) -> list[str]:
        return [name for name in self.headers if name.startswith("access-control-")]


Header = tuple[str, str | bytes]


def raw_request(
    port: int,
    method: str,
    path: str,
    headers: Sequence[Header] = (),
    body: bytes = b"",
    *,
    host: str | None = "127.0.0.1:{port}",
    version: str = "1.1",
    timeout: float = 10.0,
) -> RawResponse:
    """Send one HTTP request as written (``host``: the Host header, ``{port}`` replaced; None: no
    Host header; a body gets its Content-Length) on a new connection, and read the answer until the
    server closes it."""
    lines = [f"{method} {path} HTTP/{version}".encode()]
    if host is not None:
        lines.append(b"Host: " + host.replace("{port}", str(port)).encode("utf-8", "surrogateescape"))
    lines += [
        name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()) for name, value in headers
    ]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    data = b"\r\n".join(lines) + b"\r\n\r\n" + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused early (413): read the answer
            sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith(("HTTP/1.1 ", "HTTP/1.0 ")), received[:200]
    got: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        got[name.strip().lower()] = value.strip()
    length = int(got.get("content-length", len(rest)))
    return RawResponse(int(status_line.split()[1]), got, rest[:length])
