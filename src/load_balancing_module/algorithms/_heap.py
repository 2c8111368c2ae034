"""Min-heaps of backends whose keys change often: O(log n) updates.

Each member of a tier owns one :class:`HeapNode` (``backend.lb_node``, as
HAProxy keeps a server's tree node inside ``struct server``), which holds its
order, ``(rank, key, seq)``. ``rank`` puts HEALTHY members (0) before DEGRADED
ones (1); a member whose rank is ``None`` is not in the heap. ``seq`` is taken
from a counter at every change, so among equal keys the member whose key
changed longest ago comes first: ties rotate.

Two implementations keep that same order, one for each build (``new_heap``
picks). Compiled, :class:`~._winner_tree.WinnerTree` replays a tournament
in flat arrays of machine numbers, so an update allocates nothing and reads
no other member's node, however many members there are. Interpreted, a Python
loop costs more than ``heapq``'s C one, so :class:`LazyHeap` pushes a
``(rank, key, seq, node)`` tuple per change onto a ``heapq`` list and skips
stale tuples when they reach the top.
"""

from __future__ import annotations

import heapq
from typing import Final

from ..backend import Backend

_NO_SLOT: Final = -1


class HeapNode:
    """One backend's place in its algorithm's heaps (a ``WinnerTree`` or a :class:`LazyHeap`)."""

    __slots__ = ("backend", "owner", "rank", "key", "seq", "index", "group", "owner_heap")

    def __init__(self, backend: Backend, owner: object) -> None:
        self.backend = backend
        self.owner = owner  # the algorithm whose heap this node serves
        self.rank = 0
        self.key = 0.0
        self.seq = 0  # LazyHeap: the seq of the node's live tuple
        self.index = _NO_SLOT  # WinnerTree: the node's slot in its arrays, or _NO_SLOT when out of it
        self.group: object = None  # for the owner: which of its heaps the node belongs to
        self.owner_heap: Heap | None = None  # the heap the node is in


def node_of(backend: Backend, owner: object) -> HeapNode:
    """``backend``'s node for ``owner``'s heaps; a new one if it has none for this owner yet."""
    node = backend.lb_node
    if node is None or node.owner is not owner:
        node = backend.lb_node = HeapNode(backend, owner)
    return node


def free_node(node: HeapNode) -> None:
    """Mark ``node`` as in no heap."""
    node.owner_heap = None
    node.index = _NO_SLOT


class Heap:
    """What the algorithms use of a heap (``LazyHeap`` below and ``_winner_tree.WinnerTree``)."""

    __slots__ = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def __contains__(self, node: HeapNode) -> bool:
        return node.owner_heap is self

    def set(self, node: HeapNode, rank: int | None, key: float) -> None:
        """Give ``node`` the order ``(rank, key)``; rank ``None`` takes it out of the heap."""
        raise NotImplementedError

    def discard(self, node: HeapNode) -> None:
        raise NotImplementedError

    def top(self) -> HeapNode | None:
        """The first node in order, or ``None`` when the heap is empty."""
        raise NotImplementedError

    def peek(self) -> Backend | None:
        node = self.top()
        return None if node is None else node.backend

    def clear(self) -> None:
        raise NotImplementedError


class LazyHeap(Heap):
    """The order of ``WinnerTree``, kept by ``heapq`` with lazy deletion (for the interpreted build).

    A node is in the heap while its ``owner_heap`` is this heap; a tuple is live
    while, besides, its ``seq`` is its node's. Stale tuples are dropped at the
    top, and the list is rebuilt when they outnumber the live ones. (Membership
    is tested inline, not with ``in``: interpreted, a call costs more than the test.)
    """

    __slots__ = ("_entries", "_live", "_seq")

    def __init__(self) -> None:
        self._seq = 0  # taken at every change: among equal keys, the oldest change first
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

    def clear(self) -> None:
        for entry in self._entries:
            if entry[3].owner_heap is self:
                entry[3].owner_heap = None
        self._entries = []
        self._live = 0

    def _compact(self) -> None:
        self._entries = [e for e in self._entries if e[3].seq == e[2] and e[3].owner_heap is self]
        heapq.heapify(self._entries)


def new_heap() -> Heap:
    """The heap for this build: a winner tree in flat arrays when compiled, ``heapq`` when interpreted."""
    if _INTERPRETED:
        return LazyHeap()
    from ._winner_tree import WinnerTree  # librt.vecs: only the compiled build needs it

    return WinnerTree()


_INTERPRETED: Final = __file__.endswith(".py")
