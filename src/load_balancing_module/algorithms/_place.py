"""A backend's place in its algorithm's structures, and the interface of a heap.

A tier's members carry their place in the algorithm's heap or rotation in
their own ``lb_*`` fields (see :mod:`._heap`). :func:`claim` hands those
fields to one structure's owner and :func:`leave` marks a member as in none;
:class:`Heap` is what the algorithms use of a heap, whichever build's
implementation ``_heap.new_heap`` returns.
"""

from __future__ import annotations

from ..backend import NO_SLOT, Backend


def claim(backend: Backend, owner: object) -> Backend:
    """``backend`` with its ``lb_*`` fields serving ``owner`` (reset if they served another)."""
    if backend.lb_owner is not owner:
        backend.lb_owner = owner
        backend.lb_in = None
        backend.lb_index = NO_SLOT
        backend.lb_rank = 0
        backend.lb_key = 0.0
        backend.lb_seq = 0
        backend.lb_group = None
    return backend


def leave(backend: Backend) -> None:
    """Mark ``backend`` as in no heap or rotation."""
    backend.lb_in = None
    backend.lb_index = NO_SLOT


class Heap:
    """What the algorithms use of a heap (``LazyHeap`` below and ``_winner_tree.WinnerTree``)."""

    __slots__ = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def __contains__(self, backend: Backend) -> bool:
        return backend.lb_in is self

    def set(self, backend: Backend, rank: int | None, key: float) -> None:
        """Give ``backend`` the order ``(rank, key)``; rank ``None`` takes it out of the heap."""
        raise NotImplementedError

    def discard(self, backend: Backend) -> None:
        raise NotImplementedError

    def peek(self) -> Backend | None:
        """The first member in order, or ``None`` when the heap is empty."""
        raise NotImplementedError

    def clear(self) -> None:
        """Empty the heap (members now in another structure are left as they are)."""
        raise NotImplementedError
