"""LEAST_LATENCY: lowest peak-EWMA latency times (in-flight + 1).

Latency is a peak-sensitive EWMA (see :class:`~load_balancing_module.stats.PeakEwma`,
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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..backend import Backend
from ..config import Request
from ..enums import LoadBalancingAlgorithmType
from ._heap import LazyHeap
from .base import Algorithm, number

_IDLE_NEW, _MEASURED, _BUSY_NEW = 0, 1, 2


class LeastLatency(Algorithm):
    kind = LoadBalancingAlgorithmType.LEAST_LATENCY
    defaults: ClassVar[Mapping[str, Any]] = {"decay_seconds": 10.0}

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        number(settings, "decay_seconds", cls.kind, minimum=0.001)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heap = LazyHeap()

    def rebuild(self, members: Sequence[Backend]) -> None:
        self._heap.clear()
        for b in members:
            self.update(b)

    @staticmethod
    def cost_key(backend: Backend) -> tuple[int, float]:
        ewma = backend.peak_ewma
        if ewma.samples == 0 or ewma.cost <= 0.0:
            if backend.in_flight == 0:
                return (_IDLE_NEW, 0.0)
            if ewma.samples == 0:
                return (_BUSY_NEW, float(backend.in_flight))
            # measured at zero latency: order by load alone, ahead of the measured
            return (_IDLE_NEW, math.log(backend.in_flight + 1))
        return (
            _MEASURED,
            math.log(ewma.cost) + ewma.stamp / ewma.tau + math.log((backend.in_flight + 1) / backend.effective_weight),
        )

    def update(self, backend: Backend) -> None:
        rank = backend.rank
        self._heap.set(backend, None if rank is None else (rank, *self.cost_key(backend)))

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        return self._heap.peek()
