"""Smooth weighted round robin for large tiers with few distinct weights.

Members are grouped by effective weight. Within a class they take turns in
strict rotation (as ROUND_ROBIN); the classes themselves are scheduled
earliest-deadline-first, each due every ``1 / (weight x free members)`` units
of virtual time, so every member gets its exact share. A pick is an O(k) scan
of the k classes plus an O(log n) rotation with integer keys, which keeps the
heap sift short and cache-friendly; used while k <= ``MAX_CLASSES``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, cast

from ..backend import HEALTHY_RANK, Backend
from ._heap import new_heap, node_of

MAX_CLASSES: Final = 16


class _Class:
    __slots__ = ("weight", "rotation", "free", "healthy_free", "deadline")

    def __init__(self, weight: float, vtime: float) -> None:
        self.weight = weight
        self.rotation = new_heap()
        self.free = 0
        self.healthy_free = 0
        self.deadline = vtime


class WeightClasses:
    """The classes of one tier. A member's heap node holds its turn (``key``) and class (``group``)."""

    def __init__(self) -> None:
        self._classes: dict[float, _Class] = {}
        self._turns = 0.0  # the latest turn handed out
        self._vtime = 0.0

    @property
    def overflowing(self) -> bool:
        return len(self._classes) > MAX_CLASSES

    def rebuild(self, members: Iterable[Backend]) -> None:
        self._classes.clear()
        for b in members:
            node = b.lb_node
            if node is None or node.owner is not self:  # a newcomer: its turn is after everyone's
                self._turns += 1.0
                node = node_of(b, self)
                node.key = self._turns
            node.group = None
            self.update(b)

    def update(self, backend: Backend) -> None:
        node = backend.lb_node
        if node is None or node.owner is not self:
            return
        rank = backend.rank
        weight = backend.effective_weight
        placed = cast("_Class | None", node.group)
        if placed is not None:
            counted = node.rank if node in placed.rotation else None
            if placed.weight == weight and counted == rank:
                return
            self._count(placed, counted, -1)
            if placed.weight != weight:
                placed.rotation.discard(node)
        target = self._classes.get(weight)
        if target is None:
            target = self._classes[weight] = _Class(weight, self._vtime)
        self._count(target, rank, 1)
        node.group = target
        target.rotation.set(node, rank, node.key)

    @staticmethod
    def _count(cls: _Class, rank: int | None, sign: int) -> None:
        if rank is not None:
            cls.free += sign
            if rank == HEALTHY_RANK:
                cls.healthy_free += sign

    def pick(self, healthy_only: bool) -> Backend | None:
        best: _Class | None = None
        due = 0.0  # best's deadline
        for cls in self._classes.values():
            if (cls.healthy_free if healthy_only else cls.free) and (best is None or cls.deadline < due):
                best, due = cls, cls.deadline
        if best is None:
            return None
        node = best.rotation.top()
        if node is None:
            return None
        if due > self._vtime:  # a class that sat idle resumes now, without a burst to catch up
            self._vtime = due
        free = best.healthy_free if healthy_only else best.free
        best.deadline = self._vtime + 1.0 / (best.weight * free)
        turn = self._turns = self._turns + 1.0
        best.rotation.set(node, node.rank, turn)
        return node.backend
