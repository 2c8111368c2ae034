"""Accepting client connections, and backing off when this host runs out of descriptors.

The event loops' own servers handle a failed ``accept`` badly for a proxy: asyncio pauses one
second and reports through the loop's exception handler; uvloop (libuv) closes what it accepts
while it can, and closes the listening socket itself on an error it cannot absorb. The proxy
accepts by itself instead, as NGINX and HAProxy do: accepting stops for a short, growing
pause when the host is out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), each
such error is counted and logged (by the owner's ``on_exhausted``), and nothing spins.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Final

from .._log import log_event
from ..health import LOCAL_ERRNOS

ACCEPT_BATCH: Final = 64  # connections accepted per wake-up, so that a flood cannot starve the rest
BACKOFF_MIN: Final = 0.05  # seconds without accepting after an exhaustion; doubles while it lasts
BACKOFF_MAX: Final = 1.0
BACKLOG: Final = 1024
# A client that gave up between its connect and our accept: nothing to do, and no error of ours.
_GONE: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET, errno.EPERM})


async def bind(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address the name resolves to, as asyncio's
    ``create_server`` binds), non-blocking, with SO_REUSEADDR; with SO_REUSEPORT too if asked
    (several sets of sockets on one address, the kernel spreading connections over them)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # the other addresses take the first one's free port
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bound_address(host: str, port: int) -> str:
    """``host:port`` (``[v6]:port``) as the config writes it, with the port really bound."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Listener:
    """Accepts on one listening socket and hands each connection to ``on_connection``."""

    def __init__(
        self,
        sock: socket.socket,
        on_connection: Callable[[socket.socket], None],
        on_exhausted: Callable[[OSError], None],
    ) -> None:
        self.sock = sock
        self._on_connection = on_connection
        self._on_exhausted = on_exhausted
        self._loop = asyncio.get_running_loop()
        self._backoff = BACKOFF_MIN
        self._resume: asyncio.TimerHandle | None = None
        self._reading = False
        self.closed = False

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def start(self) -> None:
        if not self._reading and not self.closed:
            self._loop.add_reader(self.sock.fileno(), self._accept)
            self._reading = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._resume is not None:
            self._resume.cancel()
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in LOCAL_ERRNOS:
                    self._exhausted(exc)
                    return
                if exc.errno not in _GONE:
                    log_event("accept_failed", logging.WARNING, error=repr(exc))
                continue
            self._backoff = BACKOFF_MIN
            conn.setblocking(False)
            self._on_connection(conn)

    def _exhausted(self, exc: OSError) -> None:
        """Stop accepting for a while: the connections wait in the listen queue meanwhile."""
        self._on_exhausted(exc)
        self._loop.remove_reader(self.sock.fileno())
        self._reading = False
        self._resume = self._loop.call_later(self._backoff, self._wake)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _wake(self) -> None:
        self._resume = None
        self.start()
