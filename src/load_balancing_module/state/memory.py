"""In-process state store: ordered dicts, time from the injected clock.

Everything is bounded, and no call walks a whole structure (the event loop never
stalls on a big store):

- Sessions are capped at ``max_sessions``, as a segmented LRU: a new binding
  enters a probation segment; a session looked up again moves to the protected
  segment (at most four fifths of the room; its least recently used falls back
  to probation's most recently used end); room is made by evicting probation's
  least recently used. So a client that invents a new session id per request
  (or never returns one) churns probation only, and the sessions in active use
  stay. Memory: see ``docs/state.md`` (about 250 bytes a session with 32-hex-digit
  ids; at most about 730 bytes with 512 ASCII characters, the proxy's longest).
- Token buckets, flood counters and blocks are kept in the order they were last
  written, so those that are over (a full bucket, a past second, an ended block)
  sit at the front: each write drops up to ``SWEEP`` of them there, more than it
  adds, and ``purge_expired`` drops the rest of the front. They hold about as many
  entries as clients seen within a bucket's refill time (or a block), however many
  distinct client addresses arrive, and cleaning costs only what it drops.

Sessions are ordered by last use, so with one ``session_ttl`` the soonest to expire
are at the front too; ``session_count`` and ``purge_expired`` drop expired ones
from there.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict

from ..clock import Clock
from .base import DEFAULT_MAX_SESSIONS, StateStore, protected_room

SWEEP = 2  # over entries dropped from a structure's front per write: more than the one a write adds

EPSILON = 1e-9  # refills in small steps add up to 0.99999...; that is a whole token


def refill(tokens: float, last: float, now: float, rate: float, burst: int) -> float:
    """Tokens in a bucket at ``now`` that held ``tokens`` at ``last``."""
    return min(float(burst), tokens + max(now - last, 0.0) * rate)


def take_one(tokens: float, rate: float) -> tuple[float, float]:
    """Take a token from a bucket holding ``tokens``: (the tokens left, 0.0) if there was one,
    else (``tokens``, the seconds until there is)."""
    if tokens >= 1.0 - EPSILON:
        return max(tokens - 1.0, 0.0), 0.0
    return tokens, (1.0 - tokens) / rate


Sessions = OrderedDict[str, tuple[str, float]]  # id -> (backend_id, expires_at), least recently used first
Buckets = OrderedDict[str, tuple[float, float, float]]  # key -> (tokens, last, full_at), last written last
Attempts = OrderedDict[str, tuple[int, int]]  # key -> (second, count), by second
Blocks = OrderedDict[str, float]  # key -> until, in the order they were set


class MemoryStore(StateStore):
    def __init__(self, clock: Clock, *, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        if max_sessions < 1:
            raise ValueError(f"MemoryStore: max_sessions must be >= 1, got {max_sessions}")
        self._clock = clock
        self.max_sessions = max_sessions
        self._protected_room = protected_room(max_sessions)
        self._probation: Sessions = OrderedDict()  # bound, not looked up since
        self._protected: Sessions = OrderedDict()  # looked up again: in use
        self.evicted_sessions = 0
        self._secrets: dict[str, bytes] = {}
        self._buckets: Buckets = OrderedDict()
        self._attempts: Attempts = OrderedDict()
        self._blocked: Blocks = OrderedDict()

    # -- sessions ------------------------------------------------------------------------

    async def get_session(self, session_id: str, ttl: float) -> str | None:
        now = self._clock.monotonic()
        entry = self._protected.pop(session_id, None)
        if entry is None:
            entry = self._probation.pop(session_id, None)
            if entry is None:
                return None
        if entry[1] <= now:
            return None  # expired: already dropped by the pop
        protected = self._protected
        protected[session_id] = (entry[0], now + ttl)  # the most recently used end
        if len(protected) > self._protected_room:
            # Its least recently used gets a second chance at probation's young end.
            demoted, demoted_entry = protected.popitem(last=False)
            self._probation[demoted] = demoted_entry
        return entry[0]

    async def bind_session(self, session_id: str, backend_id: str, ttl: float) -> None:
        now = self._clock.monotonic()
        entry = (backend_id, now + ttl)
        protected = self._protected
        if session_id in protected:  # a rebind of a session in use keeps it protected
            protected[session_id] = entry
            protected.move_to_end(session_id)
            return
        probation = self._probation
        probation.pop(session_id, None)
        probation[session_id] = entry
        # Make room: probation's least recently used go. Probation is never empty here, since the
        # protected segment holds at most max_sessions minus probation's share.
        while len(probation) + len(protected) > self.max_sessions:
            _, (_, expires) = probation.popitem(last=False)
            if expires > now:  # an expired one would have gone anyway: not an eviction
                self.evicted_sessions += 1

    async def session_count(self) -> int:
        """Live sessions: those not expired. Expired ones are dropped from the front of each
        segment (least recently used first), so this costs what it drops, not the store's size.
        If ``session_ttl`` was lowered, an expired session behind a live one with the longer
        ttl is counted until that one expires too (or it is looked up, or evicted)."""
        now = self._clock.monotonic()
        _drop_expired_sessions(self._probation, now)
        _drop_expired_sessions(self._protected, now)
        return len(self._probation) + len(self._protected)

    async def shared_secret(self, name: str) -> bytes:
        secret = self._secrets.get(name)
        if secret is None:
            secret = self._secrets[name] = secrets.token_bytes(32)
        return secret

    # -- rate limit and flood blocks --------------------------------------------------------

    async def take_token(self, key: str, rate: float, burst: int) -> float:
        now = self._clock.monotonic()
        buckets = self._buckets
        entry = buckets.pop(key, None)
        tokens = float(burst) if entry is None else refill(entry[0], entry[1], now, rate, burst)
        tokens, wait = take_one(tokens, rate)
        buckets[key] = (tokens, now, now + (burst - tokens) / rate)  # at the end: the last written
        _drop_full_buckets(buckets, now, SWEEP)
        return wait

    async def record_attempt(self, key: str, threshold: int, block_seconds: float) -> tuple[float, bool]:
        now = self._clock.monotonic()
        blocked = self._blocked
        until = blocked.get(key)
        if until is not None:
            if until > now:
                return until - now, False
            del blocked[key]
        second = int(now)
        attempts = self._attempts
        window, count = attempts.pop(key, (second, 0))
        count = count + 1 if window == second else 1
        if count > threshold and block_seconds > 0:
            blocked[key] = now + block_seconds  # its count stays dropped: the block starts afresh
            _drop_ended_blocks(blocked, now, SWEEP)
            return block_seconds, True
        attempts[key] = (second, count)  # at the end: attempts stay in the order of their second
        _drop_past_attempts(attempts, second, SWEEP)
        return 0.0, False

    async def purge_expired(self) -> int:
        """Drop expired sessions, full buckets, past counts and ended blocks from the front of
        each structure; return how many went. Costs what it drops."""
        now = self._clock.monotonic()
        dropped = _drop_expired_sessions(self._probation, now) + _drop_expired_sessions(self._protected, now)
        dropped += _drop_full_buckets(self._buckets, now, -1)
        dropped += _drop_past_attempts(self._attempts, int(now), -1)
        return dropped + _drop_ended_blocks(self._blocked, now, -1)


# Each drops entries that are over from the front of its structure, at most ``limit`` of them
# (-1: all), stopping at the first live one; it returns how many went. A live entry may hide an
# over one behind it when rates, ttls or block lengths changed; it goes when the front reaches it.


def _drop_expired_sessions(sessions: Sessions, now: float) -> int:
    dropped = 0
    while sessions and next(iter(sessions.values()))[1] <= now:
        sessions.popitem(last=False)
        dropped += 1
    return dropped


def _drop_full_buckets(buckets: Buckets, now: float, limit: int) -> int:
    dropped = 0
    while dropped != limit and buckets and next(iter(buckets.values()))[2] <= now:
        buckets.popitem(last=False)  # a full bucket is the same as none
        dropped += 1
    return dropped


def _drop_past_attempts(attempts: Attempts, second: int, limit: int) -> int:
    dropped = 0
    while dropped != limit and attempts and next(iter(attempts.values()))[0] != second:
        attempts.popitem(last=False)
        dropped += 1
    return dropped


def _drop_ended_blocks(blocked: Blocks, now: float, limit: int) -> int:
    dropped = 0
    while dropped != limit and blocked and next(iter(blocked.values())) <= now:
        blocked.popitem(last=False)
        dropped += 1
    return dropped
