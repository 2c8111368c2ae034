"""Slow start: a backend that joins, or recovers from UNHEALTHY, takes a growing share of its weight.

Its effective weight starts at ``SLOW_START_FLOOR`` of its weight and grows
linearly to the whole weight over ``slow_start_seconds``, in
``SLOW_START_STEPS`` steps run by the router's lazy timers (so a fake clock
drives them), as HAProxy's ``slowstart``.
"""

from __future__ import annotations

from .backend import Backend
from .clock import Clock
from .router import Router

SLOW_START_STEPS = 20
SLOW_START_FLOOR = 0.05  # share of its weight a backend starts slow start with


class SlowStart:
    __slots__ = ("router", "clock")

    def __init__(self, router: Router, clock: Clock) -> None:
        self.router = router
        self.clock = clock

    def begin(self, backend: Backend, now: float) -> None:
        """Start ``backend``'s slow start at ``now`` (nothing if its ``slow_start_seconds`` is 0)."""
        duration = backend.config.slow_start_seconds
        if duration <= 0:
            return
        backend.joined_at = now
        backend.effective_weight = backend.weight * SLOW_START_FLOOR
        self.router.schedule(now + duration / SLOW_START_STEPS, lambda: self._step(backend))

    def _step(self, backend: Backend) -> None:
        if backend.removed:
            return
        duration = backend.config.slow_start_seconds
        now = self.clock.monotonic()
        share = min(1.0, max(SLOW_START_FLOOR, (now - backend.joined_at) / duration))
        backend.effective_weight = backend.weight * share
        self.router.refresh(backend)
        if share < 1.0:
            self.router.schedule(now + duration / SLOW_START_STEPS, lambda: self._step(backend))
