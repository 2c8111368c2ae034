"""In-process state store: plain dicts, time from the injected clock."""

from __future__ import annotations

from ..clock import Clock
from .base import StateStore

EPSILON = 1e-9  # refills in small steps add up to 0.99999...; that is a whole token


def refill(tokens: float, last: float, now: float, rate: float, burst: int) -> float:
    """Tokens in a bucket at ``now`` that held ``tokens`` at ``last``."""
    return min(float(burst), tokens + max(now - last, 0.0) * rate)


class MemoryStore(StateStore):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._sessions: dict[str, tuple[str, float]] = {}  # id -> (backend_id, expires_at)
        self._buckets: dict[str, tuple[float, float, float]] = {}  # key -> (tokens, last, full_at)
        self._attempts: dict[str, tuple[int, int]] = {}  # key -> (second, count)
        self._blocked: dict[str, float] = {}  # key -> until

    async def get_session(self, session_id: str, ttl: float) -> str | None:
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        now = self._clock.monotonic()
        if entry[1] <= now:
            del self._sessions[session_id]
            return None
        self._sessions[session_id] = (entry[0], now + ttl)
        return entry[0]

    async def bind_session(self, session_id: str, backend_id: str, ttl: float) -> None:
        self._sessions[session_id] = (backend_id, self._clock.monotonic() + ttl)

    async def session_count(self) -> int:
        now = self._clock.monotonic()
        return sum(1 for _, expires in self._sessions.values() if expires > now)

    async def take_token(self, key: str, rate: float, burst: int) -> float:
        now = self._clock.monotonic()
        entry = self._buckets.get(key)
        tokens = float(burst) if entry is None else refill(entry[0], entry[1], now, rate, burst)
        if tokens >= 1.0 - EPSILON:
            tokens = max(tokens - 1.0, 0.0)
            self._buckets[key] = (tokens, now, now + (burst - tokens) / rate)
            return 0.0
        self._buckets[key] = (tokens, now, now + (burst - tokens) / rate)
        return (1.0 - tokens) / rate

    async def record_attempt(self, key: str, threshold: int, block_seconds: float) -> tuple[float, bool]:
        now = self._clock.monotonic()
        until = self._blocked.get(key)
        if until is not None:
            if until > now:
                return until - now, False
            del self._blocked[key]
        second = int(now)
        window, count = self._attempts.get(key, (second, 0))
        count = count + 1 if window == second else 1
        self._attempts[key] = (second, count)
        if count > threshold and block_seconds > 0:
            self._blocked[key] = now + block_seconds
            del self._attempts[key]
            return block_seconds, True
        return 0.0, False

    async def purge_expired(self) -> int:
        now = self._clock.monotonic()
        second = int(now)
        before = len(self._sessions) + len(self._buckets) + len(self._attempts) + len(self._blocked)
        self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
        # A bucket that has refilled is the same as no bucket.
        self._buckets = {k: v for k, v in self._buckets.items() if v[2] > now}
        self._attempts = {k: v for k, v in self._attempts.items() if v[0] == second}
        self._blocked = {k: v for k, v in self._blocked.items() if v > now}
        return before - (len(self._sessions) + len(self._buckets) + len(self._attempts) + len(self._blocked))
