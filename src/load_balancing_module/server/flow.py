"""Flow control of a client connection, as uvicorn's ``FlowControl``: one flag each way.

Reading from the client pauses for any of several reasons at once (each a bit:
the upstream socket is full, body waits for an upstream connection, a complete
request waits behind the one being answered) and resumes when the last one is
gone. Writing is paused by the transport itself (``pause_writing``) when the
client does not read fast enough.
"""

from __future__ import annotations

import asyncio
from typing import Final

# Why reading from a client is paused (bits).
BY_UPSTREAM: Final = 1  # the upstream socket's write buffer is full
BY_BACKLOG: Final = 2  # body is waiting for an upstream connection
BY_PIPELINE: Final = 4  # a complete request waits behind the one being answered


class FlowControl:
    """Who paused reading from a client's transport, and whether writing to it is paused."""

    __slots__ = ("_transport", "_reasons", "write_paused", "write_paused_at")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._reasons = 0
        self.write_paused = False
        self.write_paused_at = 0.0  # the loop's time when writing paused

    @property
    def reading_paused(self) -> bool:
        return self._reasons != 0

    def paused_by(self, reason: int) -> bool:
        return self._reasons & reason != 0

    def pause(self, reason: int) -> None:
        if not self._reasons:
            self._transport.pause_reading()
        self._reasons |= reason

    def resume(self, reason: int) -> bool:
        """Drop ``reason``; True if that resumed reading (it was the last reason)."""
        if not self._reasons & reason:
            return False
        self._reasons &= ~reason
        if self._reasons:
            return False
        self._transport.resume_reading()
        return True

    def resume_all(self) -> None:
        """Read whatever paused reading (a closing connection drops what it reads)."""
        if self._reasons:
            self._reasons = 0
            self._transport.resume_reading()

    def writing_paused(self, now: float) -> None:
        self.write_paused = True
        self.write_paused_at = now

    def writing_resumed(self) -> None:
        self.write_paused = False
