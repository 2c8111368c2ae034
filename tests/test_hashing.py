"""Consistent hashing (IP_HASH): spread, minimal movement, and keys coming home.

The statistical tests use :class:`HashRing` directly with stand-in members
(it reads only ``key`` and ``weight``), since 100,000 routed requests would be
slow; the last tests route through the module to show it uses the same ring.
Keys and members are fixed, so every figure here is deterministic.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from functools import cache, partial

import pytest

from conftest import MakeLB, Probes
from load_balancing_module import BackendConfig, HealthState, LoadBalancingAlgorithmType, LoadBalancingModule, Request
from load_balancing_module.algorithms.ip_hash import MAX_POINTS, POINT_BUDGET, HashRing, default_points, hash64

IP_HASH = LoadBalancingAlgorithmType.IP_HASH


class Member:
    """What the ring needs of a backend: a stable address and a weight."""

    def __init__(self, key: str, weight: float = 1.0) -> None:
        self.key = key
        self.weight = weight

    def __repr__(self) -> str:
        return self.key


@cache
def client_ips(n: int = 100_000) -> tuple[str, ...]:
    rng = random.Random(2024)
    return tuple(
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}" for _ in range(n)
    )


def members(n: int, weight: float = 1.0, prefix: str = "10.1.0") -> list[Member]:
    return [Member(f"{prefix}.{i}:8080", weight) for i in range(n)]


@cache
def client_hashes() -> tuple[int, ...]:
    return tuple(hash64(k) for k in client_ips())


def assign(ring_members: list[Member], points: int | None = None) -> list[Member]:
    """The owner of every client IP on a ring of ``ring_members``.

    Same lookup as ``HashRing.start`` (checked on a sample), with the client
    hashes computed once for the whole file."""
    ring = HashRing(ring_members, points)
    hashes, owners, n = ring.hashes, ring.owners, len(ring.hashes)
    found = [owners[i if i < n else 0] for i in map(partial(bisect.bisect_left, hashes), client_hashes())]
    assert all(found[i] is owners[ring.start(k)] for i, k in enumerate(client_ips()[:500]))
    return found  # type: ignore[return-value]


@cache
def baseline(n: int) -> tuple[tuple[Member, ...], tuple[Member, ...]]:
    ring_members = members(n)
    return tuple(ring_members), tuple(assign(ring_members))


def moved(before: tuple[Member, ...] | list[Member], after: list[Member]) -> list[tuple[Member, Member]]:
    return [(b, a) for b, a in zip(before, after, strict=True) if b is not a]


def test_ten_backends_share_100k_clients_within_ten_percent() -> None:
    ring_members, owners = baseline(10)
    load = Counter(owners)
    mean = len(owners) / 10
    assert set(load) == set(ring_members)
    assert max(load.values()) / mean <= 1.1
    assert min(load.values()) / mean >= 0.9


@pytest.mark.parametrize("n", [10, 50])
def test_removing_one_moves_only_its_own_keys(n: int) -> None:
    ring_members, before = baseline(n)
    gone = ring_members[3]
    after = assign([m for m in ring_members if m is not gone])
    changes = moved(before, after)
    assert len(changes) / len(before) <= 1.1 / n
    assert all(old is gone for old, _ in changes)  # nobody else's clients move
    assert gone not in after
    # ...and the removed member's keys spread over the others, not onto one neighbour.
    assert len({new for _, new in changes}) >= min(n - 1, 8)


@pytest.mark.parametrize("n", [10, 50])
def test_adding_one_moves_about_one_in_n_plus_one(n: int) -> None:
    ring_members, before = baseline(n)
    newcomer = Member("10.9.9.9:8080")
    after = assign([*ring_members, newcomer])
    changes = moved(before, after)
    share = len(changes) / len(before)
    assert 0.85 / (n + 1) <= share <= 1.15 / (n + 1)
    assert all(new is newcomer for _, new in changes)  # keys move only to the newcomer


def test_the_default_point_count_is_sticky_until_the_tier_doubles_or_halves() -> None:
    assert default_points(10) == MAX_POINTS and default_points(1000) == POINT_BUDGET // 1000
    assert default_points(1001, current=default_points(1000)) == default_points(1000)  # no re-pointing
    assert default_points(2001, current=160) == POINT_BUDGET // 2001  # the tier doubled: the share again
    assert default_points(498, current=160) == POINT_BUDGET // 498  # ...or halved


def test_adding_one_to_a_thousand_moves_only_the_newcomers_share() -> None:
    # 160,000 // 1,000 = 160 but 160,000 // 1,001 = 159: without the sticky count every member would
    # lose a point and about 1/160 of all keys would move besides the newcomer's 1/1,001.
    ring_members = members(1000)
    points = default_points(1000)
    before = assign(ring_members, points)
    newcomer = Member("10.9.9.9:8080")
    after = assign([*ring_members, newcomer], default_points(1001, current=points))
    changes = moved(before, after)
    assert len(changes) / len(before) <= 1.1 * 1.15 / 1001 + 0.0005  # sampling noise on 100k keys
    assert all(new is newcomer for _, new in changes)


def test_order_of_members_does_not_matter() -> None:
    ring_members, before = baseline(10)
    shuffled = list(ring_members)
    random.Random(5).shuffle(shuffled)
    assert assign(shuffled) == list(before)


def test_weights_set_the_share() -> None:
    weights = [1.0, 1.0, 2.0, 2.0, 3.0, 0.5]
    ring_members = [Member(f"10.2.0.{i}:8080", w) for i, w in enumerate(weights)]
    load = Counter(assign(ring_members))
    total = sum(weights)
    for m in ring_members:
        expected = len(client_ips()) * m.weight / total
        # A member's points scale with its weight (1,000 per unit here), and the
        # relative error of its share with 1/sqrt(points): allow about 3 sigma.
        tolerance = 3.5 / math.sqrt(1000 * m.weight)
        assert abs(load[m] - expected) / expected <= tolerance, (m, m.weight, load[m], expected)


def test_adding_a_heavier_backend_moves_only_its_share() -> None:
    # Scaling points by the heaviest weight halved every other member's points
    # here, which moved about half of all clients.
    ring_members, before = baseline(10)
    heavy = Member("10.9.9.9:8080", weight=2.0)
    changes = moved(before, assign([*ring_members, heavy]))
    assert len(changes) / len(before) <= 1.15 * 2 / 12
    assert all(new is heavy for _, new in changes)


def test_removing_the_heaviest_backend_moves_only_its_keys() -> None:
    ring_members = [*members(9), Member("10.9.9.9:8080", weight=3.0)]
    before = assign(ring_members)
    changes = moved(before, assign(ring_members[:-1]))
    assert all(old is ring_members[-1] for old, _ in changes)
    assert len(changes) / len(before) <= 1.15 * 3 / 12


def test_members_at_the_same_address_both_get_keys() -> None:
    twins = [Member("10.3.0.1:8080"), Member("10.3.0.1:8080"), Member("10.3.0.2:8080")]
    ring = HashRing(twins, None)  # type: ignore[arg-type]
    load = Counter(ring.owners[ring.start(k)] for k in client_ips()[:30_000])
    assert all(8_000 <= load[m] <= 12_000 for m in twins)


# --------------------------------------------------------------------------------------------------
# Through the module
# --------------------------------------------------------------------------------------------------

CLIENTS = client_ips()[:2_000]


async def mapping(lb: LoadBalancingModule) -> dict[str, str]:
    out = {}
    for client in CLIENTS:
        result = await lb.route_request(Request(client_ip=client))
        await lb.complete_request(result, success=True, latency_ms=1.0)
        out[client] = result.backend_id
    return out


def hosts(n: int) -> list[BackendConfig]:
    return [BackendConfig(host=f"10.1.0.{i}", port=8080) for i in range(n)]


async def test_unhealthy_backend_gets_its_keys_back_when_it_returns(make_lb: MakeLB, probes: Probes) -> None:
    lb = await make_lb(IP_HASH, hosts(10))
    before = await mapping(lb)
    sick = "10.1.0.4:8080"
    await probes.set(lb, sick, HealthState.UNHEALTHY)
    during = await mapping(lb)
    assert sick not in during.values()
    assert all(during[c] == before[c] for c in CLIENTS if before[c] != sick)  # only its clients move
    await probes.set(lb, sick, HealthState.HEALTHY)
    assert await mapping(lb) == before


async def test_module_ring_matches_across_instances_and_removal(make_lb: MakeLB) -> None:
    first = await make_lb(IP_HASH, hosts(10))
    second = await make_lb(IP_HASH, list(reversed(hosts(10))), seed=99)
    before = await mapping(first)
    assert await mapping(second) == before  # any instance, any add order: same ring
    await first.remove_backend("10.1.0.7:8080")
    after = await mapping(first)
    assert all(after[c] == before[c] for c in CLIENTS if before[c] != "10.1.0.7:8080")
    assert "10.1.0.7:8080" not in after.values()
