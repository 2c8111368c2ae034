"""A reference for bench/proxy_instructions.py: the least a Python reverse proxy does.

uvloop + httptools, keep-alive on both sides, round robin over a pool of
upstream connections, headers copied with ``Connection``/``Keep-Alive``
dropped and ``X-Forwarded-For`` added. No routing features, no checks, no
timeouts, no errors handled: it is a floor to measure against, never a proxy
to use. Bodies: Content-Length responses only (what the benchmark's nginx
backends send).

    python bench/reference_proxy.py PORT BACKEND_PORT [BACKEND_PORT...]
"""

from __future__ import annotations

import asyncio
import signal
import sys

import httptools
import uvloop

HOP = (b"connection", b"keep-alive")


class Upstream(asyncio.Protocol):
    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.client: Client | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client, self.out = self.client, []
        self.parser.feed_data(data)
        if client is not None and client.transport is not None:
            client.transport.writelines(self.out)

    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parts = [b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code()]
        parts += [n + b": " + v + b"\r\n" for n, v in self.headers if n.lower() not in HOP]
        parts.append(b"\r\n")
        self.out.append(b"".join(parts))

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        self.client = None
        self.pool.append(self)


class Client(asyncio.Protocol):
    def __init__(self, backends: list[tuple[str, int]], pools: list[list[Upstream]], turn: list[int]) -> None:
        self.backends, self.pools, self.turn = backends, pools, turn
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url, self.headers = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parts = [b"%s %s HTTP/1.1\r\n" % (self.parser.get_method(), self.url)]
        parts += [n + b": " + v + b"\r\n" for n, v in self.headers if n.lower() not in HOP]
        parts.append(b"X-Forwarded-For: 127.0.0.1\r\n\r\n")
        head = b"".join(parts)
        self.turn[0] += 1
        i = self.turn[0] % len(self.backends)
        if self.pools[i]:
            up = self.pools[i].pop()
            up.client = self
            assert up.transport is not None
            up.transport.write(head)
        else:
            asyncio.get_running_loop().create_task(self.connect(i, head))

    async def connect(self, i: int, head: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: Upstream(self.pools[i]), *self.backends[i])
        up.client = self
        assert up.transport is not None
        up.transport.write(head)


async def serve(port: int, backend_ports: list[int]) -> None:
    backends = [("127.0.0.1", p) for p in backend_ports]
    pools: list[list[Upstream]] = [[] for _ in backends]
    turn = [0]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(backends, pools, turn), "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # a clean exit, so that callgrind writes its counts
    await stop.wait()
    server.close()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), [int(p) for p in sys.argv[2:]]))
