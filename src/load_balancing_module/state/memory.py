"""In-process state store: plain dicts, time from the injected clock.

Sessions are bounded by ``max_sessions``, as a segmented LRU: a new binding
enters a probation segment; a session looked up again moves to the protected
segment (at most four fifths of the room; its least recently used falls back
to probation); room is made by evicting probation's least recently used. So a client that invents a new
session id per request (or never returns one) churns probation only, and the
sessions in active use stay. Each entry is an id of at most 512 characters, a
backend id and a float: at the default 100,000 sessions, at most about 150 MB
with the longest ids, about 20 MB with usual ones (32 hex digits).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict

from ..clock import Clock
from .base import StateStore

DEFAULT_MAX_SESSIONS = 100_000
PROBATION_SHARE = 0.2  # of max_sessions, kept for sessions not looked up again

EPSILON = 1e-9  # refills in small steps add up to 0.99999...; that is a whole token


def refill(tokens: float, last: float, now: float, rate: float, burst: int) -> float:
    """Tokens in a bucket at ``now`` that held ``tokens`` at ``last``."""
    return min(float(burst), tokens + max(now - last, 0.0) * rate)


Sessions = OrderedDict[str, tuple[str, float]]  # id -> (backend_id, expires_at), least recently used first


class MemoryStore(StateStore):
    def __init__(self, clock: Clock, *, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self._clock = clock
        self.max_sessions = max_sessions
        self._probation_room = max(1, int(max_sessions * PROBATION_SHARE))
        self._probation: Sessions = OrderedDict()  # bound, not looked up since
        self._protected: Sessions = OrderedDict()  # looked up again: in use
        self.evicted_sessions = 0
        self._secrets: dict[str, bytes] = {}
        self._buckets: dict[str, tuple[float, float, float]] = {}  # key -> (tokens, last, full_at)
        self._attempts: dict[str, tuple[int, int]] = {}  # key -> (second, count)
        self._blocked: dict[str, float] = {}  # key -> until

    async def get_session(self, session_id: str, ttl: float) -> str | None:
        now = self._clock.monotonic()
        entry = self._protected.pop(session_id, None) or self._probation.pop(session_id, None)
        if entry is None:
            return None
        if entry[1] <= now:
            return None  # expired: already dropped by the pop
        self._protected[session_id] = (entry[0], now + ttl)  # the most recently used end
        self._make_room()
        return entry[0]

    async def bind_session(self, session_id: str, backend_id: str, ttl: float) -> None:
        expires = self._clock.monotonic() + ttl
        if session_id in self._protected:  # a rebind of a session in use keeps it protected
            self._protected[session_id] = (backend_id, expires)
            self._protected.move_to_end(session_id)
            return
        self._probation.pop(session_id, None)
        self._probation[session_id] = (backend_id, expires)
        self._make_room()

    def _make_room(self) -> None:
        """Stay within max_sessions. The protected segment keeps all but the probation's share; its
        least recently used moves back to probation when it is over, and room is made by evicting
        probation's least recently used: so a session looked up again outlives any number of
        sessions that were never looked up."""
        probation, protected = self._probation, self._protected
        while len(protected) > self.max_sessions - self._probation_room:
            session_id, entry = protected.popitem(last=False)
            probation[session_id] = entry
        while len(probation) + len(protected) > self.max_sessions:
            probation.popitem(last=False)
            self.evicted_sessions += 1

    async def session_count(self) -> int:
        now = self._clock.monotonic()
        return sum(1 for part in (self._probation, self._protected) for _, expires in part.values() if expires > now)

    async def shared_secret(self, name: str) -> bytes:
        secret = self._secrets.get(name)
        if secret is None:
            secret = self._secrets[name] = secrets.token_bytes(32)
        return secret

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
        before = len(self._probation) + len(self._protected) + len(self._buckets) + len(self._attempts)
        before += len(self._blocked)
        self._probation = OrderedDict((k, v) for k, v in self._probation.items() if v[1] > now)
        self._protected = OrderedDict((k, v) for k, v in self._protected.items() if v[1] > now)
        # A bucket that has refilled is the same as no bucket.
        self._buckets = {k: v for k, v in self._buckets.items() if v[2] > now}
        self._attempts = {k: v for k, v in self._attempts.items() if v[0] == second}
        self._blocked = {k: v for k, v in self._blocked.items() if v > now}
        after = len(self._probation) + len(self._protected) + len(self._buckets) + len(self._attempts)
        return before - after - len(self._blocked)
