"""A timer that a connection keeps for all its deadlines, instead of one timer per deadline."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable


class Alarm:
    """A one-shot event-loop timer that is only ever moved earlier until it fires.

    A keep-alive connection arms it for each request's deadline; moving it only when a
    deadline comes earlier means most requests create no timer at all."""

    __slots__ = ("_loop", "_callback", "_handle", "_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf

    def arm(self, when: float) -> None:
        if when < self._at:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)
            self._at = when

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._at = math.inf

    def _fire(self) -> None:
        self._handle = None
        self._at = math.inf
        self._callback()
