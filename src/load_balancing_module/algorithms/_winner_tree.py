"""The compiled build's heap: a winner tree over flat arrays of machine numbers.

Each member has a fixed slot and a leaf; every position of the tree holds
the winner (lowest ``(rank, key, seq)``) of its four children, as in a
tournament, with that winner's order copied beside it: position 0 holds the
overall winner. A change replays the matches on the path from its leaf to the
root, and stops as soon as a match's winner is unchanged and is not the
changed slot. A level reads the three siblings' entries, which lie side by
side (one cache line, or two), in two of its three ``librt.vecs`` arrays of
8-byte numbers (10,000 members: 7 levels, 0.5 MB in all, the upper levels
always cached); nothing is moved and no other member is read or written.

Why not a heap of the members themselves: a sift reads another backend at
every level, and at 10,000 members almost every one of those is a cache
miss, so least-latency routing (two long sifts a request) cost twice as much
at 10,000 members as at 10.

Compiled only (``new_heap`` imports it when compiled): interpreted, an
element of a ``vec`` costs more than an element of a list, and ``LazyHeap``
with ``heapq`` does better.
"""

from __future__ import annotations

from typing import Final

from librt.vecs import vec
from mypy_extensions import i64

from ..backend import Backend
from ._place import Heap, leave

_SEQ_BITS: Final = 56  # an order is (rank << 56 | seq, key): 2**56 changes last centuries
_OUT: Final = 2 << _SEQ_BITS  # the order of an empty slot: after every member's (rank 0 HEALTHY, 1 DEGRADED)
_PAD: Final = 3  # position p is at index p + 3: the siblings 4p+1 .. 4p+4 start at a multiple of 4


def _precedes(rank_a: i64, key_a: float, rank_b: i64, key_b: float) -> bool:
    """Whether order ``a`` goes first: lower rank, then lower key, then lower seq
    (a rank is ``rank << _SEQ_BITS | seq``)."""
    if rank_a >> _SEQ_BITS != rank_b >> _SEQ_BITS:
        return rank_a < rank_b
    return key_a < key_b or (key_a == key_b and rank_a < rank_b)


class WinnerTree(Heap):
    __slots__ = ("_members", "_free", "_tree", "_ranks", "_keys", "_leaves", "_inner", "_size", "_seq")

    def __init__(self) -> None:
        self._seq: i64 = 0  # taken at every change: among equal keys, the oldest change first
        self._reset()

    def _reset(self) -> None:
        self._leaves: i64 = 1  # slots; a power of four
        self._inner: i64 = 0  # matches: (leaves - 1) / 3
        self._members: list[Backend | None] = [None]  # by slot
        self._free: list[int] = [0]  # empty slots
        # By tree position, stored at index position + _PAD: the winner's slot and its order
        # beside it. Position 0 is the root, the children of p are 4p+1 .. 4p+4, and slot s
        # has the leaf _inner + s.
        self._tree: vec[i64] = vec[i64]([0] * (_PAD + 1))
        self._ranks: vec[i64] = vec[i64]([_OUT] * (_PAD + 1))  # rank << _SEQ_BITS | seq
        self._keys: vec[float] = vec[float]([0.0] * (_PAD + 1))
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def set(self, backend: Backend, rank: int | None, key: float) -> None:
        inside = backend.lb_in is self
        if rank is None:
            if inside:
                self._remove(backend)
            return
        if inside:
            if backend.lb_rank == rank and backend.lb_key == key:
                return
        else:
            self._insert(backend)
        backend.lb_rank = rank
        backend.lb_key = key
        self._seq += 1
        r: i64 = rank
        self._replay(backend.lb_index, r << _SEQ_BITS | self._seq, key)

    def discard(self, backend: Backend) -> None:
        if backend.lb_in is self:
            self._remove(backend)

    def peek(self) -> Backend | None:
        return None if self._ranks[_PAD] == _OUT else self._members[self._tree[_PAD]]

    def clear(self) -> None:
        for member in self._members:
            if member is not None and member.lb_in is self:
                leave(member)
        self._reset()

    # -- inside ---------------------------------------------------------------

    def _insert(self, backend: Backend) -> None:
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._members[slot] = backend
        backend.lb_in = self
        backend.lb_index = slot
        self._size += 1

    def _remove(self, backend: Backend) -> None:
        slot: i64 = backend.lb_index
        leave(backend)
        self._members[slot] = None
        self._free.append(slot)
        self._size -= 1
        self._replay(slot, _OUT, 0.0)

    def _grow(self) -> None:
        """Four times the slots; the tree is rebuilt (O(n), once per growth)."""
        old, old_inner = self._leaves, self._inner
        leaves, inner = old * 4, old_inner * 4 + 1
        for slot in range(leaves - 1, old - 1, -1):  # popped from the end: lower slots first
            self._free.append(slot)
            self._members.append(None)
        size = _PAD + inner + leaves
        tree = vec[i64]([0] * size)
        ranks = vec[i64]([_OUT] * size)
        keys = vec[float]([0.0] * size)
        for slot in range(leaves):
            tree[_PAD + inner + slot] = slot
            if slot < old:
                ranks[_PAD + inner + slot] = self._ranks[_PAD + old_inner + slot]
                keys[_PAD + inner + slot] = self._keys[_PAD + old_inner + slot]
        self._tree, self._ranks, self._keys, self._leaves, self._inner = tree, ranks, keys, leaves, inner
        for p in range(inner - 1, -1, -1):
            self._match(p)

    def _match(self, p: i64) -> None:
        """Play the match at position ``p`` from its four children."""
        tree, ranks, keys = self._tree, self._ranks, self._keys
        best = 4 * p + 1 + _PAD
        for c in range(best + 1, best + 4):
            if _precedes(ranks[c], keys[c], ranks[best], keys[best]):
                best = c
        tree[p + _PAD] = tree[best]
        ranks[p + _PAD] = ranks[best]
        keys[p + _PAD] = keys[best]

    def _replay(self, slot: i64, rank: i64, key: float) -> None:
        """Give ``slot`` the order ``(rank, key)`` and replay the matches above its leaf.

        Four children a match halve the levels of a binary tree (10,000 members: 7),
        and the three siblings of a child lie side by side. The winner so far is
        carried up in locals; the replay stops at the first match whose winner is
        unchanged and is not ``slot`` (then nothing above it changes either).
        """
        tree, ranks, keys = self._tree, self._ranks, self._keys
        i = self._inner + slot
        ranks[i + _PAD] = rank
        keys[i + _PAD] = key
        winner, wrank, wkey = slot, rank, key
        while i > 0:
            parent = (i - 1) >> 2
            first = 4 * parent + 1 + _PAD
            own = i + _PAD
            for c in range(first, first + 4):
                if c == own:
                    continue
                # _precedes written out, reading the key only when the ranks tie: this is the
                # hot loop, and calling _precedes with every sibling's key cost 14% a pair
                # (bench/route_phases.py, least latency, 10,000 backends).
                crank = ranks[c]
                if crank >> _SEQ_BITS != wrank >> _SEQ_BITS:
                    better = crank < wrank
                else:
                    ckey = keys[c]
                    better = ckey < wkey or (ckey == wkey and crank < wrank)
                if better:
                    winner, wrank, wkey = tree[c], crank, keys[c]
            i = parent
            j = i + _PAD
            if tree[j] == winner and winner != slot:
                return
            tree[j] = winner
            ranks[j] = wrank
            keys[j] = wkey
