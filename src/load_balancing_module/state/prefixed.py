"""A view of a store under a key prefix: several balancers' sessions and buckets in one store.

The server gives each pool (a module of its own) such a view of the store its workers share, so
that a session id or a client's bucket in one pool never meets the same key in another. The view
owns nothing: the store's owner sweeps and closes it.
"""

from __future__ import annotations

from .base import StateStore


class PrefixedStore(StateStore):
    """``inner``, with every session id and bucket key under ``prefix``."""

    def __init__(self, inner: StateStore, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    @property
    def evicted_sessions(self) -> int:  # type: ignore[override]
        """The store's own count (every view's evictions)."""
        return self.inner.evicted_sessions

    async def get_session(self, session_id: str, ttl: float) -> str | None:
        return await self.inner.get_session(self.prefix + session_id, ttl)

    async def bind_session(self, session_id: str, backend_id: str, ttl: float) -> None:
        await self.inner.bind_session(self.prefix + session_id, backend_id, ttl)

    async def session_count(self) -> int:
        """The store's count: every view's sessions."""
        return await self.inner.session_count()

    async def take_token(self, key: str, rate: float, burst: int) -> float:
        return await self.inner.take_token(self.prefix + key, rate, burst)

    async def record_attempt(self, key: str, threshold: int, block_seconds: float) -> tuple[float, bool]:
        return await self.inner.record_attempt(self.prefix + key, threshold, block_seconds)

    async def purge_expired(self) -> int:
        return 0  # the store's owner sweeps it, once for every view

    async def shared_secret(self, name: str) -> bytes:
        return await self.inner.shared_secret(name)
