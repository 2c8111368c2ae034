"""Reading a PROXY protocol header off an accepted socket, before anything else reads it.

On a listener with ``proxy_protocol: true``, a connection from a trusted proxy begins with a
PROXY header (:mod:`.proxy_protocol`). It is read here, from the socket itself, before the
socket gets its transport: what follows it (an HTTP request, or a TLS ClientHello) stays in the
kernel for the transport to read, so the header works in front of TLS as in front of plain
HTTP. The socket is peeked at, and only bytes known to be the header's are taken off it: all
of what was peeked while the header is incomplete (a header is a prefix: nothing of what follows
can come before its end), then exactly its remaining bytes once it is complete. Nothing spins:
after a read, the socket is readable again only when more has come.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Final

from .proxy_protocol import ProxyHeader, ProxyHeaderReader, ProxyProtocolError

PEEK_BYTES: Final = 16 + 4096  # the longest header accepted (a v2 header with its TLVs)


class Preamble:
    """Waits for ``sock``'s PROXY header (at most ``timeout`` seconds); then calls ``done`` with it,
    or ``failed`` with what went wrong (the socket is the caller's to close then)."""

    def __init__(
        self,
        sock: socket.socket,
        timeout: float,
        done: Callable[[socket.socket, ProxyHeader], None],
        failed: Callable[[socket.socket, str], None],
    ) -> None:
        self.sock = sock
        self._done = done
        self._failed = failed
        self._taken = b""  # header bytes read off the socket so far
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._readable)
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(timeout, self._expired)

    def _finish(self) -> None:
        self._loop.remove_reader(self._fd)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        self._finish()
        self._failed(self.sock, "no complete PROXY header in time")

    def cancel(self) -> None:
        self._finish()

    def _readable(self) -> None:
        sock = self.sock
        try:
            peeked = sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish()
            self._failed(sock, f"reading the PROXY header failed: {exc.strerror or exc}")
            return
        if not peeked:
            self._finish()
            self._failed(sock, "the peer closed before its PROXY header was complete")
            return
        try:
            found = ProxyHeaderReader().feed(self._taken + peeked)
            if found is None:  # all of it is the header's: take it off, wait for the rest
                self._taken += sock.recv(len(peeked))
                return
            header, rest = found
            sock.recv(len(peeked) - len(rest))  # exactly the header's remaining bytes
        except ProxyProtocolError as exc:
            self._finish()
            self._failed(sock, str(exc))
            return
        except OSError as exc:
            self._finish()
            self._failed(sock, f"reading the PROXY header failed: {exc.strerror or exc}")
            return
        self._finish()
        self._done(sock, header)
