"""Min-heaps of backends whose keys change often: O(log n) updates.

A tier's members carry their place in the algorithm's structures in their
own ``lb_*`` fields (as HAProxy keeps a server's tree node inside ``struct
server``): with 10,000 backends, a separate node object per member is one
more cache miss per request. The order is ``(lb_rank, lb_key, seq)``:
``rank`` puts HEALTHY members (0) before DEGRADED ones (1); a member whose
rank is ``None`` is not in the heap. ``seq`` is taken from a counter at
every change, so among equal keys the member whose key changed longest ago
comes first: ties rotate.

Two implementations keep that same order, one for each build (``new_heap``
picks). Compiled, :class:`~._winner_tree.WinnerTree` replays a tournament
in flat arrays of machine numbers, so an update allocates nothing and reads
no other member, however many members there are. Interpreted, a Python
loop costs more than ``heapq``'s C one, so :class:`LazyHeap` pushes a
``(rank, key, seq, slot)`` tuple per change onto a ``heapq`` list and
skips stale tuples when they reach the top.
"""

from __future__ import annotations

import heapq
from typing import Final

from ..backend import Backend
from ._place import Heap, leave


class LazyHeap(Heap):
    """The order of ``WinnerTree``, kept by ``heapq`` with lazy deletion (for the interpreted build).

    A member is in the heap while its ``lb_in`` is this heap; it has a slot
    (``lb_index``) in ``_members``, and a tuple ``(rank, key, seq, slot)`` is
    live while its slot holds a member of this heap whose ``lb_seq`` is its
    ``seq``. Stale tuples are dropped at the top, and the list is rebuilt when
    they outnumber the live ones. The tuples hold the slot, not the backend: a
    tuple of numbers only is untracked by the garbage collector at its first
    collection, so the heap's tuples never reach the old generations, whose
    collections scan every object of every backend. (Membership is tested
    inline, not with ``in``: interpreted, a call costs more than the test.)
    """

    __slots__ = ("_entries", "_live", "_seq", "_members", "_free")

    def __init__(self) -> None:
        self._seq = 0  # taken at every change: among equal keys, the oldest change first
        self._entries: list[tuple[int, float, int, int]] = []
        self._live = 0
        self._members: list[Backend | None] = []  # by slot
        self._free: list[int] = []  # slots given back

    def __len__(self) -> int:
        return self._live

    def set(self, backend: Backend, rank: int | None, key: float) -> None:
        if backend.lb_in is self:
            if rank is None:
                self.discard(backend)
                return
            if backend.lb_rank == rank and backend.lb_key == key:
                return
            slot = backend.lb_index
        elif rank is None:
            return
        else:
            slot = self._free.pop() if self._free else len(self._members)
            if slot == len(self._members):
                self._members.append(backend)
            else:
                self._members[slot] = backend
            backend.lb_in = self
            backend.lb_index = slot
            self._live += 1
        backend.lb_rank = rank
        backend.lb_key = key
        seq = self._seq = self._seq + 1
        backend.lb_seq = seq
        entries = self._entries
        if entries and entries[0][3] == slot:  # the member just picked: replace its stale tuple, one sift
            heapq.heapreplace(entries, (rank, key, seq, slot))
        else:
            heapq.heappush(entries, (rank, key, seq, slot))
            if len(entries) > 2 * self._live + 64:
                self._compact()

    def discard(self, backend: Backend) -> None:
        if backend.lb_in is self:
            self._members[backend.lb_index] = None
            self._free.append(backend.lb_index)
            leave(backend)
            self._live -= 1

    def peek(self) -> Backend | None:
        entries = self._entries
        members = self._members
        while entries:
            entry = entries[0]
            backend = members[entry[3]]
            if backend is not None and backend.lb_seq == entry[2] and backend.lb_in is self:
                return backend
            heapq.heappop(entries)
        return None

    def clear(self) -> None:
        for backend in self._members:
            if backend is not None and backend.lb_in is self:
                leave(backend)
        self._entries = []
        self._live = 0
        self._members = []
        self._free = []

    def _compact(self) -> None:
        members = self._members
        live = []
        for e in self._entries:
            backend = members[e[3]]
            if backend is not None and backend.lb_seq == e[2] and backend.lb_in is self:
                live.append(e)
        heapq.heapify(live)
        self._entries = live


def new_heap() -> Heap:
    """The heap for this build: a winner tree in flat arrays when compiled, ``heapq`` when interpreted."""
    if _INTERPRETED:
        return LazyHeap()
    from ._winner_tree import WinnerTree  # librt.vecs: only the compiled build needs it

    return WinnerTree()


_INTERPRETED: Final = __file__.endswith(".py")
