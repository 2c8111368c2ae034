"""Min-heaps of backends whose keys change often: O(log n) updates.

Each member of a tier owns one :class:`HeapNode` (``backend.lb_node``, as
HAProxy keeps a server's tree node inside ``struct server``), which holds its
order, ``(rank, key, seq)``. ``rank`` puts HEALTHY members (0) before DEGRADED
ones (1); a member whose rank is ``None`` is not in the heap. ``seq`` is taken
from a counter at every change, so among equal keys the member whose key
changed longest ago comes first: ties rotate.

Two implementations keep that same order, one for each build (``new_heap``
picks): :class:`IndexedHeap` moves a node up or down from where it is, so an
update allocates nothing and compares numbers stored in the nodes; compiled
by mypyc, that loop is native code. Interpreted, a Python loop costs more
than ``heapq``'s C one, so :class:`LazyHeap` pushes a ``(rank, key, seq,
node)`` tuple per change onto a ``heapq`` list and skips stale tuples when
they reach the top.
"""

from __future__ import annotations

import heapq
from typing import Final

from ..backend import Backend

_NO_SLOT: Final = -1


class HeapNode:
    """One backend's place in its algorithm's heaps (an :class:`IndexedHeap` or a :class:`LazyHeap`)."""

    __slots__ = ("backend", "owner", "rank", "key", "seq", "index", "group", "owner_heap")

    def __init__(self, backend: Backend, owner: object) -> None:
        self.backend = backend
        self.owner = owner  # the algorithm whose heap this node serves
        self.rank = 0
        self.key = 0.0
        self.seq = 0
        self.index = _NO_SLOT  # position in the heap, or _NO_SLOT when out of it
        self.group: object = None  # for the owner: which of its heaps the node belongs to
        self.owner_heap: IndexedHeap | None = None  # the LazyHeap the node is in


def node_of(backend: Backend, owner: object) -> HeapNode:
    """``backend``'s node for ``owner``'s heaps; a new one if it has none for this owner yet."""
    node = backend.lb_node
    if node is None or node.owner is not owner:
        node = backend.lb_node = HeapNode(backend, owner)
    return node


def _before(a: HeapNode, b: HeapNode) -> bool:
    if a.rank != b.rank:
        return a.rank < b.rank
    if a.key != b.key:
        return a.key < b.key
    return a.seq < b.seq


class IndexedHeap:
    __slots__ = ("_nodes", "_seq")

    def __init__(self) -> None:
        self._nodes: list[HeapNode] = []
        self._seq = 0  # shared by every node of this heap: the tie-break order

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: HeapNode) -> bool:
        i = node.index
        return 0 <= i < len(self._nodes) and self._nodes[i] is node

    def set(self, node: HeapNode, rank: int | None, key: float) -> None:
        """Give ``node`` the order ``(rank, key)``; rank ``None`` takes it out of the heap."""
        inside = node in self
        if rank is None:
            if inside:
                self._remove(node.index)
            return
        if inside and node.rank == rank and node.key == key:
            return
        node.rank = rank
        node.key = key
        self._seq += 1
        node.seq = self._seq
        if inside:
            self._sift_up(node.index)
            self._sift_down(node.index)
        else:
            node.index = len(self._nodes)
            self._nodes.append(node)
            self._sift_up(node.index)

    def discard(self, node: HeapNode) -> None:
        if node in self:
            self._remove(node.index)

    def peek(self) -> Backend | None:
        nodes = self._nodes
        return nodes[0].backend if nodes else None

    def top(self) -> HeapNode | None:
        nodes = self._nodes
        return nodes[0] if nodes else None

    def clear(self) -> None:
        for node in self._nodes:
            node.index = _NO_SLOT
        self._nodes = []

    def _remove(self, i: int) -> None:
        nodes = self._nodes
        gone = nodes[i]
        gone.index = _NO_SLOT
        last = nodes.pop()
        if last is not gone:
            nodes[i] = last
            last.index = i
            self._sift_up(i)
            self._sift_down(last.index)

    def _sift_up(self, i: int) -> None:
        nodes = self._nodes
        node = nodes[i]
        while i > 0:
            parent = (i - 1) >> 1
            above = nodes[parent]
            if not _before(node, above):
                break
            nodes[i] = above
            above.index = i
            i = parent
        nodes[i] = node
        node.index = i

    def _sift_down(self, i: int) -> None:
        nodes = self._nodes
        n = len(nodes)
        node = nodes[i]
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            right = child + 1
            if right < n and _before(nodes[right], nodes[child]):
                child = right
            below = nodes[child]
            if not _before(below, node):
                break
            nodes[i] = below
            below.index = i
            i = child
        nodes[i] = node
        node.index = i


class LazyHeap(IndexedHeap):
    """The order of :class:`IndexedHeap`, kept by ``heapq`` with lazy deletion (for the interpreted build).

    A node is in the heap while its ``owner_heap`` is this heap; a tuple is live
    while, besides, its ``seq`` is its node's. Stale tuples are dropped at the
    top, and the list is rebuilt when they outnumber the live ones. (Membership
    is tested inline, not with ``in``: interpreted, a call costs more than the test.)
    """

    __slots__ = ("_entries", "_live")

    def __init__(self) -> None:
        super().__init__()
        self._entries: list[tuple[int, float, int, HeapNode]] = []
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def __contains__(self, node: HeapNode) -> bool:
        return node.owner_heap is self

    def set(self, node: HeapNode, rank: int | None, key: float) -> None:
        inside = node.owner_heap is self
        if rank is None:
            if inside:
                node.owner_heap = None
                self._live -= 1
            return
        if inside:
            if node.rank == rank and node.key == key:
                return
        else:
            node.owner_heap = self
            self._live += 1
        node.rank = rank
        node.key = key
        seq = self._seq = self._seq + 1
        node.seq = seq
        entries = self._entries
        if entries and entries[0][3] is node:  # the member just picked: replace its stale tuple, one sift
            heapq.heapreplace(entries, (rank, key, seq, node))
        else:
            heapq.heappush(entries, (rank, key, seq, node))
            if len(entries) > 2 * self._live + 64:
                self._compact()

    def discard(self, node: HeapNode) -> None:
        if node.owner_heap is self:
            node.owner_heap = None
            self._live -= 1

    def top(self) -> HeapNode | None:
        entries = self._entries
        while entries:
            entry = entries[0]
            node = entry[3]
            if node.seq == entry[2] and node.owner_heap is self:
                return node
            heapq.heappop(entries)
        return None

    def peek(self) -> Backend | None:
        node = self.top()
        return None if node is None else node.backend

    def clear(self) -> None:
        for entry in self._entries:
            if entry[3].owner_heap is self:
                entry[3].owner_heap = None
        self._entries = []
        self._live = 0

    def _compact(self) -> None:
        self._entries = [e for e in self._entries if e[3].seq == e[2] and e[3].owner_heap is self]
        heapq.heapify(self._entries)


def new_heap() -> IndexedHeap:
    """The heap for this build: in place when compiled, ``heapq`` when interpreted."""
    return LazyHeap() if _INTERPRETED else IndexedHeap()


_INTERPRETED: Final = __file__.endswith(".py")
