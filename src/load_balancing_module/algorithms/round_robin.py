"""ROUND_ROBIN: strict circular order over the tier's members.

Each member holds the turn number of its last pick (the key of its heap
node); the member with the oldest turn goes next. A member that leaves the
rotation (unhealthy, full) keeps its turn and comes back at the same place.
Pick: O(log n).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..backend import Backend
from ..clock import Clock
from ..config import Request
from ..enums import LoadBalancingAlgorithmType
from ._heap import new_heap, node_of
from .base import Algorithm


class RoundRobin(Algorithm):
    kind = LoadBalancingAlgorithmType.ROUND_ROBIN
    load_aware = False  # the order ignores in_flight

    def __init__(self, settings: Mapping[str, Any], rng: random.Random, clock: Clock) -> None:
        super().__init__(settings, rng, clock)
        self._heap = new_heap()
        self._turns = 0.0  # the latest turn handed out (a float: heap keys are floats)

    def rebuild(self, members: Sequence[Backend]) -> None:
        self._heap.clear()
        for b in members:
            node = b.lb_node
            if node is None or node.owner is not self:  # a newcomer: its turn is after everyone's
                self._turns += 1.0
                node_of(b, self).key = self._turns
        for b in members:
            self.update(b)

    def update(self, backend: Backend) -> None:
        node = backend.lb_node
        if node is not None and node.owner is self:
            self._heap.set(node, backend.rank, node.key)

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        node = self._heap.top()
        if node is None:
            return None
        self._turns += 1.0
        self._heap.set(node, node.rank, self._turns)
        return node.backend
