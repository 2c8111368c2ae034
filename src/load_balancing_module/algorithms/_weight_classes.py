"""Smooth weighted round robin for large tiers with few distinct weights.

Members are grouped by effective weight. Within a class they take turns in
strict rotation (a ``Rotation``, as ROUND_ROBIN); the classes themselves are
scheduled earliest-deadline-first, each due every ``1 / (weight x free
members)`` units of virtual time, so every member gets its exact share. A
pick is an O(k) scan of the k classes plus an O(1) step of the rotation;
used while k <= ``MAX_CLASSES``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, cast

from ..backend import Backend
from ._place import claim
from ._rotation import Rotation

MAX_CLASSES: Final = 16


class _Class:
    __slots__ = ("weight", "rotation", "deadline")

    def __init__(self, weight: float, vtime: float) -> None:
        self.weight = weight
        self.rotation = Rotation()
        self.deadline = vtime


class WeightClasses:
    """The classes of one tier. A member's ``lb_group`` is its class."""

    def __init__(self) -> None:
        self._classes: dict[float, _Class] = {}
        self._vtime = 0.0

    @property
    def overflowing(self) -> bool:
        return len(self._classes) > MAX_CLASSES

    def rebuild(self, members: Iterable[Backend]) -> None:
        self._classes.clear()
        for b in members:
            claim(b, self).lb_group = None
            self.update(b)

    def update(self, backend: Backend) -> None:
        if backend.lb_owner is not self:
            return
        weight = backend.effective_weight
        placed = cast("_Class | None", backend.lb_group)
        if placed is not None:
            if placed.weight == weight:
                placed.rotation.set(backend, backend.rank)
                return
            placed.rotation.discard(backend)
            if not len(placed.rotation):  # so that a slow start's passing weights do not pile up
                del self._classes[placed.weight]
        target = self._classes.get(weight)
        if target is None:
            target = self._classes[weight] = _Class(weight, self._vtime)
        backend.lb_group = target
        target.rotation.add(backend, backend.rank)

    def pick(self, healthy_only: bool) -> Backend | None:
        best: _Class | None = None
        due = 0.0  # best's deadline
        free = 0  # best's candidates
        for cls in self._classes.values():
            n = cls.rotation.healthy_free if healthy_only else cls.rotation.free
            if n and (best is None or cls.deadline < due):
                best, due, free = cls, cls.deadline, n
        if best is None:
            return None
        backend = best.rotation.pick(healthy_only)
        if backend is None:
            return None
        if due > self._vtime:  # a class that sat idle resumes now, without a burst to catch up
            self._vtime = due
        best.deadline = self._vtime + 1.0 / (best.weight * free)
        return backend
