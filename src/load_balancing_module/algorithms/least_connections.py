"""LEAST_CONNECTIONS: fewest in-flight requests per unit of weight.

``choice_count`` (algorithm config):

- 0 (default): exact minimum over the tier from a heap keyed by
  ``in_flight / weight``; among equal loads the member whose load changed
  longest ago wins, so ties rotate. Pick: O(log n).
- k >= 2: "power of k choices": draw k distinct members at random and take
  the least loaded of them (Envoy's least-request). Pick: O(k), and no heap
  to keep up on every request, which makes it the cheapest choice for large
  fleets; when no drawn member is a candidate it falls back to a scan, O(n).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..backend import HEALTHY_RANK, Backend
from ..clock import Clock
from ..config import Request
from ..enums import LoadBalancingAlgorithmType
from ._heap import new_heap
from ._place import claim
from ._sampling import best_of_k, check_choice_count
from .base import Algorithm


class LeastConnections(Algorithm):
    kind = LoadBalancingAlgorithmType.LEAST_CONNECTIONS
    pick_cost = "O(log n); O(k) with choice_count"
    defaults: ClassVar[Mapping[str, Any]] = {"choice_count": 0}

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        check_choice_count(settings, cls.kind, nullable=False)

    def __init__(self, settings: Mapping[str, Any], rng: random.Random, clock: Clock) -> None:
        super().__init__(settings, rng, clock)
        self._heap = new_heap()
        self._members: list[Backend] = []
        self._choices: int = self.settings["choice_count"]

    def rebuild(self, members: Sequence[Backend]) -> None:
        self._members = list(members)
        self._heap.clear()
        for b in members:
            self.update(b)

    def update(self, backend: Backend) -> None:
        if not self._choices:
            self._heap.set(claim(backend, self), backend.rank, backend.in_flight / backend.effective_weight)

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        if not self._choices:
            return self._heap.peek()
        want = HEALTHY_RANK if self.healthy_free() else None
        return best_of_k(self._members, self._choices, self.rng, want, _load)


def _load(backend: Backend) -> float:
    return backend.in_flight / backend.effective_weight
