"""Time source for everything that measures or waits.

Nothing in the package reads ``time`` directly: it asks a :class:`Clock`.
:class:`SystemClock` is the default; :class:`FakeClock` is a virtual clock for
tests and simulations, moved forward explicitly with :meth:`FakeClock.advance`.
A clock of your own subclasses :class:`Clock` (a base class rather than a
Protocol, so the compiled build calls its methods directly: routing reads the
clock three times per request).

Every latency (a completion's, a health probe's, the proxy's ``upstream_ms``,
``total_ms`` and request duration histogram) is the difference of two
:meth:`Clock.monotonic` readings, so that clock must resolve well under a
millisecond: a loopback backend answers in 0.2 ms. ``SystemClock`` reads
``time.perf_counter`` (``CLOCK_MONOTONIC`` on Linux, to the nanosecond), never
the event loop's clock, which on uvloop ticks in whole milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import sys
import time
from collections.abc import Awaitable
from typing import Final, TypeVar

T = TypeVar("T")

# perf_counter: on Linux the same CLOCK_MONOTONIC as time.monotonic (one clock for the whole host,
# to the nanosecond); on Windows before Python 3.13, where time.monotonic ticks every 15.6 ms, the
# performance counter. Both are system-wide (Python >= 3.10), as the shared-memory store needs.
_monotonic: Final = time.perf_counter
_time: Final = time.time


class Clock:
    """What the package asks the time of. Subclasses implement all four methods."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, resolved to a microsecond or better: every
        latency is the difference of two readings; also for deadlines."""
        raise NotImplementedError

    def time(self) -> float:
        """Wall-clock seconds since the epoch; for timestamps shown to people."""
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        raise NotImplementedError

    async def wait_for(self, aw: Awaitable[T], timeout: float | None) -> T:
        """Await ``aw``; raise ``TimeoutError`` after ``timeout`` seconds on this clock."""
        raise NotImplementedError


class SystemClock(Clock):
    """The real clock: ``time.perf_counter`` (monotonic, to the nanosecond), ``time.time`` and the
    event loop's timers."""

    def monotonic(self) -> float:
        return _monotonic()

    def time(self) -> float:
        return _time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_for(self, aw: Awaitable[T], timeout: float | None) -> T:
        if timeout is not None and sys.version_info >= (3, 11):
            # Not asyncio.wait_for: before 3.12 it can swallow a cancel that arrives as
            # the awaited call finishes (CPython gh-86296), and a cancelled caller runs on.
            async with asyncio.timeout(timeout):
                return await aw
        return await asyncio.wait_for(aw, timeout)


class FakeClock(Clock):
    """A virtual clock. Sleepers wake only when the test advances time.

    ``await clock.advance(5)`` moves time forward in steps, waking each sleeper
    at its own deadline and letting the event loop run in between, so code
    that sleeps in a loop behaves as it would in real time, only faster.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self._now + seconds, self._seq, future))
        await future

    async def wait_for(self, aw: Awaitable[T], timeout: float | None) -> T:
        task = asyncio.ensure_future(aw)
        if timeout is None:
            return await task
        timer = asyncio.ensure_future(self.sleep(timeout))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            timer.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise TimeoutError(f"timed out after {timeout} s")

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting (cancelled ones included until due)."""
        return len(self._sleepers)

    async def advance(self, seconds: float, *, yields: int = 20) -> None:
        """Move time forward by ``seconds``, waking sleepers in deadline order."""
        target = self._now + seconds
        await _settle(yields)
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
            await _settle(yields)
        self._now = target
        await _settle(yields)

    def set(self, now: float) -> None:
        """Jump to ``now`` without waking sleepers (for synchronous tests)."""
        self._now = now


async def _settle(yields: int) -> None:
    for _ in range(yields):
        await asyncio.sleep(0)
