"""The algorithm test suite.

``TestContract`` runs the routing rules every algorithm must keep (candidates,
priority tiers, DEGRADED fallback, capacity, removal, switching, churn) once
per algorithm. The per-algorithm tests below it assert exact sequences where
the algorithm is deterministic and a stated tolerance where it is random.

Everything goes through the public API with a fake clock and a seeded rng.
Backend ``"a"`` is ``a:8080`` and so on; requests come from distinct client
IPs (``ip(i)``) so that IP_HASH spreads them as the others do.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import MakeLB, Probes, config
from load_balancing_module import (
    AlgorithmError,
    BackendConfig,
    CircuitBreakerConfig,
    CircuitState,
    FakeClock,
    HealthState,
    LoadBalancingAlgorithm,
    LoadBalancingAlgorithmType,
    LoadBalancingModule,
    Request,
    RouteResult,
    WorkloadType,
)
from plugin_example import COST_AWARE

# Every built-in algorithm, and a plug-in (examples/cost_aware.py) registered under COST_AWARE.
ALL: list[Any] = [*LoadBalancingAlgorithmType, COST_AWARE]
RR = LoadBalancingAlgorithmType.ROUND_ROBIN
WEIGHTED = LoadBalancingAlgorithmType.WEIGHTED
LC = LoadBalancingAlgorithmType.LEAST_CONNECTIONS
LL = LoadBalancingAlgorithmType.LEAST_LATENCY
QA = LoadBalancingAlgorithmType.QUANTUM_AWARE
IP_HASH = LoadBalancingAlgorithmType.IP_HASH

LATENCY_MS = 5.0  # what a request reports unless the test says otherwise
_next_ip = itertools.count(1)


@pytest.fixture(autouse=True)
def _fresh_ips() -> None:
    """Every test sees the same client IPs, whichever tests ran before it."""
    global _next_ip
    _next_ip = itertools.count(1)


def ip(i: int | None = None) -> str:
    """A distinct client IP per call (or the IP number ``i``)."""
    i = next(_next_ip) if i is None else i
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def backend(name: str, **fields: Any) -> BackendConfig:
    return BackendConfig(host=name, port=8080, **fields)


def bid(name: str) -> str:
    return f"{name}:8080"


def name(result: RouteResult) -> str:
    return result.backend_id.removesuffix(":8080")


async def hold(lb: LoadBalancingModule, client: str | None = None, **request: Any) -> RouteResult:
    """Route one request and keep its connection slot."""
    return await lb.route_request(Request(client_ip=client or ip(), **request))


async def visit(
    lb: LoadBalancingModule, client: str | None = None, latency_ms: float = LATENCY_MS, **request: Any
) -> str:
    """Route one request and complete it at once; return the backend's name."""
    result = await hold(lb, client, **request)
    await lb.complete_request(result, success=True, latency_ms=latency_ms)
    return name(result)


async def visits(lb: LoadBalancingModule, n: int, **request: Any) -> list[str]:
    return [await visit(lb, **request) for _ in range(n)]


async def holds(lb: LoadBalancingModule, n: int, **request: Any) -> list[RouteResult]:
    return [await hold(lb, **request) for _ in range(n)]


async def complete_all(lb: LoadBalancingModule, results: list[RouteResult]) -> None:
    for r in results:
        await lb.complete_request(r, success=True, latency_ms=LATENCY_MS)


def in_flight(lb: LoadBalancingModule) -> dict[str, int]:
    return {b.id.removesuffix(":8080"): b.in_flight for b in lb.backends.values()}


async def mixed(lb: LoadBalancingModule, n: int) -> list[str]:
    """``n`` requests, every other one held (so load-aware algorithms spread), then all completed."""
    names, held = [], []
    for i in range(n):
        if i % 2:
            held.append(await hold(lb))
            names.append(name(held[-1]))
        else:
            names.append(await visit(lb))
    await complete_all(lb, held)
    return names


# --------------------------------------------------------------------------------------------------
# The contract every algorithm keeps
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALL, ids=str)
class TestContract:
    async def test_unhealthy_backend_is_never_picked(self, algorithm: Any, make_lb: MakeLB, probes: Probes) -> None:
        lb = await make_lb(algorithm, [backend("a"), backend("b"), backend("c")])
        await probes.set(lb, bid("c"), HealthState.UNHEALTHY)
        used = Counter(await mixed(lb, 60))
        assert set(used) == {"a", "b"}
        await probes.set(lb, bid("c"), HealthState.HEALTHY)
        assert "c" in await mixed(lb, 60)

    async def test_open_circuit_is_never_picked_and_half_open_admits_few(
        self, algorithm: Any, make_lb: MakeLB, fake_clock: FakeClock
    ) -> None:
        breaker = CircuitBreakerConfig(failure_threshold=2, success_threshold=1, timeout=30, half_open_max_calls=2)
        lb = await make_lb(algorithm, [backend("a"), backend("b"), backend("c")], circuit_breaker=breaker)
        a = lb.backends[bid("a")]
        for _ in range(200):  # requests that land on "a" fail, until its circuit opens
            result = await hold(lb)
            await lb.complete_request(result, success=name(result) != "a", latency_ms=LATENCY_MS)
            if a.circuit_state is CircuitState.OPEN:
                break
        assert a.circuit_state is CircuitState.OPEN
        assert "a" not in await mixed(lb, 60)

        await fake_clock.advance(31)
        held = await holds(lb, 30)
        assert a.circuit_state is CircuitState.HALF_OPEN
        assert 1 <= sum(name(r) == "a" for r in held) <= breaker.half_open_max_calls
        await complete_all(lb, held)
        assert a.circuit_state is CircuitState.CLOSED

    async def test_highest_priority_tier_first_lower_tier_is_failover(
        self, algorithm: Any, make_lb: MakeLB, probes: Probes
    ) -> None:
        lb = await make_lb(
            algorithm,
            [backend("c", priority=0), backend("a", priority=10), backend("b", priority=10), backend("d", priority=0)],
        )
        assert set(await mixed(lb, 40)) == {"a", "b"}
        await probes.set(lb, bid("a"), HealthState.UNHEALTHY)
        await probes.set(lb, bid("b"), HealthState.UNHEALTHY)
        assert set(await mixed(lb, 40)) == {"c", "d"}
        await probes.set(lb, bid("a"), HealthState.HEALTHY)
        assert set(await mixed(lb, 40)) == {"a"}

    async def test_degraded_only_when_no_healthy_candidate_left_in_tier(
        self, algorithm: Any, make_lb: MakeLB, probes: Probes
    ) -> None:
        lb = await make_lb(
            algorithm,
            [backend("a", priority=1), backend("b", priority=1), backend("c", priority=1), backend("d", priority=0)],
        )
        await probes.set(lb, bid("b"), HealthState.DEGRADED)
        assert set(await mixed(lb, 40)) == {"a", "c"}
        await probes.set(lb, bid("a"), HealthState.UNHEALTHY)
        await probes.set(lb, bid("c"), HealthState.UNHEALTHY)
        # A DEGRADED member of the top tier beats a HEALTHY one of a lower tier.
        assert set(await mixed(lb, 40)) == {"b"}
        await probes.set(lb, bid("a"), HealthState.HEALTHY)
        assert set(await mixed(lb, 40)) == {"a"}

    async def test_degraded_takes_over_when_healthy_members_are_full(
        self, algorithm: Any, make_lb: MakeLB, probes: Probes
    ) -> None:
        lb = await make_lb(algorithm, [backend("a", max_connections=3), backend("b"), backend("c", priority=-1)])
        await probes.set(lb, bid("b"), HealthState.DEGRADED)
        held = await holds(lb, 10)
        assert [name(r) for r in held] == ["a"] * 3 + ["b"] * 7
        await complete_all(lb, held)

    async def test_backend_at_max_connections_is_skipped(self, algorithm: Any, make_lb: MakeLB) -> None:
        lb = await make_lb(algorithm, [backend("a", max_connections=1), backend("b"), backend("c")])
        held = await holds(lb, 30)
        on_a = [r for r in held if name(r) == "a"]
        assert len(on_a) == 1
        assert set(map(name, held)) == {"a", "b", "c"}
        await lb.complete_request(on_a[0], success=True, latency_ms=LATENCY_MS)
        more = await holds(lb, 30)
        assert sum(name(r) == "a" for r in more) == 1
        await complete_all(lb, held + more)
        assert set(in_flight(lb).values()) == {0}

    async def test_removed_backend_is_never_picked(self, algorithm: Any, make_lb: MakeLB) -> None:
        lb = await make_lb(algorithm, [backend(n) for n in "abcd"])
        held = await holds(lb, 12)
        on_b = [r for r in held if name(r) == "b"]
        assert on_b
        await lb.remove_backend(bid("b"))
        assert "b" not in await mixed(lb, 60)
        await complete_all(lb, held)  # requests already on "b" complete without error
        distribution = await lb.get_load_distribution()
        assert set(distribution.backends) == {bid("a"), bid("c"), bid("d")}
        assert all(b["active_connections"] == 0 for b in distribution.backends.values())

    async def test_switching_algorithm_with_requests_in_flight(self, algorithm: Any, make_lb: MakeLB) -> None:
        source = ALL[(ALL.index(algorithm) + 1) % len(ALL)]
        lb = await make_lb(source, [backend(n, max_connections=2) for n in "abc"])
        before = await holds(lb, 3)
        await lb.configure_algorithm(LoadBalancingAlgorithm(algorithm_type=algorithm))
        after = await holds(lb, 3)
        assert {r.algorithm for r in after} == {algorithm}
        # The new algorithm sees the requests routed by the old one: every slot is used once.
        assert in_flight(lb) == {"a": 2, "b": 2, "c": 2}
        await complete_all(lb, before)
        assert set(await visits(lb, 30)) == {"a", "b", "c"}
        await complete_all(lb, after)
        assert set(in_flight(lb).values()) == {0}

    async def test_add_remove_churn(self, algorithm: Any, make_lb: MakeLB) -> None:
        rng = random.Random(42)
        lb = await make_lb(algorithm, [backend(n, max_connections=3) for n in "abc"])
        names = itertools.count()
        held: list[RouteResult] = []
        for _ in range(300):
            op = rng.random()
            live = list(lb.backends.values())
            if op < 0.08:
                await lb.add_backend(backend(f"n{next(names)}", max_connections=3))
            elif op < 0.14 and len(live) > 1:
                await lb.remove_backend(rng.choice(live).id)
            elif op < 0.5 and held:
                await lb.complete_request(held.pop(rng.randrange(len(held))), success=True, latency_ms=LATENCY_MS)
            elif any(b.in_flight < b.config.max_connections for b in live):
                result = await hold(lb)
                picked = lb.backends.get(result.backend_id)
                assert picked is not None, "picked a removed backend"
                assert picked.in_flight <= picked.config.max_connections
                held.append(result)
            # The router's per-tier counts of free members agree with the members themselves.
            for tier in lb.router.tiers:
                free = [b for b in tier.members if b.in_flight < b.config.max_connections]
                assert sum(tier.free) == len(free)
                assert tier.in_flight == sum(b.in_flight for b in tier.members)
        await complete_all(lb, held)
        live_names = {n.removesuffix(":8080") for n in lb.backends}
        assert set(await visits(lb, 20 * len(live_names))) == live_names


# --------------------------------------------------------------------------------------------------
# Configuration errors (every algorithm)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "bad"),
    [
        (LC, {"choice_count": 1}),
        (LC, {"choice_count": -1}),
        (LC, {"choice_count": "x"}),
        (LC, {"choice_count": 2.5}),
        (LC, {"choice_count": True}),
        (LL, {"decay_seconds": 0}),
        (LL, {"decay_seconds": "10"}),
        (LL, {"choice_count": 1}),
        (LL, {"choice_count": -2}),
        (QA, {"latency_scale_ms": -1}),
        (QA, {"choice_count": 1}),
        (IP_HASH, {"balance_factor": 1}),
        (IP_HASH, {"balance_factor": 0.5}),
        (IP_HASH, {"balance_factor": "x"}),
        (IP_HASH, {"key": "header"}),
        (IP_HASH, {"points": 0}),
        (IP_HASH, {"points": 1.5}),
        (IP_HASH, {"points": 10_001}),  # a huge ring would cost memory and build time on every change
        (RR, {"typo": 1}),
        (WEIGHTED, {"weights": [1, 2]}),
        (IP_HASH, {"balance_factr": 1.5}),
    ],
)
async def test_bad_algorithm_config_raises_and_changes_nothing(
    algorithm: LoadBalancingAlgorithmType, bad: dict[str, Any], make_lb: MakeLB
) -> None:
    with pytest.raises(AlgorithmError, match=next(iter(bad))):
        LoadBalancingModule(config(algorithm, bad))
    lb = await make_lb(RR, [backend("a"), backend("b")])
    with pytest.raises(AlgorithmError, match=next(iter(bad))):
        await lb.configure_algorithm({"algorithm_type": algorithm, "config": bad})
    assert lb.router.factory.kind is RR
    assert await visits(lb, 4) == ["a", "b", "a", "b"]


async def test_unsupported_algorithm_type_raises(make_lb: MakeLB) -> None:
    lb = await make_lb(RR, [backend("a")])
    with pytest.raises(AlgorithmError):
        await lb.configure_algorithm("fastest_guess")
    assert await visit(lb) == "a"


async def test_configure_algorithm_accepts_names_and_dicts(make_lb: MakeLB) -> None:
    lb = await make_lb(RR, [backend("a"), backend("b")])
    await lb.configure_algorithm("least_connections")
    assert lb.router.factory.kind is LC
    await lb.configure_algorithm({"algorithm_type": "ip_hash", "config": {"key": "session_id"}})
    assert lb.router.factory.kind is IP_HASH
    assert (await hold(lb)).algorithm is IP_HASH


# --------------------------------------------------------------------------------------------------
# ROUND_ROBIN
# --------------------------------------------------------------------------------------------------


async def test_round_robin_exact_circular_order(make_lb: MakeLB) -> None:
    lb = await make_lb(RR, [backend(n) for n in "abcd"])
    assert await visits(lb, 12) == list("abcd" * 3)


async def test_round_robin_ignores_load_and_weight(make_lb: MakeLB) -> None:
    lb = await make_lb(RR, [backend("a", weight=5), backend("b"), backend("c")])
    held = await holds(lb, 9)
    assert [name(r) for r in held] == list("abc" * 3)


def is_rotation(seq: list[str], members: str) -> bool:
    """``seq`` repeats one fixed order of all ``members``, one each per round."""
    n = len(members)
    first = seq[:n]
    return sorted(first) == sorted(members) and all(seq[i] == first[i % n] for i in range(len(seq)))


async def test_round_robin_skips_unhealthy_and_takes_back_returning_member(make_lb: MakeLB, probes: Probes) -> None:
    lb = await make_lb(RR, [backend(n) for n in "abc"])
    assert await visits(lb, 3) == list("abc")
    await probes.set(lb, bid("b"), HealthState.UNHEALTHY)
    assert is_rotation(await visits(lb, 6), "ac")
    await probes.set(lb, bid("b"), HealthState.HEALTHY)
    assert is_rotation(await visits(lb, 9), "abc")


async def test_round_robin_new_member_joins_the_rotation(make_lb: MakeLB) -> None:
    lb = await make_lb(RR, [backend(n) for n in "abc"])
    assert await visits(lb, 2) == ["a", "b"]
    await lb.add_backend(backend("d"))
    # "c" still gets its turn in this round, the newcomer joins it; then a steady rotation.
    seq = await visits(lb, 12)
    assert seq[0] == "c"
    assert is_rotation(seq, "abcd")


async def test_round_robin_keeps_the_turn_when_a_member_leaves(make_lb: MakeLB) -> None:
    lb = await make_lb(RR, [backend(n) for n in "abcde"])
    assert await visits(lb, 3) == ["a", "b", "c"]
    await lb.remove_backend(bid("a"))  # before the last pick: the places after it move back one
    assert await visits(lb, 4) == ["d", "e", "b", "c"]
    await lb.remove_backend(bid("c"))  # the member picked last
    assert await visits(lb, 3) == ["d", "e", "b"]


# --------------------------------------------------------------------------------------------------
# WEIGHTED (smooth weighted round robin)
# --------------------------------------------------------------------------------------------------


async def test_weighted_nginx_sequence(make_lb: MakeLB) -> None:
    lb = await make_lb(WEIGHTED, [backend("a", weight=5), backend("b"), backend("c")])
    assert await visits(lb, 14) == list("aabacaa") * 2


async def test_weighted_float_weights_exact_per_cycle(make_lb: MakeLB) -> None:
    lb = await make_lb(WEIGHTED, [backend("a", weight=0.5), backend("b", weight=1.5), backend("c", weight=2.0)])
    for _ in range(5):  # a cycle is 8 picks (total weight 4 -> 1 : 3 : 4)
        assert Counter(await visits(lb, 8)) == {"a": 1, "b": 3, "c": 4}


async def test_weighted_skips_full_member_without_a_burst_later(make_lb: MakeLB) -> None:
    lb = await make_lb(WEIGHTED, [backend("a", weight=2, max_connections=1), backend("b", weight=2)])
    held = [await hold(lb)]
    assert name(held[0]) == "a"
    held += await holds(lb, 5)  # "a" is full: everything goes to "b"
    assert [name(r) for r in held[1:]] == ["b"] * 5
    await complete_all(lb, held)
    # Back in rotation, "a" does not get a burst to catch up.
    seq = await visits(lb, 8)
    assert Counter(seq) == {"a": 4, "b": 4}
    assert "aaa" not in "".join(seq)


def max_prefix_error(seq: list[str], weights: dict[str, float]) -> float:
    """The largest gap, over every prefix, between a member's picks and its exact share."""
    total = sum(weights.values())
    counts: Counter[str] = Counter()
    worst = 0.0
    for m, picked in enumerate(seq, 1):
        counts[picked] += 1
        worst = max(worst, *(abs(counts[n] - m * w / total) for n, w in weights.items()))
    return worst


def longest_run(seq: list[str]) -> int:
    return max(len(list(group)) for _, group in itertools.groupby(seq))


async def test_weighted_large_tier_exact_proportions_per_cycle(make_lb: MakeLB) -> None:
    # 36 members: past the small-tier limit, so the EDF schedule is used.
    weights = {f"m{i}": (5, 1, 1)[i % 3] for i in range(36)}
    lb = await make_lb(WEIGHTED, [backend(n, weight=w) for n, w in weights.items()])
    cycle = sum(weights.values())
    for _ in range(3):
        assert Counter(await visits(lb, cycle)) == weights


async def test_weighted_large_tier_interleaves(make_lb: MakeLB) -> None:
    # One heavy member among 32 light ones: half of all picks, spread out,
    # never 16 in a row (which a shared start phase gave).
    weights = {"heavy": 32.0, **{f"m{i}": 1.0 for i in range(32)}}
    lb = await make_lb(WEIGHTED, [backend(n, weight=w) for n, w in weights.items()])
    seq = await visits(lb, 128)
    assert Counter(seq)["heavy"] == 64
    assert all(Counter(seq)[n] == 2 for n in weights if n != "heavy")
    assert longest_run(seq) <= 3
    assert max_prefix_error(seq, weights) < 2


async def test_weighted_large_tier_schedules_weight_classes_or_members(make_lb: MakeLB) -> None:
    # Few distinct weights: weight classes. More than 16: the per-member EDF schedule.
    few = {f"m{i}": (5, 1, 1)[i % 3] for i in range(36)}
    lb = await make_lb(WEIGHTED, [backend(n, weight=w) for n, w in few.items()])
    await visits(lb, 1)
    assert lb.router.tiers[0].algorithm._classes is not None  # type: ignore[attr-defined]
    many = {f"m{i}": float(i + 1) for i in range(40)}
    lb = await make_lb(WEIGHTED, [backend(n, weight=w) for n, w in many.items()])
    cycle = int(sum(many.values()))
    seq = await visits(lb, 2 * cycle)
    assert lb.router.tiers[0].algorithm._classes is None  # type: ignore[attr-defined]
    assert Counter(seq[:cycle]) == many and Counter(seq[cycle:]) == many
    assert max_prefix_error(seq, many) < 2


async def test_weighted_switches_to_member_schedule_when_weights_diverge(make_lb: MakeLB) -> None:
    # Effective weights change at run time (slow start does this): past 16 classes the
    # algorithm moves to the per-member schedule, with the new proportions.
    names = [f"m{i}" for i in range(34)]
    lb = await make_lb(WEIGHTED, [backend(n) for n in names])
    await visits(lb, 34)
    algorithm = lb.router.tiers[0].algorithm
    assert algorithm._classes is not None  # type: ignore[attr-defined]
    weights = {n: float(i % 17 + 1) for i, n in enumerate(names)}
    for n, w in weights.items():
        b = lb.backends[bid(n)]
        b.effective_weight = w
        lb.router.refresh(b)
    assert algorithm._classes is None  # type: ignore[attr-defined]
    cycle = int(sum(weights.values()))
    await visits(lb, cycle)  # members whose weight changed after the switch settle in
    counts = Counter(await visits(lb, 2 * cycle))
    assert all(abs(counts[n] - 2 * w) <= 1 for n, w in weights.items())


async def test_weighted_classes_drop_a_weight_nobody_has_any_more(make_lb: MakeLB) -> None:
    # One member ramping through many weights (slow start) leaves no empty classes behind,
    # so the tier keeps its weight classes, with the final proportions.
    names = [f"m{i}" for i in range(40)]
    lb = await make_lb(WEIGHTED, [backend(n) for n in names])
    await visits(lb, 40)
    algorithm = lb.router.tiers[0].algorithm
    ramping = lb.backends[bid("m0")]
    for step in range(1, 21):
        ramping.effective_weight = step / 20 * 3.0
        lb.router.refresh(ramping)
    assert algorithm._classes is not None  # type: ignore[attr-defined]
    counts = Counter(await visits(lb, 2 * 42))
    assert counts["m0"] == 6 and all(counts[n] == 2 for n in names[1:])


async def test_weighted_small_tier_prefix_error_is_below_two(make_lb: MakeLB) -> None:
    weights = {"a": 20.0, "b": 1.0, "c": 1.0, "d": 7.0}
    lb = await make_lb(WEIGHTED, [backend(n, weight=w) for n, w in weights.items()])
    seq = await visits(lb, 58)
    assert Counter(seq) == {n: 2 * w for n, w in weights.items()}
    assert max_prefix_error(seq, weights) < 2


def check_smooth_weighted(weights: list[int]) -> None:
    """Two cycles: exact proportions in each, and every prefix close to its exact share."""

    async def run() -> list[str]:
        lb = LoadBalancingModule(config(WEIGHTED), clock=FakeClock(), rng=random.Random(0))
        for i, w in enumerate(weights):
            await lb.add_backend(backend(f"m{i}", weight=w))
        return await visits(lb, 2 * sum(weights))

    seq = asyncio.run(run())
    table = {f"m{i}": float(w) for i, w in enumerate(weights)}
    cycle = sum(weights)
    for part in (seq[:cycle], seq[cycle:]):
        assert Counter(part) == table
    # Smooth: every prefix stays within two picks of the exact share (bursts would not).
    assert max_prefix_error(seq, table) < 2


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=32))
def test_weighted_smooth_for_any_integer_weights_small_tier(weights: list[int]) -> None:
    check_smooth_weighted(weights)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(st.lists(st.integers(min_value=1, max_value=9), min_size=33, max_size=60))
def test_weighted_smooth_for_any_integer_weights_large_tier(weights: list[int]) -> None:
    check_smooth_weighted(weights)


# --------------------------------------------------------------------------------------------------
# LEAST_CONNECTIONS
# --------------------------------------------------------------------------------------------------


async def test_least_connections_fewest_in_flight_per_unit_weight(make_lb: MakeLB) -> None:
    lb = await make_lb(LC, [backend("a", weight=2), backend("b"), backend("c")])
    held = await holds(lb, 8)
    assert in_flight(lb) == {"a": 4, "b": 2, "c": 2}
    # Free two slots on "b": the next two requests fill exactly those.
    on_b = [r for r in held if name(r) == "b"]
    await complete_all(lb, on_b)
    assert [name(r) for r in await holds(lb, 2)] == ["b", "b"]


async def test_least_connections_ties_rotate(make_lb: MakeLB) -> None:
    lb = await make_lb(LC, [backend(n) for n in "abc"])
    seq = await visits(lb, 9)
    assert Counter(seq) == {"a": 3, "b": 3, "c": 3}
    assert is_rotation(seq, "abc")


async def test_least_connections_power_of_two_choices(make_lb: MakeLB) -> None:
    names = [f"m{i}" for i in range(10)]
    lb = await make_lb(LC, [backend(n) for n in names], algorithm_config={"choice_count": 2}, seed=7)
    held = await holds(lb, 200)
    loads = in_flight(lb)
    # Two random choices keep every load within a few requests of the mean (20).
    assert max(loads.values()) - min(loads.values()) <= 4
    # ...and it is random: not the exact minimum's rotation.
    assert [name(r) for r in held[:10]] != names
    await complete_all(lb, held)


async def test_least_connections_power_of_two_skips_non_candidates(make_lb: MakeLB, probes: Probes) -> None:
    names = [f"m{i}" for i in range(6)]
    lb = await make_lb(LC, [backend(n, max_connections=2) for n in names], algorithm_config={"choice_count": 3})
    for n in names[:4]:
        await probes.set(lb, bid(n), HealthState.UNHEALTHY)
    held = await holds(lb, 4)
    assert sorted(name(r) for r in held) == ["m4", "m4", "m5", "m5"]


# --------------------------------------------------------------------------------------------------
# LEAST_LATENCY (peak EWMA x in-flight)
# --------------------------------------------------------------------------------------------------


async def test_least_latency_slow_sample_counts_at_once(make_lb: MakeLB) -> None:
    lb = await make_lb(LL, [backend("a"), backend("b")])
    for _ in range(4):
        await visit(lb, latency_ms=10)
    assert set(await visits(lb, 4)) == {"a", "b"}  # equal latency: shared
    for _ in range(10):  # one slow answer from "a"
        result = await hold(lb)
        if name(result) == "a":
            await lb.complete_request(result, success=True, latency_ms=500)
            break
        await lb.complete_request(result, success=True, latency_ms=10)
    assert set(await visits(lb, 20, latency_ms=10)) == {"b"}


@pytest.mark.parametrize(("decay_seconds", "back_after"), [(1.0, (3, 6)), (4.0, (12, 24))])
async def test_least_latency_slow_backend_is_retried_after_decay(
    decay_seconds: float, back_after: tuple[int, int], make_lb: MakeLB, fake_clock: FakeClock
) -> None:
    lb = await make_lb(LL, [backend("a"), backend("b")], algorithm_config={"decay_seconds": decay_seconds})
    assert await visit(lb, latency_ms=500) == "a"
    assert await visit(lb, latency_ms=10) == "b"
    # Costs decay toward zero between samples; "b" keeps reporting 10 ms, so the
    # 500 ms of "a" falls below it after about ln(50) = 3.9 time constants.
    second = 0
    while second < 40:
        second += 1
        await fake_clock.advance(1)
        if await visit(lb, latency_ms=10) == "a":
            break
    lo, hi = back_after
    assert lo <= second <= hi


async def test_least_latency_fast_answer_never_makes_a_backend_look_slower(
    make_lb: MakeLB, fake_clock: FakeClock
) -> None:
    lb = await make_lb(LL, [backend("a"), backend("b")], algorithm_config={"decay_seconds": 1.0})
    assert await visit(lb, latency_ms=1000) == "a"
    assert await visit(lb, latency_ms=300) == "b"
    # "b" keeps answering in 300 ms while the 1,000 ms of "a" decays, until "a" costs less.
    for _ in range(500):
        await fake_clock.advance(0.01)
        result = await hold(lb)
        if name(result) == "a":
            break
        await lb.complete_request(result, success=True, latency_ms=300)
    assert name(result) == "a"
    # "a" answers in 10 ms: that can only make it cheaper, so it is still the pick.
    await lb.complete_request(result, success=True, latency_ms=10)
    assert await visit(lb, latency_ms=10) == "a"


async def test_least_latency_spreads_by_in_flight(make_lb: MakeLB) -> None:
    lb = await make_lb(LL, [backend("fast"), backend("slow")])
    await visit(lb, latency_ms=10)
    await visit(lb, latency_ms=20)
    assert set(await visits(lb, 5, latency_ms=10)) == {"fast"}  # idle: the fastest takes all
    held = await holds(lb, 30)
    loads = in_flight(lb)
    # cost = latency x (in_flight + 1): about 2 : 1, never all on the fastest.
    assert abs(loads["fast"] - (2 * loads["slow"] + 1)) <= 1
    await complete_all(lb, held)


async def test_least_latency_weight_divides_cost(make_lb: MakeLB) -> None:
    lb = await make_lb(LL, [backend("a", weight=3), backend("b")])
    await visit(lb, latency_ms=10)
    await visit(lb, latency_ms=10)
    held = await holds(lb, 40)
    loads = in_flight(lb)
    assert 2.4 <= loads["a"] / loads["b"] <= 3.6
    await complete_all(lb, held)


async def test_least_latency_tries_backend_without_data_but_does_not_flood_it(make_lb: MakeLB) -> None:
    lb = await make_lb(LL, [backend("a"), backend("b")])
    await visits(lb, 6, latency_ms=10)
    await lb.add_backend(backend("new"))
    first = await hold(lb)
    assert name(first) == "new"  # no data yet: tried at once
    more = await holds(lb, 6)  # its first request is still running: no more until it reports
    assert "new" not in map(name, more)
    await complete_all(lb, [first, *more])


@pytest.mark.parametrize(
    ("members", "configured", "choices"), [(64, None, 0), (1000, None, 0), (200, 0, 0), (3, 2, 2), (100, 3, 3)]
)
async def test_least_latency_is_exact_unless_choice_count_asks_to_sample(
    make_lb: MakeLB, members: int, configured: int | None, choices: int
) -> None:
    names = [f"m{i}" for i in range(members)]
    algorithm_config = {} if configured is None else {"choice_count": configured}
    lb = await make_lb(LL, [backend(n) for n in names], algorithm_config=algorithm_config, seed=3)
    await visit(lb)  # builds the tier
    algorithm = lb.router.tiers[0].algorithm
    assert algorithm._choices == choices  # type: ignore[attr-defined]


async def test_least_latency_power_of_two_prefers_fast_members_and_tries_new_ones(make_lb: MakeLB) -> None:
    names = [f"m{i}" for i in range(100)]
    lb = await make_lb(LL, [backend(n) for n in names], algorithm_config={"choice_count": 2}, seed=5)
    counts: dict[str, int] = {}
    for _ in range(3000):  # the first ten members answer in 5 ms, the others in 50 ms
        result = await hold(lb)
        counts[name(result)] = counts.get(name(result), 0) + 1
        latency = 5.0 if name(result) in names[:10] else 50.0
        await lb.complete_request(result, success=True, latency_ms=latency)
    # A member without data costs nothing, so it wins as soon as it is drawn: all were tried.
    assert len(counts) == 100
    # A fast member wins every pair it is drawn into: about 19% of requests, twice its 10%.
    fast = sum(counts[n] for n in names[:10])
    assert 0.15 <= fast / 3000 <= 0.25


# --------------------------------------------------------------------------------------------------
# QUANTUM_AWARE
# --------------------------------------------------------------------------------------------------

QUANTUM_TYPES = [t for t in WorkloadType if t is not WorkloadType.CLASSICAL]


async def test_quantum_aware_samples_when_asked_and_keeps_the_class_rules(make_lb: MakeLB) -> None:
    # 100 members, 20 quantum-capable; choice_count 2: two random members of the class are compared.
    names = [f"m{i}" for i in range(100)]
    lb = await make_lb(
        QA,
        [backend(n, quantum_capable=i % 5 == 0) for i, n in enumerate(names)],
        algorithm_config={"choice_count": 2},
        seed=4,
    )
    quantum = {n for i, n in enumerate(names) if i % 5 == 0}
    held = [await hold(lb, workload_type=WorkloadType.QUANTUM_ML) for _ in range(40)]
    assert lb.router.tiers[0].algorithm._choices == 2  # type: ignore[attr-defined]
    assert {name(r) for r in held} <= quantum
    assert max(in_flight(lb).values()) <= 4  # two choices spread the load
    classical = [await hold(lb) for _ in range(40)]
    assert not {name(r) for r in classical} & quantum
    await complete_all(lb, held + classical)


@pytest.mark.parametrize("workload", QUANTUM_TYPES, ids=str)
async def test_quantum_workload_goes_only_to_quantum_backends_across_tiers(
    workload: WorkloadType, make_lb: MakeLB
) -> None:
    lb = await make_lb(
        QA,
        [
            backend("c1", priority=5),
            backend("c2", priority=5),
            backend("q1", priority=0, quantum_capable=True),
            backend("q2", priority=0, quantum_capable=True),
        ],
    )
    held = await holds(lb, 20, workload_type=workload)  # held: load does not tempt it away
    assert set(map(name, held)) == {"q1", "q2"}
    assert set(await mixed(lb, 20)) == {"c1", "c2"}  # classical: top tier as usual
    await complete_all(lb, held)


async def test_quantum_workload_falls_back_when_no_quantum_candidate(make_lb: MakeLB, probes: Probes) -> None:
    lb = await make_lb(QA, [backend("c"), backend("q", quantum_capable=True)])
    await probes.set(lb, bid("q"), HealthState.UNHEALTHY)
    assert await visit(lb, workload_type=WorkloadType.QUANTUM_ML) == "c"


async def test_classical_workload_avoids_quantum_backends_until_no_classical_left(make_lb: MakeLB) -> None:
    lb = await make_lb(
        QA,
        [
            backend("c", max_connections=5),
            backend("q", quantum_capable=True),
            backend("c-low", priority=-1, max_connections=2),
        ],
    )
    held = await holds(lb, 10)
    # Classical members first, in any tier; the quantum one only when none is left.
    assert [name(r) for r in held] == ["c"] * 5 + ["c-low"] * 2 + ["q"] * 3
    await complete_all(lb, held)


async def test_quantum_aware_score_prefers_low_latency(make_lb: MakeLB) -> None:
    lb = await make_lb(QA, [backend("a"), backend("b")])
    await visit(lb, latency_ms=10)
    await visit(lb, latency_ms=200)
    assert set(await visits(lb, 10, latency_ms=10)) == {"a"}


def greedy(n: int, score: dict[str, Any]) -> Counter[str]:
    """In-flight counts after ``n`` picks that each take the lowest ``score[name](in_flight)``."""
    loads: Counter[str] = Counter({k: 0 for k in score})
    for _ in range(n):
        loads[min(score, key=lambda k: score[k](loads[k]))] += 1
    return loads


async def test_quantum_aware_score_weighs_load_latency_and_weight(make_lb: MakeLB) -> None:
    lb = await make_lb(QA, [backend("a", weight=2), backend("b"), backend("c")])
    held: list[RouteResult] = []
    while len({name(r) for r in held}) < 3:  # a first request on each (none has latency data yet)
        held.append(await hold(lb))
        assert len(held) < 10
    for r in held:
        await lb.complete_request(r, success=True, latency_ms=100 if name(r) == "c" else 0)
    # score = (in_flight + 1) / weight * (1 + latency_ms / 100)
    expected = greedy(40, {"a": lambda n: (n + 1) / 2, "b": lambda n: n + 1, "c": lambda n: (n + 1) * 2})
    held = await holds(lb, 40)
    loads = in_flight(lb)
    assert all(abs(loads[k] - expected[k]) <= 1 for k in "abc"), (loads, expected)
    assert loads["a"] > loads["b"] > loads["c"] > 0
    await complete_all(lb, held)


async def test_quantum_aware_ties_rotate(make_lb: MakeLB) -> None:
    lb = await make_lb(QA, [backend(n, quantum_capable=True) for n in "abc"])
    seq = await visits(lb, 9, workload_type=WorkloadType.HYBRID, latency_ms=0)
    assert Counter(seq) == {"a": 3, "b": 3, "c": 3}


# --------------------------------------------------------------------------------------------------
# IP_HASH
# --------------------------------------------------------------------------------------------------


async def test_ip_hash_same_client_same_backend(make_lb: MakeLB) -> None:
    lb = await make_lb(IP_HASH, [backend(n) for n in "abcde"])
    clients = [ip(i) for i in range(200)]
    first = {c: await visit(lb, c) for c in clients}
    assert len(set(first.values())) == 5
    held = [await hold(lb, c) for c in clients]  # load does not move anyone without balance_factor
    assert {c: name(r) for c, r in zip(clients, held, strict=True)} == first
    await complete_all(lb, held)


async def test_ip_hash_normalises_the_address(make_lb: MakeLB) -> None:
    lb = await make_lb(IP_HASH, [backend(n) for n in "abcde"])
    answers = {await visit(lb, c) for c in ["2001:db8::1", "2001:0db8:0000::0001", " 2001:DB8::1 "]}
    assert len(answers) == 1


async def test_ip_hash_session_id_key(make_lb: MakeLB) -> None:
    lb = await make_lb(IP_HASH, [backend(n) for n in "abcde"], algorithm_config={"key": "session_id"})
    for s in range(20):
        assert len({await visit(lb, ip(), session_id=f"s{s}") for _ in range(10)}) == 1
    # Without a session id, the client IP is the key.
    assert len({await visit(lb, ip(7)) for _ in range(10)}) == 1
    assert len({await visit(lb, ip(i)) for i in range(100)}) == 5


async def test_ip_hash_client_key_ignores_session(make_lb: MakeLB) -> None:
    lb = await make_lb(IP_HASH, [backend(n) for n in "abcde"])
    assert len({await visit(lb, ip(3), session_id=f"s{s}") for s in range(20)}) == 1


@pytest.mark.parametrize("factor", [1.25, 1.5, 2.0])
async def test_ip_hash_balance_factor_bounds_loads(factor: float, make_lb: MakeLB) -> None:
    lb = await make_lb(IP_HASH, [backend(n) for n in "abcde"], algorithm_config={"balance_factor": factor})
    clients = [ip(i) for i in range(3)]  # a few busy clients: unbounded, they would pile up
    held = []
    for k in range(150):
        held.append(await hold(lb, clients[k % 3]))
        mean = sum(in_flight(lb).values()) / 5
        assert max(in_flight(lb).values()) <= factor * mean + 1
    # Unbounded, three clients use at most three members.
    assert sum(1 for v in in_flight(lb).values() if v) >= 4
    await complete_all(lb, held)


async def test_ip_hash_without_balance_factor_piles_up(make_lb: MakeLB) -> None:
    lb = await make_lb(IP_HASH, [backend(n) for n in "abcde"])
    held = [await hold(lb, ip(k % 3)) for k in range(150)]
    assert sum(1 for v in in_flight(lb).values() if v) <= 3
    await complete_all(lb, held)


async def test_ip_hash_balance_factor_keeps_clients_home_when_not_busy(make_lb: MakeLB) -> None:
    lb = await make_lb(IP_HASH, [backend(n) for n in "abcde"], algorithm_config={"balance_factor": 1.25})
    plain = await make_lb(IP_HASH, [backend(n) for n in "abcde"])
    for i in range(100):
        assert await visit(lb, ip(i)) == await visit(plain, ip(i))


async def test_ip_hash_balance_factor_honours_weight(make_lb: MakeLB) -> None:
    lb = await make_lb(
        IP_HASH, [backend("big", weight=3), *(backend(n) for n in "abcd")], algorithm_config={"balance_factor": 1.25}
    )
    held = [await hold(lb) for _ in range(140)]
    loads = in_flight(lb)
    # "big" holds 3 of the 7 weight units: about 60 of 140, and no member is far above its share.
    assert loads["big"] >= 50
    for n, w in {"big": 3, "a": 1, "b": 1, "c": 1, "d": 1}.items():
        assert loads[n] <= math.ceil(1.25 * 140 * w / 7) + 1
    await complete_all(lb, held)


async def test_ip_hash_full_backend_sends_clients_to_next_on_ring(make_lb: MakeLB) -> None:
    lb = await make_lb(IP_HASH, [backend(n, max_connections=1) for n in "abc"])
    client = ip(11)
    first = await hold(lb, client)
    second = await hold(lb, client)
    assert name(second) != name(first)
    await lb.complete_request(first, success=True, latency_ms=LATENCY_MS)
    assert await visit(lb, client) == name(first)
    await complete_all(lb, [second])
