"""Shared-memory state store: worker processes on one host share one set of sessions, buckets and blocks.

One region (a memfd, else an unlinked temp file) holds a header and three fixed-size
tables; every process maps all of it. The creator makes it
(:meth:`SharedMemoryStore.create`) and passes ``store.fd`` to its children, which
:meth:`SharedMemoryStore.attach` to it. Layout, eviction and locking: docs/state.md,
"Several workers on one host, no Redis: shared memory".

- Each table is set-associative: a key's keyed blake2b digest picks one set of ``WAYS``
  slots, and the key lives in that set or nowhere. So every operation reads and writes
  one set (O(WAYS)), under one ``fcntl.lockf`` byte-range lock on that set's first byte.
  The kernel drops a process's locks when it dies, so a killed worker wedges nobody.
- When a key's set is full, the entry that matters least goes: an expired one, else (sessions)
  one never looked up again before one in use, the soonest to expire first; (buckets) the
  one closest to full; (flood) the one whose count or block ends first.
- No await inside a critical section, and a process uses the store from one thread: POSIX
  record locks belong to the process, so they keep processes apart, not threads.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import mmap
import os
import secrets
import struct
import tempfile
from bisect import bisect_right
from collections.abc import Sequence
from typing import Final

from ..clock import Clock
from .base import DEFAULT_MAX_SESSIONS, StateStore
from .memory import refill, take_one

MAGIC: Final = b"OMXLBSHM"
VERSION: Final = 1
WAYS: Final = 16  # slots per set: the probe window, and what one lock covers
DEFAULT_MAX_CLIENTS: Final = 100_000  # buckets, and flood counts or blocks: each table holds this many clients
# The longest backend id the module makes (module._new_id): a 253-character host name, ":65535",
# "~" and a counter; 8 digits leave room for 10**8 backends added at one address.
MAX_BACKEND_ID_BYTES: Final = 268
SECRET_SLOTS: Final = 16  # names of shared secrets (the proxy uses one: "affinity")
PURGE_YIELD: Final = 256  # sets purge_expired cleans between two yields to the event loop
COUNT_SWEEP: Final = 64  # sets session_count cleans of expired sessions per call, in turn
PAGE: Final = 4096

_blake2b: Final = hashlib.blake2b
_lockf: Final = fcntl.lockf
LOCK_EX: Final = fcntl.LOCK_EX
LOCK_UN: Final = fcntl.LOCK_UN

KEY: Final = 16  # digest bytes
ZERO_KEY: Final = bytes(KEY)  # an empty slot
NO_KEYS: Final = bytes(KEY * WAYS)  # a set with every slot empty
INF: Final = float("inf")
EMPTY, PROBATION, PROTECTED = 0, 1, 2  # a session's flag: bound only, or looked up again since

# The header page. Bytes 0 and 1 are never written after create; their locks guard the
# counters and the secrets (lockf ranges need not hold what they guard).
HEADER: Final = struct.Struct("<8sII16sQIIIII")  # magic, version, header size, salt, region size,
# ways, session sets, backend id bytes, bucket sets, flood sets
COUNTERS_AT: Final = 128
COUNTERS: Final = struct.Struct("<qqq")  # sessions held, live sessions evicted, session_count's sweep cursor
COUNTERS_LOCK: Final = 0
SECRETS_AT: Final = 256
SECRET: Final = 32
SECRETS_LOCK: Final = 1

F64: Final = struct.Struct("<d")
U16: Final = struct.Struct("<H")
BUCKET: Final = struct.Struct("<ddd")  # tokens, last, full_at
FLOOD: Final = struct.Struct("<qqd")  # second, count (0 while blocked), until (0.0: never blocked)
RECORD: Final = 24  # BUCKET.size == FLOOD.size


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class Layout:
    """Offsets and sizes, derived from the capacities alone: the creator writes the capacities in
    the header and an attaching process derives the same layout from them."""

    def __init__(self, session_sets: int, value_bytes: int, bucket_sets: int, flood_sets: int) -> None:
        self.session_sets = session_sets
        self.value_bytes = value_bytes
        self.bucket_sets = bucket_sets
        self.flood_sets = flood_sets
        # A session set: keys, expiries, flags, value lengths, values; by field, so that one
        # find() or one unpack reads a field of the whole set.
        self.expires_at = KEY * WAYS
        self.flags_at = self.expires_at + 8 * WAYS
        self.lens_at = self.flags_at + WAYS
        self.values_at = self.lens_at + 2 * WAYS
        self.session_set = _round_up(self.values_at + value_bytes * WAYS, 64)
        self.record_set = (KEY + RECORD) * WAYS  # buckets and flood: keys, then records
        self.sessions = PAGE
        self.buckets = self.sessions + session_sets * self.session_set
        self.flood = self.buckets + bucket_sets * self.record_set
        self.size = _round_up(self.flood + flood_sets * self.record_set, PAGE)


def _open_region(size: int) -> int:
    """A file of ``size`` zero bytes that no name reaches: gone with its last fd and mapping."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("omnixan-lb-state", os.MFD_CLOEXEC)
    else:  # not Linux: a temp file, unlinked at once (tmpfs if there is one)
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="omnixan-lb-state-", dir=directory)
        os.unlink(path)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _slot(blob: bytes, digest: bytes) -> int:
    """The slot of a set whose key is ``digest`` (-1: none); ``blob`` is the set's keys."""
    at = blob.find(digest)
    while at >= 0:
        if not at & 15:  # KEY-aligned: a whole key, not the tail of one and the head of the next
            return at >> 4
        at = blob.find(digest, at + 1)
    return -1


def _any_over(ends: Sequence[float], now: float) -> bool:
    """Whether an end is in ``(0.0, now]``: over, not a slot never used."""
    ordered = sorted(ends)
    return bisect_right(ordered, now) > ordered.count(0.0)


class SharedMemoryStore(StateStore):
    """A :class:`StateStore` in a shared memory region: :meth:`create` it in the supervisor, pass
    :attr:`fd` to each worker (``subprocess`` ``pass_fds``, or inherit it across ``fork``) and
    :meth:`attach` there. Every process sees the same sessions, buckets, blocks and secrets."""

    def __init__(self, fd: int, clock: Clock, *, _layout: Layout, _salt: bytes) -> None:
        layout = _layout
        self.fd = fd
        self.purges = True  # see attach()
        self.size = layout.size
        self._clock = clock
        self._layout = layout
        self._salt = _salt
        self._mm = mmap.mmap(fd, layout.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.max_sessions = layout.session_sets * WAYS
        self.max_clients = layout.bucket_sets * WAYS
        self.max_backend_id_bytes = layout.value_bytes
        self._expiries = struct.Struct(f"<{WAYS}d")
        self._records = struct.Struct("<" + "ddd" * WAYS)
        self._floods = struct.Struct("<" + "qqd" * WAYS)
        self._secrets: dict[str, bytes] = {}  # a secret never changes once made: read once
        self._closed = False

    # -- making and attaching -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        clock: Clock,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> SharedMemoryStore:
        """A new region with room for ``max_sessions`` sessions and ``max_clients`` buckets and
        as many flood entries, each rounded up to a multiple of ``WAYS``."""
        if max_sessions < 1:
            raise ValueError(f"SharedMemoryStore: max_sessions must be >= 1, got {max_sessions}")
        if max_clients < 1:
            raise ValueError(f"SharedMemoryStore: max_clients must be >= 1, got {max_clients}")
        sets = -(-max_clients // WAYS)
        layout = Layout(-(-max_sessions // WAYS), MAX_BACKEND_ID_BYTES, sets, sets)
        salt = secrets.token_bytes(16)  # keys the digests: clients cannot aim ids at one set
        fd = _open_region(layout.size)
        try:
            store = cls(fd, clock, _layout=layout, _salt=salt)
        except BaseException:
            os.close(fd)
            raise
        HEADER.pack_into(
            store._mm,
            0,
            MAGIC,
            VERSION,
            PAGE,
            salt,
            layout.size,
            WAYS,
            layout.session_sets,
            layout.value_bytes,
            layout.bucket_sets,
            layout.flood_sets,
        )
        return store

    @classmethod
    def attach(cls, fd: int, clock: Clock, *, purges: bool = True) -> SharedMemoryStore:
        """The store in the region behind ``fd`` (made by :meth:`create`, in this process or
        another). The store owns ``fd`` from here on: :meth:`close` closes it. ``purges=False``:
        :meth:`purge_expired` does nothing here, because another process (the supervisor) sweeps
        the region for all; a sweep reads every page, which would make all of it resident in each."""
        where = f"SharedMemoryStore.attach: fd {fd}"
        size = os.fstat(fd).st_size
        if size < HEADER.size:
            raise ValueError(f"{where} holds {size} bytes, too few for a header: not a shared state region")
        head = os.pread(fd, HEADER.size, 0)
        magic, version, header_size, salt, region_size, ways, session_sets, value_bytes, bucket_sets, flood_sets = (
            HEADER.unpack(head)
        )
        if magic != MAGIC:
            raise ValueError(f"{where} is not a shared state region: magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise ValueError(
                f"{where} holds a version {version} region; this build reads version {VERSION} "
                "(are the supervisor and the workers the same build?)"
            )
        if header_size != PAGE or ways != WAYS:
            raise ValueError(f"{where}: header size {header_size} and ways {ways}, expected {PAGE} and {WAYS}")
        if min(session_sets, value_bytes, bucket_sets, flood_sets) < 1:
            raise ValueError(f"{where}: a capacity in the header is 0 (a damaged header)")
        layout = Layout(session_sets, value_bytes, bucket_sets, flood_sets)
        if region_size != layout.size or size < layout.size:
            raise ValueError(
                f"{where}: the header's capacities need {layout.size} bytes, the header says {region_size} "
                f"and the file holds {size}"
            )
        store = cls(fd, clock, _layout=layout, _salt=salt)
        store.purges = purges
        return store

    async def close(self) -> None:
        """Unmap the region and close the fd. The region lives on in the processes still attached."""
        if not self._closed:
            self._closed = True
            self._mm.close()
            os.close(self.fd)

    # -- the parts every operation shares ------------------------------------------------------

    def _digest(self, key: str) -> bytes:
        # The secret salt first: a keyed hash (BLAKE2 has no length extension) at the cost of one
        # compression for keys up to 112 bytes, where blake2b(key=) costs two.
        digest = _blake2b(self._salt + key.encode("utf-8", "surrogatepass"), digest_size=KEY).digest()
        return digest if digest != ZERO_KEY else b"\x01" + digest[1:]  # all zeros marks an empty slot

    def _lock(self, at: int) -> None:
        _lockf(self.fd, LOCK_EX, 1, at)  # waits: the holder is inside one short operation, or dead and released

    def _unlock(self, at: int) -> None:
        _lockf(self.fd, LOCK_UN, 1, at)

    def _count(self, held: int, evicted: int) -> None:
        """Add to the shared counters (called with a set's lock held: the order is always set, then counters)."""
        mm = self._mm
        self._lock(COUNTERS_LOCK)
        try:
            now_held, now_evicted, cursor = COUNTERS.unpack_from(mm, COUNTERS_AT)
            COUNTERS.pack_into(mm, COUNTERS_AT, now_held + held, now_evicted + evicted, cursor)
        finally:
            self._unlock(COUNTERS_LOCK)

    @property
    def evicted_sessions(self) -> int:  # type: ignore[override]  # one count for all the processes attached
        return int(COUNTERS.unpack_from(self._mm, COUNTERS_AT)[1])

    def _session_set(self, digest: bytes) -> int:
        layout = self._layout
        return layout.sessions + int.from_bytes(digest[:8], "little") % layout.session_sets * layout.session_set

    def _bucket_set(self, digest: bytes) -> int:
        layout = self._layout
        return layout.buckets + int.from_bytes(digest[:8], "little") % layout.bucket_sets * layout.record_set

    def _flood_set(self, digest: bytes) -> int:
        layout = self._layout
        return layout.flood + int.from_bytes(digest[:8], "little") % layout.flood_sets * layout.record_set

    # -- sessions ------------------------------------------------------------------------------

    async def get_session(self, session_id: str, ttl: float) -> str | None:
        now = self._clock.monotonic()
        digest = self._digest(session_id)
        base = self._session_set(digest)
        layout, mm = self._layout, self._mm
        self._lock(base)
        try:
            i = _slot(mm[base : base + KEY * WAYS], digest)
            if i < 0:
                return None
            expires_at = base + layout.expires_at + 8 * i
            if F64.unpack_from(mm, expires_at)[0] <= now:
                self._drop_session(base, i)  # expired: dropped, as MemoryStore does
                self._count(-1, 0)
                return None
            F64.pack_into(mm, expires_at, now + ttl)
            mm[base + layout.flags_at + i] = PROTECTED
            length = U16.unpack_from(mm, base + layout.lens_at + 2 * i)[0]
            value_at = base + layout.values_at + layout.value_bytes * i
            value = mm[value_at : value_at + length]
        finally:
            self._unlock(base)
        # "replace": a worker killed in the middle of a rebind may leave a torn value, which then
        # names no backend, and the module routes the request afresh.
        return value.decode(errors="replace")

    async def bind_session(self, session_id: str, backend_id: str, ttl: float) -> None:
        value = backend_id.encode()
        layout, mm = self._layout, self._mm
        if len(value) > layout.value_bytes:
            raise ValueError(
                f"SharedMemoryStore: a backend id has at most {layout.value_bytes} bytes in UTF-8, "
                f"got {len(value)} ({backend_id[:60]!r}...)"
            )
        now = self._clock.monotonic()
        digest = self._digest(session_id)
        base = self._session_set(digest)
        self._lock(base)
        try:
            keys = mm[base : base + KEY * WAYS]
            i = _slot(keys, digest)
            flag = PROBATION
            if i >= 0:
                flag = mm[base + layout.flags_at + i]  # a rebind keeps a session in use protected
            else:
                i = _slot(keys, ZERO_KEY)
                if i >= 0:
                    self._count(1, 0)
                else:
                    i = self._session_victim(base, now)
                    mm[base + KEY * i : base + KEY * (i + 1)] = ZERO_KEY  # a crash from here on leaves it empty
            value_at = base + layout.values_at + layout.value_bytes * i
            mm[value_at : value_at + len(value)] = value
            U16.pack_into(mm, base + layout.lens_at + 2 * i, len(value))
            F64.pack_into(mm, base + layout.expires_at + 8 * i, now + ttl)
            mm[base + layout.flags_at + i] = flag
            mm[base + KEY * i : base + KEY * (i + 1)] = digest  # last: the slot is found once whole
        finally:
            self._unlock(base)

    def _drop_session(self, base: int, i: int) -> None:
        layout, mm = self._layout, self._mm
        mm[base + KEY * i : base + KEY * (i + 1)] = ZERO_KEY
        mm[base + layout.flags_at + i] = EMPTY
        F64.pack_into(mm, base + layout.expires_at + 8 * i, INF)

    def _session_victim(self, base: int, now: float) -> int:
        """The slot of a full set to reuse: an expired session, else the soonest to expire of those
        never looked up again (probation), else of all. A live one is counted as evicted."""
        layout, mm = self._layout, self._mm
        expiries = self._expiries.unpack_from(mm, base + layout.expires_at)
        flags = mm[base + layout.flags_at : base + layout.flags_at + WAYS]
        victim = min(range(WAYS), key=lambda i: (expiries[i] > now, flags[i], expiries[i]))
        if expiries[victim] > now:  # an expired one would have gone anyway: not an eviction
            self._count(0, 1)
        return victim

    async def session_count(self) -> int:
        """Sessions held. Expired ones count until a lookup, a bind into their set,
        ``purge_expired`` or this call's sweep (``COUNT_SWEEP`` sets a call, in turn) drops them."""
        now = self._clock.monotonic()
        sets = self._layout.session_sets
        mm = self._mm
        cursor = COUNTERS.unpack_from(mm, COUNTERS_AT)[2]  # racy between processes: harmless, a set swept twice
        for n in range(min(COUNT_SWEEP, sets)):
            self._purge_session_set((cursor + n) % sets, now)
        self._lock(COUNTERS_LOCK)
        try:
            held, evicted, _ = COUNTERS.unpack_from(mm, COUNTERS_AT)
            COUNTERS.pack_into(mm, COUNTERS_AT, held, evicted, (cursor + COUNT_SWEEP) % sets)
        finally:
            self._unlock(COUNTERS_LOCK)
        return int(held)

    async def shared_secret(self, name: str) -> bytes:
        secret = self._secrets.get(name)
        if secret is None:
            secret = self._secrets[name] = self._find_or_make_secret(name)
        return secret

    def _find_or_make_secret(self, name: str) -> bytes:
        digest = self._digest(name)
        mm = self._mm
        entry = KEY + SECRET
        self._lock(SECRETS_LOCK)
        try:
            table = mm[SECRETS_AT : SECRETS_AT + entry * SECRET_SLOTS]
            for i in range(SECRET_SLOTS):
                at = entry * i
                if table[at : at + KEY] == digest:
                    return table[at + KEY : at + entry]
                if table[at : at + KEY] == ZERO_KEY:
                    secret = secrets.token_bytes(SECRET)
                    mm[SECRETS_AT + at + KEY : SECRETS_AT + at + entry] = secret
                    mm[SECRETS_AT + at : SECRETS_AT + at + KEY] = digest  # last: found once whole
                    return secret
        finally:
            self._unlock(SECRETS_LOCK)
        raise RuntimeError(f"SharedMemoryStore: room for {SECRET_SLOTS} secret names, all taken; {name!r} is one more")

    # -- rate limit and flood blocks -----------------------------------------------------------

    async def take_token(self, key: str, rate: float, burst: int) -> float:
        now = self._clock.monotonic()
        digest = self._digest(key)
        base = self._bucket_set(digest)
        mm = self._mm
        self._lock(base)
        try:
            keys = mm[base : base + KEY * WAYS]
            i = _slot(keys, digest)
            if i >= 0:
                tokens, last, _ = BUCKET.unpack_from(mm, base + KEY * WAYS + RECORD * i)
                tokens = refill(tokens, last, now, rate, burst)
                new = False
            else:  # no bucket: a full one
                tokens = float(burst)
                new = True
                i = _slot(keys, ZERO_KEY)
                if i < 0:  # the bucket closest to full goes: a full bucket is the same as none
                    full_at = self._records.unpack_from(mm, base + KEY * WAYS)[2::3]
                    i = min(range(WAYS), key=full_at.__getitem__)
            tokens, wait = take_one(tokens, rate)
            BUCKET.pack_into(mm, base + KEY * WAYS + RECORD * i, tokens, now, now + (burst - tokens) / rate)
            if new:
                mm[base + KEY * i : base + KEY * (i + 1)] = digest
        finally:
            self._unlock(base)
        return wait

    async def record_attempt(self, key: str, threshold: int, block_seconds: float) -> tuple[float, bool]:
        now = self._clock.monotonic()
        second = int(now)
        digest = self._digest(key)
        base = self._flood_set(digest)
        mm = self._mm
        self._lock(base)
        try:
            keys = mm[base : base + KEY * WAYS]
            i = _slot(keys, digest)
            if i >= 0:
                record_at = base + KEY * WAYS + RECORD * i
                window, count, until = FLOOD.unpack_from(mm, record_at)
                if until > now:
                    return until - now, False
                count = count + 1 if window == second else 1  # a block's count is 0: it starts afresh
                new = False
            else:
                count, new = 1, True
                i = _slot(keys, ZERO_KEY)
                if i < 0:  # the one whose count (its second) or block ends first goes; of those, the lowest count
                    ends = self._ends(base, False)
                    counts = self._floods.unpack_from(mm, base + KEY * WAYS)[1::3]
                    i = min(range(WAYS), key=lambda j: (ends[j], counts[j]))
                record_at = base + KEY * WAYS + RECORD * i
            if count > threshold and block_seconds > 0:
                FLOOD.pack_into(mm, record_at, second, 0, now + block_seconds)
                answer = (block_seconds, True)
            else:
                FLOOD.pack_into(mm, record_at, second, count, 0.0)
                answer = (0.0, False)
            if new:
                mm[base + KEY * i : base + KEY * (i + 1)] = digest
        finally:
            self._unlock(base)
        return answer

    # -- upkeep --------------------------------------------------------------------------------

    async def purge_expired(self) -> int:
        """Drop expired sessions, full buckets, past counts and ended blocks from every set; return
        how many went. Walks the tables a set at a time (one lock each), yielding to the event loop
        every ``PURGE_YIELD`` sets: about 2 us a set, so a pause of well under a millisecond."""
        if not self.purges:
            return 0
        now = self._clock.monotonic()
        layout = self._layout
        dropped = 0
        for s in range(layout.session_sets):
            dropped += self._purge_session_set(s, now)
            if s % PURGE_YIELD == PURGE_YIELD - 1:
                await asyncio.sleep(0)
        for s in range(layout.bucket_sets):
            dropped += self._purge_record_set(layout.buckets + s * layout.record_set, now, buckets=True)
            if s % PURGE_YIELD == PURGE_YIELD - 1:
                await asyncio.sleep(0)
        for s in range(layout.flood_sets):
            dropped += self._purge_record_set(layout.flood + s * layout.record_set, now, buckets=False)
            if s % PURGE_YIELD == PURGE_YIELD - 1:
                await asyncio.sleep(0)
        return dropped

    # Each purge first reads its set without the lock, as a hint (a torn read costs a useless lock
    # or leaves an entry to the next purge): a set with nothing over, the common case, costs an
    # unpack and no lock. A slot dropped has an end of +inf; a slot never used, 0.0 (not over).

    def _purge_session_set(self, index: int, now: float) -> int:
        layout, mm = self._layout, self._mm
        base = layout.sessions + index * layout.session_set
        if not _any_over(self._expiries.unpack_from(mm, base + layout.expires_at), now):
            return 0
        self._lock(base)
        try:
            keys = mm[base : base + KEY * WAYS]
            expiries = self._expiries.unpack_from(mm, base + layout.expires_at)
            dropped = 0
            for i in range(WAYS):
                if expiries[i] <= now and keys[KEY * i : KEY * (i + 1)] != ZERO_KEY:
                    self._drop_session(base, i)
                    dropped += 1
            if dropped:
                self._count(-dropped, 0)
        finally:
            self._unlock(base)
        return dropped

    def _purge_record_set(self, base: int, now: float, *, buckets: bool) -> int:
        mm = self._mm
        if mm[base : base + KEY * WAYS] == NO_KEYS or (buckets and not _any_over(self._ends(base, True), now)):
            return 0
        self._lock(base)
        try:
            keys = mm[base : base + KEY * WAYS]
            ends = self._ends(base, buckets)
            dropped = 0
            for i in range(WAYS):
                if ends[i] <= now and keys[KEY * i : KEY * (i + 1)] != ZERO_KEY:
                    mm[base + KEY * i : base + KEY * (i + 1)] = ZERO_KEY
                    F64.pack_into(mm, base + KEY * WAYS + RECORD * i + 16, INF)  # full_at, until
                    dropped += 1
        finally:
            self._unlock(base)
        return dropped

    def _ends(self, base: int, buckets: bool) -> list[float]:
        """When each slot's entry is over: a bucket when it is full again; a flood entry when its
        block has ended and its second is past (``second + 1 <= now`` is ``second != int(now)``)."""
        if buckets:
            return list(self._records.unpack_from(self._mm, base + KEY * WAYS)[2::3])
        fields = self._floods.unpack_from(self._mm, base + KEY * WAYS)
        return [max(fields[j + 2], fields[j] + 1.0) for j in range(0, 3 * WAYS, 3)]
