"""Active health checking as the module runs it: one probing task per backend.

:class:`HealthChecks` probes every backend each ``interval`` seconds (with
jitter, the first probe spread over an interval), records the outcome in the
backend's :class:`~.health.HealthTracker`, and acts on a changed state: slow
start when a backend recovers, a new rank, waiters served or failed, and the
deployments' hook. The probes themselves are :class:`~.health.Prober`'s.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable

from ._log import log_event
from .backend import Backend
from .clock import Clock
from .config import HealthCheckConfig
from .enums import HealthState
from .health import HealthStatus, ProbeFailed, ProbeNotRun, Prober
from .hooks import Hooks
from .router import Router
from .slow_start import SlowStart


class HealthChecks:
    def __init__(
        self,
        config: HealthCheckConfig,
        clock: Clock,
        rng: random.Random,
        router: Router,
        prober: Prober,
        slow_start: SlowStart,
        hooks: Hooks,
        counters: dict[str, int],
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng
        self.router = router
        self.prober = prober
        self.slow_start = slow_start
        self.hooks = hooks
        self.counters = counters  # the module's: "probes_not_run" is counted here
        self.running = False
        self._tasks: dict[str, asyncio.Task[None]] = {}  # by backend id
        self.observers: list[Callable[[HealthStatus], None]] = []  # told every outcome probed here

    def start_all(self, backends: Iterable[Backend]) -> None:
        """Start probing (the module is initialized): a task for each backend."""
        self.running = True
        for backend in backends:
            self.start(backend)

    def start(self, backend: Backend) -> None:
        """Probe ``backend`` from now on, if probing runs and is enabled."""
        if self.running and self.config.enabled and backend.id not in self._tasks:
            self._tasks[backend.id] = asyncio.create_task(self._loop(backend), name=f"omnixan-lb-health-{backend.id}")

    def stop(self, backend_id: str) -> None:
        """Stop probing a backend (it was removed)."""
        task = self._tasks.pop(backend_id, None)
        if task is not None:
            task.cancel()

    def cancel(self) -> list[asyncio.Task[None]]:
        """Stop all probing; return the cancelled tasks to await."""
        self.running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        return tasks

    async def check(self, backend: Backend) -> None:
        """Probe ``backend`` once and act on the outcome."""
        try:
            latency: float | None = await self.prober.probe(backend.config)
            error = None
        except ProbeFailed as exc:
            latency, error = None, str(exc)
        except ProbeNotRun as exc:  # this host is out of descriptors or memory: no news of the backend
            self.counters["probes_not_run"] += 1
            log_event("health_probe_not_run", logging.WARNING, backend_id=backend.id, error=str(exc))
            return
        if backend.removed:
            return
        old = backend.health.state
        backend.health.record(error is None, latency, self.clock.time(), error)
        for observer in self.observers:
            observer(backend.health.last)
        await self._settle(backend, old, announce=True)

    async def follow(self, backend: Backend, status: HealthStatus) -> None:
        """Take an outcome another process probed (the supervisor of several workers) as if probed here."""
        if backend.removed:
            return
        old = backend.health.state
        backend.health.adopt(status)
        await self._settle(backend, old, announce=False)  # the prober logged the change once, for all

    async def _settle(self, backend: Backend, old: HealthState, *, announce: bool) -> None:
        """Act on ``backend``'s latest outcome: its latency to the algorithm, and a changed state."""
        now = self.clock.monotonic()
        last = backend.health.last
        latency, error, new = last.latency_ms, last.error, last.status
        if latency is not None and self.router.observe(backend, latency, now):
            self.router.refresh(backend)
        if new is old:
            return
        if announce:
            log_event(
                "health_state_changed",
                logging.WARNING if new is HealthState.UNHEALTHY else logging.INFO,
                backend_id=backend.id,
                old=old.value,
                new=new.value,
                error=error,
            )
        if old is HealthState.UNHEALTHY:
            self.slow_start.begin(backend, now)
        self.router.refresh(backend)
        self.router.dispatch()
        await self.hooks.health_changed(backend.id, backend.health.last)

    async def _loop(self, backend: Backend) -> None:
        cfg = self.config
        await self.clock.sleep(self.rng.uniform(0.0, cfg.interval))  # spread the fleet's first probes
        # Checking running too: on Python 3.10 asyncio.wait_for can lose cancel()'s cancel.
        while self.running and not backend.removed:
            try:
                await self.check(backend)
            except Exception as exc:  # a bug in a hook must not stop health checking
                log_event("health_check_error", logging.ERROR, backend_id=backend.id, error=repr(exc))
            await self.clock.sleep(cfg.interval * (1.0 + self.rng.uniform(-cfg.jitter, cfg.jitter)))
