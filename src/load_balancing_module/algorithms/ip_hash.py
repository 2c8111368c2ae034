"""IP_HASH: consistent hashing of the client IP on a ring.

Each member owns ``points`` pseudo-random points on a 64-bit ring, derived
from its ``host:port`` (so every balancer instance, and every restart, builds
the same ring). A key goes to the owner of the first point at or after its
hash, walking on past members that are not candidates now. Removing one of N
members moves only that member's keys, about 1/N of them; a member that is
unhealthy for a while keeps its points, so its keys come back when it does.

Config:

- ``points``: points per member at weight 1 (default: 160,000 / N, between
  40 and 1,000, which keeps loads within a few percent for small tiers).
  Points scale with weight relative to the heaviest member.
- ``balance_factor``: bounded loads (as HAProxy's ``hash-balance-factor``,
  from "Consistent Hashing with Bounded Loads"): a member may take a request
  only while its in-flight count stays within ``factor x`` the tier's mean;
  otherwise the walk goes on. ``None`` (default) disables it. Must be > 1.
- ``key``: ``"client_ip"`` (default) or ``"session_id"`` (falls back to the
  client IP when a request has none).

Build: O(P log P) for P points, on membership change only. Pick: O(log P),
plus a short walk past non-candidates.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..backend import HEALTHY_RANK, Backend
from ..config import Request
from ..enums import LoadBalancingAlgorithmType
from ..exceptions import AlgorithmError
from .base import Algorithm, number

MIN_POINTS = 40
MAX_POINTS = 1000
POINT_BUDGET = 160_000


def hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


def hash_key(request: Request, key: str) -> str:
    """What the ring hashes for a request (kept apart from the ring itself)."""
    if key == "session_id" and request.session_id:
        return request.session_id
    return request.client_ip


class HashRing:
    """Sorted points and their owners; immutable once built."""

    __slots__ = ("hashes", "owners")

    def __init__(self, members: Sequence[Backend], points: int | None) -> None:
        n = len(members)
        base = points or max(MIN_POINTS, min(MAX_POINTS, POINT_BUDGET // max(n, 1)))
        heaviest = max((b.weight for b in members), default=1.0)
        seen: dict[str, int] = {}
        pairs: list[tuple[int, int]] = []
        for index, b in enumerate(members):
            # Two members at the same address get distinct points.
            dup = seen.get(b.key, 0)
            seen[b.key] = dup + 1
            name = b.key if dup == 0 else f"{b.key}~{dup}"
            count = max(1, round(base * b.weight / heaviest))
            pairs.extend((hash64(f"{name}#{i}"), index) for i in range(count))
        pairs.sort()
        self.hashes = [h for h, _ in pairs]
        owners = list(members)
        self.owners = [owners[i] for _, i in pairs]

    def start(self, key: str) -> int:
        i = bisect.bisect_left(self.hashes, hash64(key))
        return 0 if i == len(self.hashes) else i


class ConsistentHash(Algorithm):
    kind = LoadBalancingAlgorithmType.IP_HASH
    defaults: ClassVar[Mapping[str, Any]] = {"points": None, "balance_factor": None, "key": "client_ip"}

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        number(settings, "points", cls.kind, minimum=1, allow_none=True, integer=True)
        number(settings, "balance_factor", cls.kind, minimum=1, allow_none=True)
        if settings["balance_factor"] is not None and settings["balance_factor"] <= 1:
            raise AlgorithmError("ip_hash: config 'balance_factor' must be > 1 (or null to disable)")
        if settings["key"] not in ("client_ip", "session_id"):
            raise AlgorithmError(f"ip_hash: config 'key' must be 'client_ip' or 'session_id', got {settings['key']!r}")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ring = HashRing((), None)
        self._factor: float | None = self.settings["balance_factor"]
        self._key: str = self.settings["key"]

    def rebuild(self, members: Sequence[Backend]) -> None:
        self._ring = HashRing(members, self.settings["points"])

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        ring = self._ring
        owners = ring.owners
        if not owners:
            return None
        want = HEALTHY_RANK if self.healthy_free() else None
        cap = self._load_cap()
        i = ring.start(hash_key(request, self._key))
        fallback: Backend | None = None
        for _ in range(len(owners)):
            b = owners[i]
            if b.rank is not None and (want is None or b.rank == want):
                if cap is None or b.in_flight + 1 <= cap:
                    return b
                if fallback is None:
                    fallback = b
            i = i + 1 if i + 1 < len(owners) else 0
        return fallback

    def _load_cap(self) -> float | None:
        tier = self.tier
        if self._factor is None or tier is None:
            return None
        candidates = max(tier.free_total, 1)
        return math.ceil(self._factor * (tier.in_flight + 1) / candidates)
