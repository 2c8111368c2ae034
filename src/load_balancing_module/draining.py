"""Draining a backend: no new requests, wait for those in flight, then remove it.

:class:`Drains` runs one task per backend being drained; the module's
``drain_backend`` starts one (or joins the one running) and awaits it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Set

from ._log import log_event
from .backend import Backend
from .clock import Clock
from .models import DrainResult
from .router import Router

DRAIN_POLL = 0.01  # seconds between looks at a draining backend's requests in flight


class Drains:
    def __init__(self, router: Router, clock: Clock, remove: Callable[[str], Awaitable[None]]) -> None:
        self.router = router
        self.clock = clock
        self.remove = remove  # removes a backend by id, as the module's remove_backend
        self._tasks: dict[str, asyncio.Task[DrainResult]] = {}  # by backend id

    @property
    def ids(self) -> Set[str]:
        """Ids of the backends being drained now."""
        return self._tasks.keys()

    def running(self, backend_id: str) -> asyncio.Task[DrainResult] | None:
        return self._tasks.get(backend_id)

    def start(self, backend: Backend, timeout: float) -> asyncio.Task[DrainResult]:
        """Take ``backend`` out of every pick now and drain it in a task, for at most ``timeout`` seconds."""
        backend.excluded += 1
        self.router.refresh(backend)
        self.router.dispatch()
        log_event("backend_draining", backend_id=backend.id, in_flight=backend.in_flight, timeout=timeout)
        task = asyncio.create_task(self._drain(backend, timeout), name=f"omnixan-lb-drain-{backend.id}")
        self._tasks[backend.id] = task
        return task

    def tasks(self) -> list[asyncio.Task[DrainResult]]:
        """The drains running (each leaves this list when it ends)."""
        return list(self._tasks.values())

    async def _drain(self, backend: Backend, timeout: float) -> DrainResult:
        clock = self.clock
        started, started_wall = clock.monotonic(), clock.time()
        in_flight = backend.in_flight
        deadline = started + timeout
        try:
            while backend.in_flight and not backend.removed and clock.monotonic() < deadline:
                await clock.sleep(min(DRAIN_POLL, max(deadline - clock.monotonic(), 0.0)))
        except asyncio.CancelledError:  # shutdown: leave the backend as it was
            if not backend.removed:
                backend.excluded -= 1
                self.router.refresh(backend)
            raise
        finally:
            self._tasks.pop(backend.id, None)
        left = backend.in_flight
        if not backend.removed:
            await self.remove(backend.id)
        result = DrainResult(
            backend_id=backend.id,
            in_flight=in_flight,
            completed=left == 0,
            in_flight_left=left,
            started_at=started_wall,
            finished_at=clock.time(),
            waited_seconds=clock.monotonic() - started,
        )
        log_event(
            "backend_drained",
            backend_id=backend.id,
            in_flight=in_flight,
            in_flight_left=left,
            waited_seconds=round(result.waited_seconds, 3),
        )
        return result
