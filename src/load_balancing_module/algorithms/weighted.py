"""WEIGHTED: smooth weighted round robin.

Exact proportions over a cycle, interleaved rather than in bursts; float
weights work, and ``effective_weight`` (slow start) is honoured.

- Tiers of up to ``SMALL_TIER`` members use NGINX's algorithm exactly: every
  member's ``current`` grows by its weight, the largest wins and gives back
  the total. Pick: O(n), which for a few dozen members is cheaper than a heap.
- Larger tiers with at most 16 distinct weights (the usual case) use weight
  classes: strict rotation within a class, classes scheduled by deadline
  (see ``_weight_classes``). Pick: O(k), k the number of distinct weights.
- Other large tiers use an earliest-deadline-first schedule (as Envoy does): each
  member is due every ``1/weight`` units of virtual time, starting a fraction
  ``phase`` of an interval in. Same proportions, near-identical interleaving.
  Pick: O(log n).

  Phases are spread over (0, 1] by the golden-ratio sequence, one per member
  in the order they join. With one shared phase, equal-weight members fall
  due together: one member of weight 32 among 32 of weight 1 went 16 times
  in a row, then the others 32 in a row. Spread phases keep every prefix of
  the schedule within a pick or two of its exact share.

A member that returns after a pause resumes at the current virtual time, so
it does not get a burst to "catch up".
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ..backend import HEALTHY_RANK, Backend
from ..clock import Clock
from ..config import Request
from ..enums import LoadBalancingAlgorithmType
from ._heap import new_heap
from ._place import claim
from ._weight_classes import MAX_CLASSES, WeightClasses
from .base import Algorithm

SMALL_TIER: Final = 32
_GOLDEN: Final = 0.6180339887498949  # 1/phi: successive multiples, mod 1, spread evenly over [0, 1)


class SmoothWeighted(Algorithm):
    kind = LoadBalancingAlgorithmType.WEIGHTED
    pick_cost = "O(n) small tiers, O(k) distinct weights, O(log n) large"
    load_aware = False  # the order ignores in_flight

    def __init__(self, settings: Mapping[str, Any], rng: random.Random, clock: Clock) -> None:
        super().__init__(settings, rng, clock)
        self._members: list[Backend] = []
        self._current: dict[Backend, float] = {}
        self._heap = new_heap()
        self._deadline: dict[Backend, float] = {}
        self._vtime = 0.0
        self._joined = 0  # members given a phase so far
        self._classes: WeightClasses | None = None  # the weight-class schedule, when in use
        self.small = True  # NGINX's loop (at most SMALL_TIER members)

    def rebuild(self, members: Sequence[Backend]) -> None:
        self._members = list(members)
        self.small = len(self._members) <= SMALL_TIER
        self._current = {b: self._current.get(b, 0.0) for b in members}
        self._deadline = {b: self._deadline[b] for b in members if b in self._deadline}
        self._heap.clear()
        self._classes = None
        if self.small:
            return
        if len({b.effective_weight for b in members}) <= MAX_CLASSES:
            self._classes = WeightClasses()
            self._classes.rebuild(members)
            return
        for b in members:
            self.update(b)

    def update(self, backend: Backend) -> None:
        if self.small or backend not in self._current:
            return
        classes = self._classes
        if classes is not None:
            classes.update(backend)
            if classes.overflowing:  # slow start or new weights: too many classes, schedule members
                self._classes = None
                for b in self._members:
                    self.update(b)
            return
        if backend.rank is None:
            self._heap.set(claim(backend, self), None, 0.0)
            return
        deadline = self._deadline.get(backend)
        if deadline is None:
            self._joined += 1
            phase = 1.0 - (self._joined * _GOLDEN) % 1.0  # in (0, 1]
            deadline = self._vtime + phase / backend.effective_weight
        deadline = max(deadline, self._vtime)
        self._deadline[backend] = deadline
        self._heap.set(claim(backend, self), backend.rank, deadline)

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        if self.small:
            return self._pick_small()
        if self._classes is not None:
            return self._classes.pick(self.healthy_free() > 0)
        return self._pick_edf()

    def _pick_small(self) -> Backend | None:
        rank = HEALTHY_RANK if self.healthy_free() else None
        current = self._current
        best: Backend | None = None
        best_current = 0.0
        total = 0.0
        for b in self._members:
            if b.rank is None or (rank is not None and b.rank != rank):
                continue
            weight = b.effective_weight
            c = current[b] + weight
            current[b] = c
            total += weight
            if best is None or c > best_current:
                best, best_current = b, c
        if best is not None:
            current[best] = best_current - total
        return best

    def _pick_edf(self) -> Backend | None:
        backend = self._heap.peek()
        if backend is None:
            return None
        deadline = self._deadline[backend]
        self._vtime = deadline
        deadline += 1.0 / backend.effective_weight
        self._deadline[backend] = deadline
        self._heap.set(claim(backend, self), backend.rank, deadline)
        return backend
