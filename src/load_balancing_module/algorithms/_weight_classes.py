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
from itertools import count

from ..backend import HEALTHY_RANK, Backend
from ._heap import RankedHeap

MAX_CLASSES = 16


class _Class:
    __slots__ = ("weight", "rotation", "free", "healthy_free", "deadline")

    def __init__(self, weight: float, vtime: float) -> None:
        self.weight = weight
        self.rotation = RankedHeap()
        self.free = 0
        self.healthy_free = 0
        self.deadline = vtime


class WeightClasses:
    def __init__(self) -> None:
        self._classes: dict[float, _Class] = {}
        self._placed: dict[Backend, tuple[_Class, int | None]] = {}  # class and the rank counted there
        self._turn: dict[Backend, int] = {}
        self._turns = count()
        self._vtime = 0.0

    @property
    def overflowing(self) -> bool:
        return len(self._classes) > MAX_CLASSES

    def rebuild(self, members: Iterable[Backend]) -> None:
        old_turns = self._turn
        self._classes.clear()
        self._placed.clear()
        self._turn = {}
        for b in members:
            self._turn[b] = old_turns[b] if b in old_turns else next(self._turns)
            self.update(b)

    def update(self, backend: Backend) -> None:
        if backend not in self._turn:
            return
        rank = backend.rank
        weight = backend.effective_weight
        placed = self._placed.get(backend)
        if placed is not None:
            cls, counted = placed
            if cls.weight == weight and counted == rank:
                return
            self._count(cls, counted, -1)
            if cls.weight != weight:
                cls.rotation.set(backend, None, None)
        target = self._classes.get(weight)
        if target is None:
            target = self._classes[weight] = _Class(weight, self._vtime)
        self._count(target, rank, 1)
        self._placed[backend] = (target, rank)
        target.rotation.set(backend, rank, self._turn[backend])

    @staticmethod
    def _count(cls: _Class, rank: int | None, sign: int) -> None:
        if rank is not None:
            cls.free += sign
            if rank == HEALTHY_RANK:
                cls.healthy_free += sign

    def pick(self, healthy_only: bool) -> Backend | None:
        best: _Class | None = None
        for cls in self._classes.values():
            free = cls.healthy_free if healthy_only else cls.free
            if free and (best is None or cls.deadline < best.deadline):
                best = cls
        if best is None:
            return None
        backend = best.rotation.peek()
        if backend is None:
            return None
        # A class that sat idle resumes now, without a burst to catch up.
        self._vtime = max(self._vtime, best.deadline)
        free = best.healthy_free if healthy_only else best.free
        best.deadline = self._vtime + 1.0 / (best.weight * free)
        turn = self._turn[backend] = next(self._turns)
        best.rotation.set(backend, backend.rank, turn)
        return backend
