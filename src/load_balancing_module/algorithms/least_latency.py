"""LEAST_LATENCY: lowest peak-EWMA latency times (in-flight + 1).

Latency is a peak-sensitive EWMA (see :func:`~load_balancing_module.stats.peak_ewma`,
as Finagle and Linkerd use) of completed requests and health probes, with
time constant ``decay_seconds`` (config, default 10). The cost of a member is::

    cost = latency_now * (in_flight + 1) / effective_weight

so the fastest member is not flooded: each request in flight raises its cost.
A member with no data yet costs 0 while idle, so it is tried at once, and a
large penalty while it has a request in flight, so it is not flooded either.

Between samples every cost decays by the same factor ``exp(-dt/tau)``, which
keeps the order of members unchanged; the heap therefore stores the
time-independent ``log(cost) + stamp/tau`` and needs updating only when a
member's own latency or load changes. Pick: O(log n).

``choice_count``: ``null`` (default) or ``0`` picks the exact minimum; ``k >= 2``
the cheapest of ``k`` random members (power of two choices, as Finagle and
Linkerd do): O(k), no heap upkeep, and less herding when several balancers
share backends without sharing their view of them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from ..backend import HEALTHY_RANK, Backend
from ..clock import Clock
from ..config import Request
from ..enums import LoadBalancingAlgorithmType
from ..stats import peak_ewma
from ._heap import new_heap
from ._place import claim
from ._sampling import best_of_k, check_choice_count
from .base import Algorithm, number

# Keys are plain floats: members with no data and nothing in flight first (-inf),
# then measured ones by log-cost, then members with no data but requests in flight.
_UNMEASURED_BUSY: Final = 1e300


class LeastLatency(Algorithm):
    kind = LoadBalancingAlgorithmType.LEAST_LATENCY
    pick_cost = "O(log n); O(k) with choice_count"
    observes_latency = True
    defaults: ClassVar[Mapping[str, Any]] = {"decay_seconds": 10.0, "choice_count": None}

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        number(settings, "decay_seconds", cls.kind, minimum=0.001)
        check_choice_count(settings, cls.kind, nullable=True)

    def __init__(self, settings: Mapping[str, Any], rng: random.Random, clock: Clock) -> None:
        super().__init__(settings, rng, clock)
        self._heap = new_heap()
        self._tau = float(self.settings["decay_seconds"])
        self._members: list[Backend] = []
        self._choices: int = self.settings["choice_count"] or 0  # 0: exact heap; k: best of k random members

    def rebuild(self, members: Sequence[Backend]) -> None:
        self._members = list(members)
        self._heap.clear()
        for b in members:
            self.update(b)

    def cost_key(self, backend: Backend) -> float:
        cost = backend.latency_cost
        if cost > 0.0:
            return (
                math.log(cost)
                + backend.latency_stamp / self._tau
                + math.log((backend.in_flight + 1) / backend.effective_weight)
            )
        if backend.in_flight == 0:
            return -math.inf
        if backend.latency_samples:  # measured at zero latency: ahead of the measured, by load
            return -_UNMEASURED_BUSY / (backend.in_flight + 1)
        return _UNMEASURED_BUSY * backend.in_flight

    def update(self, backend: Backend) -> None:
        if not self._choices:
            self._heap.set(claim(backend, self), backend.rank, self.cost_key(backend))

    def observe(self, backend: Backend, latency_ms: float, now: float) -> None:
        backend.latency_cost = peak_ewma(
            backend.latency_cost, backend.latency_stamp, backend.latency_samples, self._tau, latency_ms, now
        )
        backend.latency_stamp = now
        backend.latency_samples += 1

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        if not self._choices:
            return self._heap.peek()
        want = HEALTHY_RANK if self.healthy_free() else None
        return best_of_k(self._members, self._choices, self.rng, want, self.cost_key)
