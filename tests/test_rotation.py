"""The rotation behind ROUND_ROBIN and the weight classes, against a plain model of a circle."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from load_balancing_module import BackendConfig, HealthCheckConfig, LoadBalancingModule, LoadBalancingModuleConfig
from load_balancing_module.algorithms._place import claim
from load_balancing_module.algorithms._rotation import Rotation
from load_balancing_module.backend import Backend

POOL = 150  # more than four bitmap words, so the summary words are used


def _backends(n: int) -> list[Backend]:
    async def build() -> list[Backend]:
        lb = LoadBalancingModule(LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False)))
        for i in range(n):
            await lb.add_backend(BackendConfig(host="127.0.0.1", port=20_000 + i))
        return list(lb.backends.values())

    return asyncio.run(build())


BACKENDS = _backends(POOL)


class Circle:
    """The model: places in order, each a member (with its rank, None = not a candidate) or a hole."""

    def __init__(self) -> None:
        self.places: list[int | None] = []  # member number at each place
        self.rank: dict[int, int | None] = {}
        self.last = -1

    def pick(self, healthy_only: bool) -> int | None:
        want = 0 if healthy_only or 0 in self.rank.values() else 1
        order = list(range(self.last + 1, len(self.places))) + list(range(self.last + 1))
        for place in order:
            member = self.places[place]
            if member is not None and self.rank[member] == want:
                self.last = place
                return member
        return None


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "set", "discard", "pick", "pick_healthy"]),
        st.integers(0, POOL - 1),
        st.sampled_from([0, 1, None]),
    ),
    max_size=400,
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(OPS)
def test_rotation_picks_as_a_circle_does(ops: list[tuple[str, int, int | None]]) -> None:
    rotation = Rotation()
    owner = object()
    nodes = [claim(b, owner) for b in BACKENDS]
    number = {id(node): i for i, node in enumerate(nodes)}
    model = Circle()
    for op, i, rank in ops:
        node = nodes[i]
        inside = i in model.rank
        if op == "add" and not inside:
            rotation.add(node, rank)
            model.places.append(i)
            model.rank[i] = rank
        elif op == "set" and inside:
            rotation.set(node, rank)
            model.rank[i] = rank
        elif op == "discard" and inside:
            rotation.discard(node)
            model.places[model.places.index(i)] = None
            del model.rank[i]
        elif op.startswith("pick"):
            healthy_only = op == "pick_healthy"
            picked = rotation.pick(healthy_only)
            assert (None if picked is None else number[id(picked)]) == model.pick(healthy_only)
        assert len(rotation) == len(model.rank)
        assert rotation.free == sum(1 for r in model.rank.values() if r is not None)
        assert rotation.healthy_free == sum(1 for r in model.rank.values() if r == 0)


def test_a_member_out_of_the_rotation_keeps_its_place() -> None:
    rotation = Rotation()
    nodes = [claim(b, rotation) for b in BACKENDS[:4]]
    for node in nodes:
        rotation.add(node, 0)
    picks = [rotation.pick(False) for _ in range(2)]
    assert picks == nodes[:2]
    rotation.set(nodes[2], None)  # full, say
    assert rotation.pick(False) is nodes[3]
    rotation.set(nodes[2], 0)  # back: served when the turn comes round, not at once
    assert [rotation.pick(False) for _ in range(4)] == [nodes[0], nodes[1], nodes[2], nodes[3]]


def test_degraded_members_only_when_no_healthy_one_is_free() -> None:
    rotation = Rotation()
    nodes = [claim(b, rotation) for b in BACKENDS[:3]]
    for node, rank in zip(nodes, [1, 0, 1], strict=True):
        rotation.add(node, rank)
    assert [rotation.pick(False) for _ in range(3)] == [nodes[1]] * 3
    rotation.set(nodes[1], None)
    assert [rotation.pick(False) for _ in range(3)] == [nodes[2], nodes[0], nodes[2]]
    assert rotation.pick(True) is None


def test_many_holes_are_compacted_without_losing_the_turn() -> None:
    rotation = Rotation()
    nodes = [claim(b, rotation) for b in BACKENDS]
    for node in nodes:
        rotation.add(node, 0)
    for _ in range(120):
        rotation.pick(False)
    for node in nodes[:100]:  # more than half leave: the places are renumbered
        rotation.discard(node)
    assert len(rotation) == 50
    assert [rotation.pick(False) for _ in range(3)] == nodes[120:123]
    assert max(n.lb_index for n in nodes[100:]) < 100  # renumbered (once, after 76 had left)
