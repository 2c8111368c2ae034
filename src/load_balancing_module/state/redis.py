"""Redis state store: sessions, token buckets and the flood-block list shared by several balancers.

Every operation is one Lua script (EVALSHA), so it is atomic on the Redis side
however many balancers run it at once. Time comes from the Redis server
(``TIME`` inside the script) because the monotonic clocks of different hosts
cannot be compared; a ``now`` callable replaces it for deterministic tests.
Keys live under ``prefix`` and carry Redis TTLs, so nothing grows without bound.

When Redis is unreachable or errors, the store fails open: the rate limit and
the flood check admit the request, sessions are unsticky (no binding found,
bindings not saved). A breaker keeps Redis's trouble off the request path:

- in doubt: while a call has gone unanswered for ``doubt_after`` seconds (Redis
  answers in well under a millisecond), every new call fails open at once
  instead of queueing behind it, until that call answers (then normal again) or
  fails (then the back-off); so a hung Redis costs its ``timeout`` only to the
  calls already on their way;
- back-off: after a failure the store does not try Redis for ``retry_interval``
  seconds; then one call probes it while the others keep failing open.

Sessions are a segmented LRU capped at ``max_sessions``, as in the memory store
(a probation and a protected sorted set). See docs/state.md.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._extras import require
from .._log import log_event
from ..clock import Clock, SystemClock
from . import redis_scripts as scripts
from .base import DEFAULT_MAX_SESSIONS, StateStore, protected_room
from .redis_targets import connect, describe
from .redis_targets import redact as redact  # where callers have always found it

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.commands.core import AsyncScript

Script = Callable[[Sequence[str], Sequence[Any]], Awaitable[Any]]  # (keys, args) -> reply

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "omnixan:"
DEFAULT_TIMEOUT = 0.25  # seconds for a connect and for a reply; Redis answers in well under 1 ms on a LAN
RETRY_INTERVAL = 1.0  # seconds without trying Redis after a failure
# Redis is in doubt when a call has gone unanswered this long and no call was answered for as long:
# while it is, every other call fails open at once instead of queueing behind it for the whole
# timeout. Redis answers in well under 1 ms on a LAN. 50 ms is far above that, above this process's
# own longest event-loop stalls (about 7 ms during a reload) and above a cold start (50 concurrent
# first calls, each opening its connection, got their first answer after 14 to 20 ms here), so it
# trips on a hung or failing Redis, not on ordinary latency or a busy balancer.
DOUBT_AFTER = 0.05
SECRET_BYTES = 32
# Connections in the pool of a client the store makes (redis-py 8's default, explicit because earlier
# versions allow 2**31): as many calls may be on their way at once. Redis answers a call in well under
# a millisecond, so that is tens of thousands of calls a second; a call beyond it fails open at once.
MAX_CONNECTIONS = 100
LOG_INTERVAL = 30.0  # seconds between "still unavailable" log lines during an outage


class RedisStore(StateStore):
    """A :class:`StateStore` in Redis, shared by every balancer that uses the same Redis and prefix.

    ``target`` is a URL (the store creates and closes the client): ``redis://`` / ``rediss://``,
    ``redis+sentinel://[password@]host:port,.../service[/db]`` or ``redis+cluster://[password@]host:port,...``
    (:mod:`.redis_targets`); or a ``redis.asyncio.Redis`` or ``RedisCluster`` client you own
    (Sentinel's ``master_for``, custom TLS...). On a Cluster, the keys a script touches together
    share a hash tag (docs/state.md, *Key layout*).
    ``timeout`` bounds each connect and each reply, in seconds. ``now`` (seconds, any epoch,
    the same for every balancer) replaces the Redis server's clock, for tests. ``clock`` times
    the breaker (doubt and back-off). ``doubt_after``: seconds a call may go unanswered before
    the others stop waiting for Redis. ``max_sessions``: the sessions kept (the whole fleet's:
    the bound is on Redis).

    ``errors`` counts Redis calls that failed (or were cancelled while in doubt); ``fallbacks``
    counts operations answered by the failure policy (failed, or skipped while in doubt, backing
    off, or with every connection of the client's pool on its way); ``available`` is False during
    an outage; ``evicted_sessions`` counts the live sessions this balancer's binds evicted.
    """

    def __init__(
        self,
        target: str | Redis | RedisCluster = DEFAULT_URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        retry_interval: float = RETRY_INTERVAL,
        doubt_after: float = DOUBT_AFTER,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        log_interval: float = LOG_INTERVAL,
        now: Callable[[], float] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if timeout <= 0 or retry_interval < 0 or log_interval < 0 or doubt_after < 0:
            raise ValueError(
                f"RedisStore: timeout must be > 0 and the intervals >= 0 (timeout={timeout}, "
                f"retry_interval={retry_interval}, log_interval={log_interval}, "
                f"doubt_after={doubt_after})"
            )
        if max_sessions < 1:
            raise ValueError(f"RedisStore: max_sessions must be >= 1, got {max_sessions}")
        # here, not at import: redis costs ~50 ms to load, and it is an extra ([redis])
        require("RedisStore", "redis", "redis")
        from redis.asyncio.cluster import RedisCluster
        from redis.exceptions import RedisError

        self.prefix = prefix
        self._client, self._owns_client, self.url = _client(target, timeout)
        self._now = now
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.retry_interval = retry_interval
        self.doubt_after = doubt_after
        self.max_sessions = max_sessions
        self._protected_room = protected_room(max_sessions)
        self.evicted_sessions = 0
        self._pending: dict[int, float] = {}  # calls on their way, oldest first: when each began
        # No more calls on their way than the pool has connections: redis-py's pool raises at once
        # when it is out of them, which would count a healthy Redis as failing.
        self._max_pending = _max_connections(self._client)
        self._answered_at = float("-inf")  # when a call last got its answer
        self._call_seq = 0
        self._secrets: dict[str, bytes] = {}  # the last key Redis gave, or this process's own meanwhile
        self._local_secrets: set[str] = set()  # names whose key is this process's own (Redis did not answer)
        self.log_interval = log_interval
        # Redis errors, and what an interrupted socket may raise before redis-py wraps it.
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
        # On a Cluster, keys that one script touches share a hash tag: every session key and both
        # indexes ({<prefix>sessions}), a client's flood count and block ({<prefix>flood:<key>}).
        # Plain Redis and Sentinel keep the untagged layout of earlier versions.
        self.cluster = isinstance(self._client, RedisCluster)
        index = f"{{{prefix}sessions}}" if self.cluster else f"{prefix}sessions"
        self._sessions = (index, f"{index}:probation")  # protected, probation
        self._session_prefix = f"{index}:session:" if self.cluster else f"{prefix}session:"
        self._take = self._script(scripts.TAKE_TOKEN)
        self._attempt = self._script(scripts.RECORD_ATTEMPT)
        self._get = self._script(scripts.GET_SESSION)
        self._bind = self._script(scripts.BIND_SESSION)
        self._count = self._script(scripts.SESSION_COUNT)
        self._purge = self._script(scripts.PURGE)
        self._secret = self._script(scripts.SHARED_SECRET)
        self.errors = 0
        self.fallbacks = 0
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._probing = False
        self._logged_at = 0.0

    @property
    def available(self) -> bool:
        """False from a failed Redis call until the next one that succeeds."""
        return self._down_since is None

    # -- the StateStore interface ----------------------------------------------------

    async def get_session(self, session_id: str, ttl: float) -> str | None:
        keys = (self._session_prefix + session_id, *self._sessions)
        args = (ttl, self._time(), session_id, self._protected_room)
        ok, backend = await self._eval("get_session", self._get, keys, args)
        return _text(backend) if ok and backend is not None else None

    async def bind_session(self, session_id: str, backend_id: str, ttl: float) -> None:
        keys = (self._session_prefix + session_id, *self._sessions)
        args = (
            backend_id,
            ttl,
            self._time(),
            session_id,
            self.max_sessions,
            self._protected_room,
            self._session_prefix,
        )
        ok, evicted = await self._eval("bind_session", self._bind, keys, args)
        if ok and evicted:
            self.evicted_sessions += int(evicted)

    async def session_count(self) -> int:
        """Live sessions, from the two indexes (sorted sets by expiry): O(log n). 0 while Redis is down."""
        ok, count = await self._eval("session_count", self._count, self._sessions, (self._time(),))
        return int(count) if ok else 0

    async def take_token(self, key: str, rate: float, burst: int) -> float:
        """As :meth:`StateStore.take_token`; 0.0 (taken) while Redis is down."""
        ok, wait = await self._eval(
            "take_token", self._take, (f"{self.prefix}bucket:{key}",), (rate, burst, self._time())
        )
        return float(_text(wait)) if ok else 0.0

    async def record_attempt(self, key: str, threshold: int, block_seconds: float) -> tuple[float, bool]:
        """As :meth:`StateStore.record_attempt`; ``(0.0, False)`` (not blocked) while Redis is down."""
        keys = self._flood_keys(key)
        ok, reply = await self._eval("record_attempt", self._attempt, keys, (threshold, block_seconds, self._time()))
        if not ok:
            return 0.0, False
        return float(_text(reply[0])), bool(reply[1])

    async def purge_expired(self) -> int:
        """Drop expired sessions from the session indexes (at most 10,000 from each a call); return how many.

        Buckets, flood counters, blocks and the session keys themselves are expired by
        Redis (their TTLs), so they are not counted here."""
        ok, removed = await self._eval("purge_expired", self._purge, self._sessions, (self._time(),))
        return int(removed) if ok else 0

    async def shared_secret(self, name: str) -> bytes:
        """The key ``name`` that every balancer on this Redis shares, in one round trip: the first
        to ask stores it (``SET NX``), the others read it. Each call offers the key this store
        knows (or a new random one), so a key lost with a Redis restart without persistence is set
        again by the next balancer to ask, to the one the fleet had. If Redis does not answer (or
        holds no usable key), a key of this process's own, logged once and kept until Redis answers.
        Ask again now and then (a timer, not every request: this is a Redis call)."""
        offer = self._secrets.get(name)
        if offer is None:
            offer = secrets.token_bytes(SECRET_BYTES)
        ok, value = await self._eval("shared_secret", self._secret, (f"{self.prefix}secret:{name}",), (offer.hex(),))
        shared = _secret(value) if ok else None
        if shared is None:
            if name not in self._local_secrets:
                self._local_secrets.add(name)
                reason = "the state store did not answer" if not ok else "the state store holds no usable key"
                log_event(
                    "shared_secret_local", logging.WARNING, name=name, reason=reason, key=f"{self.prefix}secret:{name}"
                )
            self._secrets[name] = offer
            return offer
        if name in self._local_secrets:
            self._local_secrets.discard(name)
            log_event("shared_secret_shared", name=name, same_as_local=shared == offer)
        self._secrets[name] = shared
        return shared

    async def ping(self) -> bool:
        """Whether Redis answers now (through the same failure policy as every operation)."""
        ok, _ = await self._call("ping", self._client.ping)
        return ok

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # -- calls and the failure policy ---------------------------------------------------

    def _flood_keys(self, key: str) -> tuple[str, str]:
        """(block, attempts) of ``key``: one hash tag on a Cluster, starting with its own brace so that
        no brace in the prefix or the key can split the two."""
        if self.cluster:
            tag = f"{{{self.prefix}flood:{key}}}"
            return f"{tag}:block", tag
        return f"{self.prefix}block:{key}", f"{self.prefix}flood:{key}"

    def _time(self) -> str:
        return "" if self._now is None else repr(float(self._now()))

    def _script(self, body: str) -> Script:
        script: AsyncScript = self._client.register_script(scripts.PRELUDE + body)
        return lambda keys, args: script(keys=keys, args=args)

    async def _eval(self, op: str, script: Script, keys: Sequence[str], args: Sequence[Any]) -> tuple[bool, Any]:
        return await self._call(op, lambda: script(keys, args))

    async def _call(self, op: str, request: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        """``(True, reply)``, or ``(False, None)`` when Redis is down or fails, so the caller fails open."""
        probe = self._may_try()
        if probe is None:
            self.fallbacks += 1
            return False, None
        self._call_seq = seq = self._call_seq + 1
        self._pending[seq] = began = self._clock.monotonic()
        try:
            reply = await request()
        except self._errors as exc:
            self._failed(op, exc)
            return False, None
        except asyncio.CancelledError:
            # A caller's deadline ended a call that was in doubt: as good as a timeout. Without
            # this, callers with deadlines shorter than ``timeout`` would clear the doubt each
            # time and let the next batch of calls queue behind a hung Redis again.
            if self._silent_since(began):
                self._failed(op, TimeoutError(f"cancelled after {self.doubt_after} s unanswered"), answered=False)
            raise
        finally:
            del self._pending[seq]
            if probe:  # even when cancelled: a stuck probe flag would keep the store failing open
                self._probing = False
        self._answered_at = self._clock.monotonic()
        if self._down_since is not None:
            self._succeeded()
        return True, reply

    def _may_try(self) -> bool | None:
        """None: do not try Redis (in doubt, or backing off); False: a normal call; True: the probe after an outage."""
        if self._down_since is None:
            if self._pending and (len(self._pending) >= self._max_pending or self._in_doubt()):
                return None  # every connection busy, or Redis silent (it is usually sub-millisecond)
            return False
        if self._probing or self._clock.monotonic() < self._retry_at:
            return None
        self._probing = True  # one call tries Redis again; the others keep failing open meanwhile
        return True

    def _in_doubt(self) -> bool:
        return self._silent_since(next(iter(self._pending.values())))  # the oldest call on its way

    def _silent_since(self, began: float) -> bool:
        """A call that began at ``began`` has gone unanswered for ``doubt_after``, and no call was
        answered meanwhile. The second half keeps a busy balancer (replies read late, but read), a
        burst of calls opening connections, or one slow script, from counting as a silent Redis."""
        now = self._clock.monotonic()
        return now - began > self.doubt_after and now - self._answered_at > self.doubt_after

    def _failed(self, op: str, exc: BaseException, *, answered: bool = True) -> None:
        """A call failed: back off. ``answered``: its operation got the fail-open answer (a fallback)."""
        self.errors += 1
        if answered:
            self.fallbacks += 1
        now = self._clock.monotonic()
        self._retry_at = now + self.retry_interval
        if self._down_since is None:
            self._down_since = self._logged_at = now
            log_event(
                "state_store_unavailable",
                logging.WARNING,
                store="redis",
                url=redact(self.url),
                operation=op,
                error=repr(exc),
                policy="fail open",
            )
        elif now - self._logged_at >= self.log_interval:
            self._logged_at = now
            log_event(
                "state_store_still_unavailable",
                logging.WARNING,
                store="redis",
                url=redact(self.url),
                seconds=round(now - self._down_since, 1),
                errors=self.errors,
                error=repr(exc),
            )

    def _succeeded(self) -> None:
        """The first answer after an outage."""
        assert self._down_since is not None
        seconds = self._clock.monotonic() - self._down_since
        self._down_since = None
        log_event(
            "state_store_recovered", store="redis", url=redact(self.url), seconds=round(seconds, 1), errors=self.errors
        )


def _client(target: str | Redis | RedisCluster, timeout: float) -> tuple[Redis | RedisCluster, bool, str]:
    """(client, whether the store owns it, the URL for logs)."""
    if not isinstance(target, str):
        return target, False, describe(target)
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    # One immediate retry on a dropped connection (a Redis restart leaves dead sockets in the
    # pool), none on a timeout: a hung Redis then costs one ``timeout``, not several.
    retry = Retry(NoBackoff(), 1, (RedisConnectionError,))
    options = {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": retry,
        "client_name": "omnixan-lb",
        "max_connections": MAX_CONNECTIONS,
    }
    return connect(target, options), True, target


def _max_connections(client: Redis | RedisCluster) -> int:
    """The connections the client's pool may open (a Cluster's: to each node)."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        return int(pool.max_connections)
    return int(client.get_connection_kwargs().get("max_connections") or MAX_CONNECTIONS)


def _secret(value: Any) -> bytes | None:
    """A key as stored by :meth:`RedisStore.shared_secret` (hex, at least 16 bytes), or None."""
    if value is None:
        return None
    try:
        secret = bytes.fromhex(_text(value))
    except ValueError:  # not a key this store wrote
        return None
    return secret if len(secret) >= 16 else None


def _text(value: Any) -> str:
    """A reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)
