"""IP_HASH: consistent hashing of the client IP on a ring.

Each member owns ``points`` pseudo-random points on a 64-bit ring, derived
from its ``host:port`` (so every balancer instance, and every restart, builds
the same ring). A key goes to the owner of the first point at or after its
hash, walking on past members that are not candidates now. Removing one of N
members moves only that member's keys, about 1/N of them; a member that is
unhealthy for a while keeps its points, so its keys come back when it does.

Config:

- ``points``: points per member at the reference weight (default: 160,000 / N,
  between 40 and 1,000, which keeps loads within a few percent for small
  tiers). The default is sticky: a ring keeps its per-member count while
  160,000 / N stays within half to twice it, so one member joining or
  leaving does not re-point every member (which would move about 1/count of
  all keys on top of the member's own); it changes when the tier has grown or
  shrunk about twofold. A member of weight ``w`` gets ``points x w / ref``, where ``ref`` is
  the median weight rounded to a power of two, at most ``MAX_WEIGHT_RATIO``
  times ``points``. Scaling by the *heaviest* weight instead would re-scale
  every member whenever the heaviest one joins or leaves, moving about half
  of all keys; the rounded median does not move when one member comes or goes
  in a tier of like weights.
- ``balance_factor``: bounded loads (as HAProxy's ``hash-balance-factor``,
  from "Consistent Hashing with Bounded Loads"): a member may take a request
  only while its in-flight count stays within ``factor x`` its weighted share
  of the tier's in-flight requests; otherwise the walk goes on. ``None``
  (default) disables it. Must be > 1.
- ``key``: ``"client_ip"`` (default) or ``"session_id"`` (falls back to the
  client IP when a request has none).

Build: O(P log P) for P points, on membership change only. Pick: O(log P),
plus a short walk past non-candidates.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import random
import statistics
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ..backend import HEALTHY_RANK, Backend
from ..clock import Clock
from ..config import Request
from ..enums import LoadBalancingAlgorithmType
from ..exceptions import AlgorithmError
from .base import Algorithm, number

MIN_POINTS = 40
MAX_POINTS = 1000
POINT_BUDGET = 160_000
MAX_CONFIG_POINTS = 10_000  # per backend: an explicit ``points`` above this would only cost memory and build time
_INDEX_BITS = 24  # members per tier the packing supports: 16 million
_INDEX_MASK = (1 << _INDEX_BITS) - 1
MAX_WEIGHT_RATIO = 16  # a member gets at most this many times the points of the reference weight


def hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=65536)
def member_points(name: str, count: int) -> tuple[int, ...]:
    """A member's ring points: a Mersenne Twister seeded with the hash of its name.

    Deterministic across processes and Python versions (``random.Random`` with
    an int seed is), and about 20x faster than hashing every point; cached so a
    rebuild after one member joins or leaves recomputes only that member.
    """
    rng = random.Random(hash64(name))
    return tuple(rng.getrandbits(64) for _ in range(count))


def hash_key(request: Request, key: str) -> str:
    """What the ring hashes for a request (kept apart from the ring itself)."""
    if key == "session_id" and request.session_id:
        return request.session_id
    return request.client_ip


class RingMember(Protocol):
    """What the ring needs of a member: a stable address and a weight."""

    @property
    def key(self) -> str: ...
    @property
    def weight(self) -> float: ...


M = TypeVar("M", bound=RingMember)


def default_points(n: int, current: int = 0) -> int:
    """Points per member for a tier of ``n``: ``current`` while it is within half to twice the
    budget's share, else the share (between MIN_POINTS and MAX_POINTS)."""
    share = max(MIN_POINTS, min(MAX_POINTS, POINT_BUDGET // max(n, 1)))
    if current and share <= current * 2 and current <= share * 2:
        return current
    return share


class HashRing(Generic[M]):
    """Sorted points and their owners; immutable once built.

    ``hashes`` is a flat ``array('Q')``; a lookup first reads ``_index``, the
    position of the first point of each bucket of the ring (by the hash's top
    bits, about four points per bucket), and bisects that bucket only: a few
    neighbouring reads, where a bisection of the whole ring reads about 20
    places spread over megabytes when a tier has 10,000 members.
    """

    __slots__ = ("hashes", "owners", "_index", "_shift")

    def __init__(self, members: Sequence[M], points: int | None) -> None:
        n = len(members)
        base = points or default_points(n)
        # Not the heaviest weight: see the module docstring.
        ref = 2.0 ** round(math.log2(statistics.median_low(b.weight for b in members))) if members else 1.0
        seen: dict[str, int] = {}
        # Each point is packed with its owner's index into one int, so the sort
        # compares plain ints rather than tuples (several times faster).
        packed: list[int] = []
        for index, b in enumerate(members):
            # Two members at the same address get distinct points.
            dup = seen.get(b.key, 0)
            seen[b.key] = dup + 1
            name = b.key if dup == 0 else f"{b.key}~{dup}"
            count = max(1, min(round(base * b.weight / ref), base * MAX_WEIGHT_RATIO))
            packed.extend([(h << _INDEX_BITS) | index for h in member_points(name, count)])
        packed.sort()
        self.hashes = array("Q", [v >> _INDEX_BITS for v in packed])
        owners = list(members)
        self.owners = [owners[v & _INDEX_MASK] for v in packed]
        bits = max(1, (len(packed) // 4).bit_length())
        self._shift = 64 - bits
        self._index = _bucket_starts(self.hashes, bits)

    def start(self, key: str) -> int:
        h = hash64(key)
        bucket = h >> self._shift
        i = bisect.bisect_left(self.hashes, h, self._index[bucket], self._index[bucket + 1])
        return 0 if i == len(self.hashes) else i


def _bucket_starts(hashes: array[int], bits: int) -> array[int]:
    """For each of the ``2**bits`` buckets (and one past the last), the index of its first point."""
    shift = 64 - bits
    starts = array("Q", bytes(8 * ((1 << bits) + 1)))
    i, n = 0, len(hashes)
    for bucket in range(1, (1 << bits) + 1):
        while i < n and hashes[i] >> shift < bucket:
            i += 1
        starts[bucket] = i
    return starts


class ConsistentHash(Algorithm):
    kind = LoadBalancingAlgorithmType.IP_HASH
    pick_cost = "O(log P) for P ring points"
    load_aware = False  # the order ignores in_flight (IP_HASH's load cap reads it at pick time)
    defaults: ClassVar[Mapping[str, Any]] = {"points": None, "balance_factor": None, "key": "client_ip"}

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        number(settings, "points", cls.kind, minimum=1, maximum=MAX_CONFIG_POINTS, allow_none=True, integer=True)
        number(settings, "balance_factor", cls.kind, minimum=1, allow_none=True)
        if settings["balance_factor"] is not None and settings["balance_factor"] <= 1:
            raise AlgorithmError("ip_hash: config 'balance_factor' must be > 1 (or null to disable)")
        if settings["key"] not in ("client_ip", "session_id"):
            raise AlgorithmError(f"ip_hash: config 'key' must be 'client_ip' or 'session_id', got {settings['key']!r}")

    def __init__(self, settings: Mapping[str, Any], rng: random.Random, clock: Clock) -> None:
        super().__init__(settings, rng, clock)
        self._ring: HashRing[Backend] = HashRing((), None)
        self._points_each = 0  # the default per-member count in use (see default_points)
        self._factor: float | None = self.settings["balance_factor"]
        self._key: str = self.settings["key"]
        # For the bounded-load cap: the weight of the members with a free slot,
        # [HEALTHY ones, any], and the (rank, weight) each member is counted with.
        self._free_weight = [0.0, 0.0]
        self._counted: dict[Backend, tuple[int | None, float]] = {}

    def rebuild(self, members: Sequence[Backend]) -> None:
        points: int | None = self.settings["points"]
        if points is None:
            points = self._points_each = default_points(len(members), self._points_each)
        self._ring = HashRing(members, points)
        self._free_weight = [0.0, 0.0]
        self._counted.clear()
        for b in members:
            self.update(b)

    def update(self, backend: Backend) -> None:
        rank, weight = backend.rank, backend.weight
        old = self._counted.get(backend)
        if old == (rank, weight):
            return
        if old is not None:
            self._count(*old, -1)
        self._count(rank, weight, 1)
        self._counted[backend] = (rank, weight)

    def _count(self, rank: int | None, weight: float, sign: int) -> None:
        if rank is not None:
            self._free_weight[1] += sign * weight
            if rank == HEALTHY_RANK:
                self._free_weight[0] += sign * weight

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        ring = self._ring
        owners = ring.owners
        if not owners:
            return None
        want = HEALTHY_RANK if self.healthy_free() else None
        per_weight = self._load_cap(want)
        i = ring.start(hash_key(request, self._key))
        fallback: Backend | None = None
        for _ in range(len(owners)):
            b = owners[i]
            if b.rank is not None and (want is None or b.rank == want):
                if per_weight is None or b.in_flight + 1 <= math.ceil(per_weight * b.weight):
                    return b
                if fallback is None:
                    fallback = b
            i = i + 1 if i + 1 < len(owners) else 0
        return fallback

    def _load_cap(self, want: int | None) -> float | None:
        """In-flight requests allowed per unit of weight, counting the one being placed.

        Weighted, as HAProxy does: a member of weight ``w`` may hold
        ``ceil(factor x (in_flight + 1) x w / W)``, where ``W`` is the weight of
        the members that may take this request. (An unweighted cap held a
        heavy member to the same count as a light one, whatever its weight.)
        The least loaded such member is always under its cap.
        """
        tier = self.tier
        weight = self._free_weight[0 if want == HEALTHY_RANK else 1]
        if self._factor is None or tier is None or weight <= 0.0:
            return None
        return self._factor * (tier.in_flight + 1) / weight
