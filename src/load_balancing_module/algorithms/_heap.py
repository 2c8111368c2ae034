"""Min-heaps of backends whose keys change often: O(log n) by lazy deletion.

Changing a key pushes a new entry and marks the old one dead; dead entries
are dropped when they reach the top, and the heap is compacted when they
outnumber the live ones. Ties are broken by insertion order, so among equal
keys the backend whose key changed longest ago comes first.

:class:`RankedHeap` keeps one heap per rank (HEALTHY, DEGRADED), so keys stay
plain numbers, which ``heapq`` compares much faster than tuples.
"""

from __future__ import annotations

import heapq
from typing import Any

from ..backend import DEGRADED_RANK, HEALTHY_RANK, Backend

Entry = list[Any]  # [key, seq, backend or None when dead]


class LazyHeap:
    __slots__ = ("_heap", "_live", "_seq", "_dead")

    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._live: dict[Backend, Entry] = {}
        self._seq = 0  # a plain int: cheaper than itertools.count, compiled or not
        self._dead = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, backend: Backend) -> bool:
        return backend in self._live

    def key(self, backend: Backend) -> Any:
        entry = self._live.get(backend)
        return None if entry is None else entry[0]

    def set(self, backend: Backend, key: Any) -> None:
        """Give ``backend`` a new key; ``None`` removes it."""
        old = self._live.get(backend)
        heap = self._heap
        if old is not None:
            if old[0] == key:
                return
            if key is not None and heap[0] is old:
                # The usual case: the member just picked from the top. One sift, no dead entry.
                seq = self._seq = self._seq + 1
                entry = [key, seq, backend]
                self._live[backend] = entry
                heapq.heapreplace(heap, entry)
                return
            old[2] = None
            self._dead += 1
        if key is None:
            if old is not None:
                del self._live[backend]
            return
        seq = self._seq = self._seq + 1
        entry = [key, seq, backend]
        self._live[backend] = entry
        heapq.heappush(heap, entry)
        if self._dead > len(self._live) + 64:
            self._compact()

    def peek(self) -> Backend | None:
        heap = self._heap
        while heap:
            backend = heap[0][2]
            if backend is not None:
                return backend  # type: ignore[no-any-return]
            heapq.heappop(heap)
            self._dead -= 1
        return None

    def peek_key(self) -> Any:
        return None if self.peek() is None else self._heap[0][0]

    def clear(self) -> None:
        self._heap.clear()
        self._live.clear()
        self._dead = 0

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[2] is not None]
        heapq.heapify(self._heap)
        self._dead = 0


class RankedHeap:
    """HEALTHY members always before DEGRADED ones; rank ``None`` is out."""

    __slots__ = ("_heaps",)

    def __init__(self) -> None:
        self._heaps = (LazyHeap(), LazyHeap())

    def set(self, backend: Backend, rank: int | None, key: Any) -> None:
        # Runs on every take and release: written out for two ranks, no loop.
        healthy, degraded = self._heaps
        if rank == HEALTHY_RANK:
            if backend in degraded._live:
                degraded.set(backend, None)
            healthy.set(backend, key)
        elif rank == DEGRADED_RANK:
            if backend in healthy._live:
                healthy.set(backend, None)
            degraded.set(backend, key)
        else:
            healthy.set(backend, None)
            degraded.set(backend, None)

    def key(self, backend: Backend) -> Any:
        for heap in self._heaps:
            if backend in heap:
                return heap.key(backend)
        return None

    def peek(self) -> Backend | None:
        backend = self._heaps[HEALTHY_RANK].peek()
        return backend if backend is not None else self._heaps[DEGRADED_RANK].peek()

    def peek_ranked(self) -> tuple[int, Any] | None:
        """``(rank, key)`` of the top member, for comparing two heaps."""
        for rank, heap in enumerate(self._heaps):
            if heap.peek() is not None:
                return rank, heap.peek_key()
        return None

    def clear(self) -> None:
        for heap in self._heaps:
            heap.clear()
