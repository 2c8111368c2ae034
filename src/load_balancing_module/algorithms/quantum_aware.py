"""QUANTUM_AWARE: workload class first, then a score of weight, load and latency.

A quantum workload (any type but CLASSICAL) goes only to quantum-capable
members while any is a candidate in any tier; a classical workload uses
quantum-capable members only when no classical member is a candidate. The
module walks the tiers once for the preferred class, then for any class.

Within the chosen class the member with the lowest score wins::

    score = (in_flight + 1) / effective_weight * (1 + latency_ms / latency_scale_ms)

where ``latency_ms`` is an EWMA (alpha 0.3) of completed requests and probes
(0 until there is data, so new members are tried) and ``latency_scale_ms``
(config, default 100) is the latency that counts as much as one extra request
in flight. Priority is honoured by the tier walk. Ties rotate. Pick: O(log n).

``choice_count``: ``null`` (default) or ``0`` takes the exact minimum; ``k >= 2``
the best of ``k`` random members of the class (power of k choices).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..backend import HEALTHY_RANK, Backend
from ..clock import Clock
from ..config import Request
from ..enums import LoadBalancingAlgorithmType
from ..stats import ewma
from ._heap import new_heap
from ._place import claim
from ._sampling import best_of_k, check_choice_count
from .base import Algorithm, number


class QuantumAware(Algorithm):
    kind = LoadBalancingAlgorithmType.QUANTUM_AWARE
    pick_cost = "O(log n); O(k) with choice_count"
    workload_aware = True
    observes_latency = True
    defaults: ClassVar[Mapping[str, Any]] = {"latency_scale_ms": 100.0, "choice_count": None}

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        number(settings, "latency_scale_ms", cls.kind, minimum=0.001)
        check_choice_count(settings, cls.kind, nullable=True)

    def __init__(self, settings: Mapping[str, Any], rng: random.Random, clock: Clock) -> None:
        super().__init__(settings, rng, clock)
        self._heaps = (new_heap(), new_heap())  # [classical, quantum-capable]
        self._scale: float = float(self.settings["latency_scale_ms"])
        self._members: tuple[list[Backend], list[Backend]] = ([], [])
        self._all: list[Backend] = []
        self._choices: int = self.settings["choice_count"] or 0  # 0: exact heaps; k: best of k random members

    def preferred_class(self, request: Request) -> int | None:
        return 1 if request.workload_type.is_quantum else 0

    def rebuild(self, members: Sequence[Backend]) -> None:
        self._all = list(members)
        self._members = ([b for b in members if not b.quantum], [b for b in members if b.quantum])
        for heap in self._heaps:
            heap.clear()
        for b in members:
            self.update(b)

    def score(self, backend: Backend) -> float:
        return (backend.in_flight + 1) / backend.effective_weight * (1.0 + backend.score_ms / self._scale)

    def update(self, backend: Backend) -> None:
        if not self._choices:
            self._heaps[1 if backend.quantum else 0].set(claim(backend, self), backend.rank, self.score(backend))

    def observe(self, backend: Backend, latency_ms: float, now: float) -> None:
        backend.score_ms = ewma(backend.score_ms, backend.score_samples, latency_ms)
        backend.score_samples += 1

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        if self._choices:
            want = HEALTHY_RANK if self.healthy_free(klass) else None
            pool = self._all if klass is None else self._members[klass]
            return best_of_k(pool, self._choices, self.rng, want, self.score)
        if klass is not None:
            return self._heaps[klass].peek()
        classical, quantum = self._heaps[0].peek(), self._heaps[1].peek()
        if quantum is None or (
            classical is not None and (classical.lb_rank, classical.lb_key) <= (quantum.lb_rank, quantum.lb_key)
        ):
            return classical
        return quantum
