"""The compiled build's heap: a winner tree over flat arrays of machine numbers.

Each member has a fixed slot; ``_ranks``, ``_keys`` and ``_seqs`` hold the
order of every slot, and ``_tree`` the winner (lowest ``(rank, key, seq)``)
of every subtree, as a tournament does: ``_tree[1]`` is the overall winner,
the leaves are ``_tree[leaves + slot]``. A change replays the matches on
the path from its leaf to the root and stops as soon as a match's winner is
unchanged and is not the changed slot. Nothing is moved and no node is
written: a replay reads a few entries of arrays of 8-byte numbers
(10,000 members: 0.6 MB in all, the upper levels always cached).

Why not the nodes themselves: a sift through a heap of nodes reads the node
of another backend at every level, and at 10,000 members almost every one of
those is a cache miss, so least-latency routing (two long sifts a request)
cost twice as much at 10,000 members as at 10.

Compiled only (``new_heap`` imports it when compiled): interpreted, an
element of a ``vec`` costs more than an element of a list, and ``LazyHeap``
with ``heapq`` does better.
"""

from __future__ import annotations

from typing import Final

from librt.vecs import append, vec
from mypy_extensions import i64

from ..backend import Backend
from ._heap import Heap, HeapNode, free_node

_OUT: Final = 2  # the rank of an empty slot: after every member's (0 HEALTHY, 1 DEGRADED)


class WinnerTree(Heap):
    __slots__ = ("_nodes", "_free", "_ranks", "_keys", "_seqs", "_tree", "_leaves", "_size", "_seq")

    def __init__(self) -> None:
        self._seq: i64 = 0  # taken at every change: among equal keys, the oldest change first
        self._reset()

    def _reset(self) -> None:
        self._leaves: i64 = 1  # slots; a power of two
        self._nodes: list[HeapNode | None] = [None]  # by slot
        self._free: list[int] = [0]  # empty slots
        self._ranks: vec[i64] = vec[i64]([_OUT])
        self._keys: vec[float] = vec[float]([0.0])
        self._seqs: vec[i64] = vec[i64]([0])
        self._tree: vec[i64] = vec[i64]([0, 0])
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, node: HeapNode) -> bool:
        return node.owner_heap is self

    def set(self, node: HeapNode, rank: int | None, key: float) -> None:
        inside = node.owner_heap is self
        if rank is None:
            if inside:
                self._remove(node)
            return
        if inside:
            if node.rank == rank and node.key == key:
                return
        else:
            self._insert(node)
        node.rank = rank
        node.key = key
        slot: i64 = node.index
        self._seq += 1
        self._ranks[slot] = rank
        self._keys[slot] = key
        self._seqs[slot] = self._seq
        self._replay(slot)

    def discard(self, node: HeapNode) -> None:
        if node.owner_heap is self:
            self._remove(node)

    def top(self) -> HeapNode | None:
        slot = self._tree[1]
        return None if self._ranks[slot] == _OUT else self._nodes[slot]

    def peek(self) -> Backend | None:
        node = self.top()
        return None if node is None else node.backend

    def clear(self) -> None:
        for node in self._nodes:
            if node is not None:
                free_node(node)
        self._reset()

    # -- inside ---------------------------------------------------------------

    def _insert(self, node: HeapNode) -> None:
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._nodes[slot] = node
        node.owner_heap = self
        node.index = slot
        self._size += 1

    def _remove(self, node: HeapNode) -> None:
        slot: i64 = node.index
        free_node(node)
        self._nodes[slot] = None
        self._free.append(slot)
        self._size -= 1
        self._ranks[slot] = _OUT
        self._replay(slot)

    def _grow(self) -> None:
        """Twice the slots; the tree is rebuilt (O(n), once per doubling)."""
        old = self._leaves
        leaves = old * 2
        for slot in range(leaves - 1, old - 1, -1):  # popped from the end: lower slots first
            self._nodes.append(None)
            self._ranks = append(self._ranks, _OUT)
            self._keys = append(self._keys, 0.0)
            self._seqs = append(self._seqs, 0)
            self._free.append(slot)
        self._leaves = leaves
        tree = vec[i64]([0] * (2 * leaves))
        for slot in range(leaves):
            tree[leaves + slot] = slot
        for i in range(leaves - 1, 0, -1):
            a, b = tree[2 * i], tree[2 * i + 1]
            tree[i] = a if self._before(a, b) else b
        self._tree = tree

    def _before(self, a: i64, b: i64) -> bool:
        ranks = self._ranks
        if ranks[a] != ranks[b]:
            return ranks[a] < ranks[b]
        keys = self._keys
        if keys[a] != keys[b]:
            return keys[a] < keys[b]
        return self._seqs[a] < self._seqs[b]

    def _replay(self, slot: i64) -> None:
        """Replay the matches above ``slot``'s leaf after its order changed."""
        tree = self._tree
        i = (self._leaves + slot) >> 1
        while i > 0:
            a, b = tree[2 * i], tree[2 * i + 1]
            winner = a if self._before(a, b) else b
            if winner == tree[i] and winner != slot:
                return  # this match and every one above it are as they were
            tree[i] = winner
            i >>= 1
