"""Strict circular order over a tier's members (or one weight class of them).

Each member has a fixed place in the circle; a pick takes the first
candidate after the last one picked. A member that stops being a candidate
(unhealthy, full, excluded) keeps its place and is skipped; when it comes
back it is served when the turn reaches it, as in NGINX and HAProxy.

Candidates are marked in one bitmap per rank (HEALTHY members are taken
first, DEGRADED ones only when no HEALTHY member is free), in 32-bit words
with a summary word for every 32 words. Finding the next candidate reads one
word in the usual case and a few summary words at worst (10,000 members: 10),
however many members are out of the rotation. A pick therefore touches the
chosen member and two small arrays, not a path through a heap of members,
which matters at 10,000 members when most of them are out of the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from ..backend import Backend
from ._place import leave

_SHIFT: Final = 5  # 32 places per bitmap word
_LOW: Final = 31
_OUT: Final = -1  # a member's ``lb_rank`` while it is in the circle but not a candidate


def _lowest(word: int) -> int:
    """Index of the lowest set bit of ``word`` (> 0)."""
    return (word & -word).bit_length() - 1


class _Marks:
    """One rank's candidates: a bitmap of places and a summary bitmap of its non-zero words."""

    __slots__ = ("words", "summary", "count")

    def __init__(self) -> None:
        self.words: list[int] = []
        self.summary: list[int] = []
        self.count = 0

    def grow(self, places: int) -> None:
        while len(self.words) << _SHIFT < places:
            self.words.append(0)
        while len(self.summary) << _SHIFT < len(self.words):
            self.summary.append(0)

    def mark(self, place: int) -> None:
        w = place >> _SHIFT
        if not self.words[w]:
            self.summary[w >> _SHIFT] |= 1 << (w & _LOW)
        self.words[w] |= 1 << (place & _LOW)
        self.count += 1

    def unmark(self, place: int) -> None:
        w = place >> _SHIFT
        word = self.words[w] & ~(1 << (place & _LOW))
        self.words[w] = word
        if not word:
            self.summary[w >> _SHIFT] &= ~(1 << (w & _LOW))
        self.count -= 1

    def first_from(self, place: int) -> int:
        """The first marked place at or after ``place`` (no wrapping), or -1."""
        words = self.words
        w = place >> _SHIFT
        if w >= len(words):
            return -1
        word = words[w] >> (place & _LOW) << (place & _LOW)
        if word:
            return (w << _SHIFT) + _lowest(word)
        w += 1  # the next non-zero word, from the summary
        summary = self.summary
        s = w >> _SHIFT
        if s >= len(summary):
            return -1
        bits = summary[s] >> (w & _LOW) << (w & _LOW)  # the summary's bits from word w on
        while not bits:
            s += 1
            if s == len(summary):
                return -1
            bits = summary[s]
        w = (s << _SHIFT) + _lowest(bits)
        return (w << _SHIFT) + _lowest(words[w])


class Rotation:
    """The circle. A member's ``lb_index`` is its place, ``lb_rank`` the rank it is marked with."""

    __slots__ = ("_members", "_marks", "_last", "_holes")

    def __init__(self) -> None:
        self._members: list[Backend | None] = []  # by place
        self._marks = (_Marks(), _Marks())  # by rank
        self._last = -1  # the place picked last
        self._holes = 0  # places of members that left

    def __len__(self) -> int:
        return len(self._members) - self._holes

    def __contains__(self, backend: Backend) -> bool:
        return backend.lb_in is self

    @property
    def free(self) -> int:
        """Candidates of either rank."""
        return self._marks[0].count + self._marks[1].count

    @property
    def healthy_free(self) -> int:
        return self._marks[0].count

    def clear(self) -> None:
        for member in self._members:
            if member is not None and member.lb_in is self:
                leave(member)
        self._members = []
        self._marks = (_Marks(), _Marks())
        self._holes = 0

    def refill(self, members: Sequence[Backend]) -> None:
        """Make ``members`` (in circle order: survivors first, as they were, then newcomers)
        the circle, keeping the turn: the next pick is the first candidate after the
        last one picked that is still a member."""
        self._replace(members, [b.rank for b in members])

    def add(self, backend: Backend, rank: int | None) -> None:
        """Put ``backend`` at the end of the circle (just before the first place)."""
        backend.lb_in = self
        backend.lb_index = len(self._members)
        backend.lb_rank = _OUT
        self._members.append(backend)
        for marks in self._marks:
            marks.grow(len(self._members))
        self.set(backend, rank)

    def set(self, backend: Backend, rank: int | None) -> None:
        """Mark ``backend`` (a member) as a candidate of ``rank``, or as none (``None``)."""
        new = _OUT if rank is None else rank
        old = backend.lb_rank
        if new == old:
            return
        if old != _OUT:
            self._marks[old].unmark(backend.lb_index)
        if new != _OUT:
            self._marks[new].mark(backend.lb_index)
        backend.lb_rank = new

    def discard(self, backend: Backend) -> None:
        if backend.lb_in is not self:
            return
        self.set(backend, None)
        self._members[backend.lb_index] = None
        leave(backend)
        self._holes += 1
        if self._holes > 64 and self._holes > len(self._members) // 2:
            self._compact()

    def pick(self, healthy_only: bool) -> Backend | None:
        """The next candidate after the last pick (HEALTHY ones only if ``healthy_only``)."""
        marks = self._marks[0]
        if not healthy_only and not marks.count:
            marks = self._marks[1]
        if not marks.count:
            return None
        place = marks.first_from(self._last + 1)
        if place < 0:
            place = marks.first_from(0)
        self._last = place
        return self._members[place]

    def _compact(self) -> None:
        """Drop the holes, keeping the order of the circle, the marks and the turn."""
        members = [m for m in self._members if m is not None]
        self._replace(members, [None if m.lb_rank == _OUT else m.lb_rank for m in members])

    def _replace(self, members: Sequence[Backend], ranks: Sequence[int | None]) -> None:
        """Make ``members``, marked with ``ranks``, the circle; the turn moves with the last
        pick's place to the number of old members up to it that stay."""
        keep = set(members)
        self._last = sum(1 for m in self._members[: self._last + 1] if m is not None and m in keep) - 1
        self.clear()
        for backend, rank in zip(members, ranks, strict=True):
            self.add(backend, rank)
