"""The compiled build's heap: a winner tree over flat arrays of machine numbers.

Each member has a fixed slot and a leaf; every position of the tree holds
the winner (lowest ``(rank, key, seq)``) of its subtree, as in a tournament,
with that winner's order copied beside it: ``_tree[1]`` is the overall
winner, ``_tree[leaves + slot]`` a leaf. A change replays the matches on the
path from its leaf to the root, and stops as soon as a match's winner is
unchanged and is not the changed slot. A level reads one entry of each of
two ``librt.vecs`` arrays of 8-byte numbers (10,000 members: 0.8 MB in all,
the upper levels always cached); nothing is moved and no other member is
read or written.

Why not a heap of the members themselves: a sift reads another backend at
every level, and at 10,000 members almost every one of
those is a cache miss, so least-latency routing (two long sifts a request)
cost twice as much at 10,000 members as at 10.

Compiled only (``new_heap`` imports it when compiled): interpreted, an
element of a ``vec`` costs more than an element of a list, and ``LazyHeap``
with ``heapq`` does better.
"""

from __future__ import annotations

from typing import Final

from librt.vecs import vec
from mypy_extensions import i64

from ..backend import Backend
from ._heap import Heap, leave

_SEQ_BITS: Final = 56  # an order is (rank << 56 | seq, key): 2**56 changes last centuries
_OUT: Final = 2 << _SEQ_BITS  # the order of an empty slot: after every member's (rank 0 HEALTHY, 1 DEGRADED)


class WinnerTree(Heap):
    __slots__ = ("_members", "_free", "_tree", "_ranks", "_keys", "_leaves", "_size", "_seq")

    def __init__(self) -> None:
        self._seq: i64 = 0  # taken at every change: among equal keys, the oldest change first
        self._reset()

    def _reset(self) -> None:
        self._leaves: i64 = 1  # slots; a power of two
        self._members: list[Backend | None] = [None]  # by slot
        self._free: list[int] = [0]  # empty slots
        # By tree position: the winner's slot and its order, so that a match reads two
        # neighbouring entries. Position 1 is the root, leaves + slot is slot's leaf.
        self._tree: vec[i64] = vec[i64]([0, 0])
        self._ranks: vec[i64] = vec[i64]([_OUT, _OUT])  # rank << _SEQ_BITS | seq
        self._keys: vec[float] = vec[float]([0.0, 0.0])
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, backend: Backend) -> bool:
        return backend.lb_in is self

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
        return None if self._ranks[1] == _OUT else self._members[self._tree[1]]

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
        """Twice the slots; the tree is rebuilt (O(n), once per doubling)."""
        old = self._leaves
        leaves = old * 2
        for slot in range(leaves - 1, old - 1, -1):  # popped from the end: lower slots first
            self._free.append(slot)
            self._members.append(None)
        tree = vec[i64]([0] * (2 * leaves))
        ranks = vec[i64]([_OUT] * (2 * leaves))
        keys = vec[float]([0.0] * (2 * leaves))
        for slot in range(leaves):
            tree[leaves + slot] = slot
            if slot < old:
                ranks[leaves + slot] = self._ranks[old + slot]
                keys[leaves + slot] = self._keys[old + slot]
        self._tree, self._ranks, self._keys, self._leaves = tree, ranks, keys, leaves
        for i in range(leaves - 1, 0, -1):
            self._match(i)

    def _match(self, i: i64) -> i64:
        """Play the match at position ``i`` from its two children; return its winner's slot."""
        ranks, keys = self._ranks, self._keys
        a = 2 * i
        b = a + 1
        ra, rb = ranks[a], ranks[b]
        if ra >> _SEQ_BITS != rb >> _SEQ_BITS:
            w = a if ra < rb else b
        else:
            ka, kb = keys[a], keys[b]
            w = (a if ka < kb else b) if ka != kb else (a if ra < rb else b)
        winner = self._tree[w]
        self._tree[i] = winner
        ranks[i] = ranks[w]
        keys[i] = keys[w]
        return winner

    def _replay(self, slot: i64, rank: i64, key: float) -> None:
        """Give ``slot`` the order ``(rank, key)`` and replay the matches above its leaf.

        The winner so far is carried up in locals, so each level reads only the
        sibling's entry; the replay stops at the first match whose winner is
        unchanged and is not ``slot`` (then nothing above it changes either).
        """
        tree, ranks, keys = self._tree, self._ranks, self._keys
        i = self._leaves + slot
        ranks[i] = rank
        keys[i] = key
        winner, wrank, wkey = slot, rank, key
        while i > 1:
            sibling = i ^ 1
            srank = ranks[sibling]
            if srank >> _SEQ_BITS != wrank >> _SEQ_BITS:
                beaten = srank < wrank
            else:
                skey = keys[sibling]
                beaten = skey < wkey or (skey == wkey and srank < wrank)
            if beaten:
                winner, wrank, wkey = tree[sibling], srank, keys[sibling]
            i >>= 1
            if tree[i] == winner and winner != slot:
                return
            tree[i] = winner
            ranks[i] = wrank
            keys[i] = wkey
