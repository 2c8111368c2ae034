"""The state-store interface: what several balancer instances may share.

Sticky sessions, token buckets and the flood-block list live behind this
small async interface. :class:`~.memory.MemoryStore` is the default; a shared
store (Redis) implements the same methods atomically on its side.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

DEFAULT_MAX_SESSIONS = 100_000
PROBATION_SHARE = 0.2  # of max_sessions, kept for sessions bound and not looked up again (yet)


def protected_room(max_sessions: int) -> int:
    """How many sessions the protected segment (sessions looked up again) may hold: all but
    probation's share, so that a new binding always finds room in probation."""
    return max_sessions - max(1, int(max_sessions * PROBATION_SHARE))


class StateStore(ABC):
    evicted_sessions = 0  # live sessions dropped to keep the store within max_sessions (a count)

    @abstractmethod
    async def get_session(self, session_id: str, ttl: float) -> str | None:
        """The backend id bound to a live session, extending its idle expiry to ``ttl``."""

    @abstractmethod
    async def bind_session(self, session_id: str, backend_id: str, ttl: float) -> None:
        """Bind (or rebind) a session; it expires after ``ttl`` idle seconds."""

    @abstractmethod
    async def session_count(self) -> int:
        """How many sessions are live."""

    @abstractmethod
    async def take_token(self, key: str, rate: float, burst: int) -> float:
        """Take one token from ``key``'s bucket: 0.0 if taken, else seconds until one is available."""

    @abstractmethod
    async def record_attempt(self, key: str, threshold: int, block_seconds: float) -> tuple[float, bool]:
        """Count one attempt of ``key`` in the current second.

        Returns ``(blocked_for, newly_blocked)``: how many seconds ``key`` stays
        blocked (0.0 if it is not), and whether this attempt caused the block,
        which happens when attempts within one second exceed ``threshold``.
        """

    @abstractmethod
    async def purge_expired(self) -> int:
        """Drop expired sessions and idle buckets; return how many entries went."""

    @abstractmethod
    async def shared_secret(self, name: str) -> bytes:
        """A random key named ``name`` (32 bytes), the same for every balancer sharing this store
        (the key that signs affinity cookies). Ask again now and then: a shared store may answer
        with another key than before (see :class:`~.redis.RedisStore`)."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Release connections, if any."""
