"""ROUND_ROBIN: strict circular order over the tier's members.

Each member holds the turn number of its last pick; the member with the
oldest turn goes next. A member that leaves the rotation (unhealthy, full)
keeps its turn and comes back at the same place. Pick: O(log n).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from itertools import count
from typing import Any

from ..backend import Backend
from ..clock import Clock
from ..config import Request
from ..enums import LoadBalancingAlgorithmType
from ._heap import RankedHeap
from .base import Algorithm


class RoundRobin(Algorithm):
    kind = LoadBalancingAlgorithmType.ROUND_ROBIN
    load_aware = False  # the order ignores in_flight

    def __init__(self, settings: Mapping[str, Any], rng: random.Random, clock: Clock) -> None:
        super().__init__(settings, rng, clock)
        self._heap = RankedHeap()
        self._turn: dict[Backend, int] = {}
        self._turns = count()

    def rebuild(self, members: Sequence[Backend]) -> None:
        old = self._turn
        self._turn = {b: old[b] if b in old else next(self._turns) for b in members}
        self._heap.clear()
        for b in members:
            self.update(b)

    def update(self, backend: Backend) -> None:
        turn = self._turn.get(backend)
        if turn is not None:
            self._heap.set(backend, backend.rank, turn)

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        backend = self._heap.peek()
        if backend is not None:
            turn = self._turn[backend] = next(self._turns)
            self._heap.set(backend, backend.rank, turn)
        return backend
