"""ROUND_ROBIN: strict circular order over the tier's members.

Members keep their place in the circle (the order they joined the tier); a
pick takes the first candidate after the last one picked, HEALTHY members
before DEGRADED ones. A member that leaves the rotation (unhealthy, full)
keeps its place and is served again when the turn comes round to it.
Pick: O(1) (see ``_rotation``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..backend import Backend
from ..clock import Clock
from ..config import Request
from ..enums import LoadBalancingAlgorithmType
from ._place import claim
from ._rotation import Rotation
from .base import Algorithm


class RoundRobin(Algorithm):
    kind = LoadBalancingAlgorithmType.ROUND_ROBIN
    pick_cost = "O(1)"
    load_aware = False  # the order ignores in_flight

    def __init__(self, settings: Mapping[str, Any], rng: random.Random, clock: Clock) -> None:
        super().__init__(settings, rng, clock)
        self._circle = Rotation()

    def rebuild(self, members: Sequence[Backend]) -> None:
        # Members keep their order across rebuilds (newcomers join at the end).
        self._circle.refill([claim(b, self) for b in members])

    def update(self, backend: Backend) -> None:
        if backend.lb_in is self._circle:
            self._circle.set(backend, backend.rank)

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        return self._circle.pick(False)
