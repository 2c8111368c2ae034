"""Power of k choices: the least-cost of k members drawn at random.

Shared by LEAST_CONNECTIONS, LEAST_LATENCY and QUANTUM_AWARE when their
``choice_count`` is k >= 2 (their default is the exact minimum, from a heap
updated in place, which is cheaper per pick at every tier size measured by
``bench/routing.py``). A draw skips members that are not candidates, and
DEGRADED ones while a HEALTHY candidate exists (``want``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..backend import Backend
from ..enums import LoadBalancingAlgorithmType
from ..exceptions import AlgorithmError
from .base import number

Cost = Callable[[Backend], float]


def check_choice_count(settings: Mapping[str, Any], kind: LoadBalancingAlgorithmType | str, *, nullable: bool) -> None:
    """``choice_count`` is 0 (exact) or >= 2 (best of k); ``None`` (exact too) where allowed."""
    number(settings, "choice_count", kind, minimum=0, allow_none=nullable, integer=True)
    if settings["choice_count"] == 1:
        allowed = "0 or null (exact), or >= 2" if nullable else "0 (exact) or >= 2"
        raise AlgorithmError(f"{kind}: config 'choice_count' must be {allowed}")


def best_of_k(members: Sequence[Backend], k: int, rng: random.Random, want: int | None, cost: Cost) -> Backend | None:
    """The pick of a sampling algorithm: the best of ``k`` drawn members, else of all."""
    chosen = best_of(members, k, rng, want, cost) if len(members) > k else None
    return chosen if chosen is not None else cheapest(members, want, cost)


def best_of(members: Sequence[Backend], k: int, rng: random.Random, want: int | None, cost: Cost) -> Backend | None:
    """Draw ``k`` distinct members; the cheapest candidate among them, or ``None``. O(k)."""
    n = len(members)
    seen: set[int] = set()
    best: Backend | None = None
    best_cost = 0.0
    while len(seen) < k:
        i = rng.randrange(n)
        if i in seen:
            continue
        seen.add(i)
        b = members[i]
        if b.rank is None or (want is not None and b.rank != want):
            continue
        c = cost(b)
        if best is None or c < best_cost:
            best, best_cost = b, c
    return best


def cheapest(members: Sequence[Backend], want: int | None, cost: Cost) -> Backend | None:
    """The cheapest candidate of all members. O(n): a fallback."""
    candidates = [b for b in members if b.rank is not None and (want is None or b.rank == want)]
    return min(candidates, key=cost, default=None)
