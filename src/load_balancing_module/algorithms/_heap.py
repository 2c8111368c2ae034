"""A min-heap of backends whose keys change often: O(log n) by lazy deletion.

Changing a key pushes a new entry and marks the old one dead; dead entries
are dropped when they reach the top, and the heap is compacted when they
outnumber the live ones. Ties are broken by insertion order, so among equal
keys the backend whose key changed longest ago comes first.
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Any

from ..backend import Backend

Entry = list[Any]  # [key, seq, backend or None when dead]


class LazyHeap:
    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._live: dict[Backend, Entry] = {}
        self._seq = count()

    def __len__(self) -> int:
        return len(self._live)

    def key(self, backend: Backend) -> Any:
        entry = self._live.get(backend)
        return None if entry is None else entry[0]

    def set(self, backend: Backend, key: Any) -> None:
        """Give ``backend`` a new key; ``None`` removes it."""
        old = self._live.get(backend)
        if old is not None:
            if old[0] == key:
                return
            old[2] = None
        if key is None:
            if old is not None:
                del self._live[backend]
            return
        entry = [key, next(self._seq), backend]
        self._live[backend] = entry
        heapq.heappush(self._heap, entry)
        if len(self._heap) > 2 * len(self._live) + 64:
            self._compact()

    def peek(self) -> Backend | None:
        heap = self._heap
        while heap:
            backend = heap[0][2]
            if backend is not None:
                return backend  # type: ignore[no-any-return]
            heapq.heappop(heap)
        return None

    def peek_key(self) -> Any:
        backend = self.peek()
        return None if backend is None else self._heap[0][0]

    def clear(self) -> None:
        self._heap.clear()
        self._live.clear()

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[2] is not None]
        heapq.heapify(self._heap)
