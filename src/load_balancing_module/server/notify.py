"""systemd's service notifications (sd_notify(3)), spoken directly: no libsystemd needed.

A unit with ``Type=notify`` sets ``$NOTIFY_SOCKET``: a unix datagram socket, a path or, when it
starts with ``@``, a name in the abstract namespace. Each message is one datagram of
newline-separated ``KEY=value`` lines. ``serve`` sends ``READY=1`` once every listener listens,
``RELOADING=1`` with ``MONOTONIC_USEC=`` when a SIGHUP reload begins and ``READY=1`` when it is
done (applied or refused: the service runs either way), ``STOPPING=1`` when draining begins, and,
when ``$WATCHDOG_USEC`` is set (and ``$WATCHDOG_PID``, if set, is this process), ``WATCHDOG=1``
every half of that period from the event loop: a loop stuck for longer gets the service restarted.

The socket is non-blocking: a full queue or a missing socket never stalls the event loop; the
first failure is logged, the later ones are not, and none is fatal. Without ``$NOTIFY_SOCKET``
every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, MutableMapping
from typing import Any

from .._log import log_event

ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(name: str) -> str | None:
    """The address to send to for ``$NOTIFY_SOCKET``: a path as is, ``@name`` as an abstract
    name (a leading NUL); None for anything else (systemd's ``vsock:`` is not spoken here)."""
    if name.startswith("@") and len(name) > 1:
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None


def message(**fields: object) -> bytes:
    """One datagram: ``KEY=value`` lines. A value holding a newline would start a line of its
    own that systemd reads as another field, so newlines in values become spaces."""
    lines = [f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()]
    return "\n".join(lines).encode()


def watchdog_interval(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the period systemd asks for), or None when no
    watchdog is asked for, or it is asked of another process, or the values are not numbers."""
    if not usec:
        return None
    try:
        period = int(usec)
        if pid and int(pid) != own_pid:
            return None
    except ValueError:
        log_event("sd_notify_bad_environment", logging.WARNING, WATCHDOG_USEC=usec, WATCHDOG_PID=pid)
        return None
    return period / 2_000_000 if period > 0 else None


class Notifier:
    """Sends the messages of one service process; every method is a no-op without a socket."""

    def __init__(self, address: str | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog_every = watchdog if address is not None else None
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier ``environ`` (``os.environ`` by default) asks for. The variables are taken
        out of it, as sd_notify's ``unset_environment`` does: the worker processes and anything
        else started from here inherit the environment, and only this process speaks to systemd."""
        env = os.environ if environ is None else environ
        name, usec, pid = (env.pop(key, None) for key in ENVIRONMENT)
        if not name:
            return cls(None)
        address = socket_address(name)
        if address is None:
            log_event("sd_notify_bad_socket", logging.WARNING, NOTIFY_SOCKET=name)
            return cls(None)
        return cls(address, watchdog_interval(usec, pid, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send one message; False if it could not be sent (logged the first time)."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message(**fields), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log_event("sd_notify_failed", logging.WARNING, socket=self.address.replace("\0", "@"), error=str(exc))
            return False
        return True

    def ready(self, status: str, **fields: object) -> bool:
        return self.send(READY=1, STATUS=status, **fields)

    def reloading(self) -> bool:
        # MONOTONIC_USEC: systemd matches this reload to the SIGHUP it sent (Type=notify-reload).
        return self.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000, STATUS="reloading the config")

    def stopping(self, status: str = "draining") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def around_reload(self, reload: Callable[[], Coroutine[Any, Any, bool]]) -> Callable[[], Coroutine[Any, Any, bool]]:
        """``reload`` framed by ``RELOADING=1`` and ``READY=1`` (with a STATUS saying how it went)."""

        async def framed() -> bool:
            self.reloading()
            ok = False
            try:
                ok = await reload()
            finally:
                self.ready("serving" if ok else "serving; the last reload was refused, the old config runs")
            return ok

        return framed

    async def watchdog(self) -> None:
        """Ping every ``watchdog_every`` seconds, until cancelled (returns at once without one)."""
        every = self.watchdog_every
        if every is None:
            return
        while True:
            self.send(WATCHDOG=1)
            await asyncio.sleep(every)

    def start_watchdog(self) -> asyncio.Task[None] | None:
        if self.watchdog_every is None:
            return None
        return asyncio.get_running_loop().create_task(self.watchdog(), name="omnixan-lb-sd-watchdog")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
