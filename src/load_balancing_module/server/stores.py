"""The state store a server's config names: none of its own for ``memory`` (the module keeps
one), a :class:`~..state.redis.RedisStore` for Redis (one server, Sentinel or Cluster); and each
pool's view of it."""

from __future__ import annotations

from ..state.base import StateStore
from ..state.prefixed import PrefixedStore
from ..state.redis import RedisStore
from .config import StateConfig


def open_store(state: StateConfig, max_sessions: int) -> RedisStore | None:
    """The shared store ``state`` names; None for ``memory`` (the module then keeps its own)."""
    if not state.shared:
        return None
    return RedisStore(state.target, prefix=state.prefix, timeout=state.timeout, max_sessions=max_sessions)


def pool_store(store: StateStore | None, pool: str) -> StateStore | None:
    """What a pool other than the default keeps its sessions and buckets in: a view of the shared
    store under ``pool:<name>:`` (the store's owner sweeps and closes it); None without one (the
    pool's module then keeps its own, in memory)."""
    return None if store is None else PrefixedStore(store, f"pool:{pool}:")
