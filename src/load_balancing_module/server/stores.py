"""The state store a server's config names: none of its own for ``memory`` (the module keeps
one), a :class:`~..state.redis.RedisStore` for ``redis://``."""

from __future__ import annotations

from ..state.redis import RedisStore
from .config import StateConfig


def open_store(state: StateConfig, max_sessions: int, *, pool: str | None = None) -> RedisStore | None:
    """The shared store ``state`` names; None for ``memory`` (the module then keeps its own).
    ``pool``: a pool other than the default, whose keys go under ``<prefix>pool:<name>:``."""
    if not state.shared:
        return None
    prefix = state.prefix if pool is None else f"{state.prefix}pool:{pool}:"
    return RedisStore(state.url, prefix=prefix, timeout=state.timeout, max_sessions=max_sessions)
