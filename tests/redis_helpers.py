"""A real Redis for the tests, found or started; a unique key prefix per test, its keys deleted after.

The Redis is, in order: ``$OMNIXAN_TEST_REDIS_URL``; the one on 127.0.0.1:6379 if it answers
PING, in a database of this run's own (1 to 15, from the process id); a private ``redis-server``
on a free port (no persistence), stopped at the end of the run. Without any of them the tests
that need Redis fail, saying what to install. Tests never flush a database: each gets a prefix
of its own (``redis_prefix``) and only the keys under it are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from load_balancing_module.state.redis import RedisStore

LOCAL_URL = f"redis://127.0.0.1:6379/{1 + os.getpid() % 15}"  # not db 0: a database per test run
START_TIMEOUT = 10.0

MakeStore = Callable[..., Awaitable[RedisStore]]


def answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_private_server() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "these tests need a Redis server: install one (Debian: apt-get install redis-server; "
            ".ci/run does it) or set OMNIXAN_TEST_REDIS_URL=redis://host:port/db"
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + START_TIMEOUT
    while not answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"redis-server on port {port} did not start")
        time.sleep(0.02)
    return proc, url


class PrivateRedis:
    """A ``redis-server`` of the test's own, which the test may freeze (SIGSTOP) and thaw."""

    def __init__(self) -> None:
        self.proc, self.url = start_private_server()

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def cont(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.cont()  # a stopped process does not act on SIGTERM
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A private Redis (see :class:`PrivateRedis`), thawed and stopped after the test whatever happened."""
    server = PrivateRedis()
    try:
        yield server
    finally:
        server.close()


class Relay:
    """A TCP relay in front of the real Redis that the test can cut (connections closed and refused)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def cut(self) -> None:
        self.up = False
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()


class HoldingRelay:
    """A TCP relay in front of a Redis. Connections opened while ``holding`` is set get no replies
    until :meth:`release`: a call on such a connection hangs while calls on others are answered."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.holding = False
        self.port = 0
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if hold:
                    await self._released.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hold = self.holding
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, hold))

    def release(self) -> None:
        self._released.set()

    async def __aenter__(self) -> HoldingRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        for writer in self._writers:
            writer.close()
        assert self._server is not None
        self._server.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a Redis that answers (see the module docstring for which)."""
    url = os.environ.get("OMNIXAN_TEST_REDIS_URL")
    if url:
        if not answers(url):
            pytest.fail(f"OMNIXAN_TEST_REDIS_URL={url} does not answer PING")
        yield url
        return
    if answers(LOCAL_URL):
        yield LOCAL_URL
        return
    proc, url = start_private_server()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def on_port(url: str, port: int) -> str:
    """``url`` (same credentials and database) on another port of 127.0.0.1: a relay in front of it."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}").geturl()


def delete_prefix(url: str, prefix: str) -> int:
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        return int(client.delete(*keys)) if keys else 0


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted after the test."""
    prefix = f"omnixan-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


def keys_under(url: str, prefix: str) -> dict[str, int]:
    """Every key under ``prefix`` (without it) and its TTL in milliseconds (-1: none)."""
    with redis.Redis.from_url(url, decode_responses=True) as client:
        return {key.removeprefix(prefix): int(client.pttl(key)) for key in client.scan_iter(match=f"{prefix}*")}


class Now:
    """An injected time source for the stores: seconds, moved by the test."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.value = start

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


@pytest.fixture
async def make_store(redis_url: str, redis_prefix: str) -> AsyncIterator[MakeStore]:
    """``await make_store(**RedisStore options)``: a store on the test Redis under the test's prefix, closed after."""
    stores: list[RedisStore] = []

    async def make(url: str | None = None, **options: Any) -> RedisStore:
        options.setdefault("prefix", redis_prefix)
        store = RedisStore(url or redis_url, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()
