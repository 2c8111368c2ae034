"""SharedMemoryStore: MemoryStore's semantics, shared by processes on one host through one memory region.

The semantic tests run against three stores: a ``MemoryStore`` (so the tests are known to
describe its behaviour), a ``SharedMemoryStore`` as created, and one attached to the created
region through another fd. Time is a ``FakeClock`` there. The tests with real processes attach
children (``subprocess``, ``pass_fds``) to the region and use the real clock, which
CLOCK_MONOTONIC makes one clock for the whole host. (``tests/test_state_shared.py`` is about
balancers sharing a Redis.)
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

import load_balancing_module
from load_balancing_module import FakeClock, SystemClock
from load_balancing_module.state import MemoryStore, StateStore
from load_balancing_module.state.shared import (
    HEADER,
    MAX_BACKEND_ID_BYTES,
    WAYS,
    SharedMemoryStore,
)

IP = "203.0.113.7"

MakeStore = Callable[..., Awaitable[StateStore]]
Pair = tuple[SharedMemoryStore, SharedMemoryStore, FakeClock]


@pytest.fixture(params=["memory", "shared", "attached"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    """A factory of stores of the parameter's kind on a clock the test passes; closed afterwards."""
    made: list[StateStore] = []

    async def make(clock: FakeClock, *, max_sessions: int = 1024, max_clients: int = 1024) -> StateStore:
        store: StateStore
        if request.param == "memory":
            store = MemoryStore(clock, max_sessions=max_sessions)
        else:
            store = SharedMemoryStore.create(clock, max_sessions=max_sessions, max_clients=max_clients)
            if request.param == "attached":
                made.append(store)
                store = SharedMemoryStore.attach(os.dup(store.fd), clock)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def later(clock: FakeClock, seconds: float) -> None:
    clock.set(clock.monotonic() + seconds)


# -- MemoryStore's semantics: token buckets --------------------------------------------------------


async def test_a_bucket_gives_its_burst_then_says_how_long_to_wait(make_store: MakeStore) -> None:
    store = await make_store(FakeClock())
    assert [await store.take_token(IP, 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await store.take_token(IP, 2.0, 3) == pytest.approx(0.5)  # 1 token at 2/s
    assert await store.take_token("198.51.100.1", 2.0, 3) == 0.0  # another client, another bucket


async def test_a_bucket_refills_with_time_and_never_above_its_burst(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = await make_store(clock)
    for _ in range(3):
        await store.take_token(IP, 2.0, 3)
    later(clock, 0.25)  # half a token
    assert await store.take_token(IP, 2.0, 3) == pytest.approx(0.25)
    later(clock, 0.25)
    assert await store.take_token(IP, 2.0, 3) == 0.0
    later(clock, 3600)  # an hour refills 3 tokens, not 7200
    assert [await store.take_token(IP, 2.0, 3) for _ in range(4)][3] == pytest.approx(0.5)


async def test_refills_in_small_steps_add_up_to_a_whole_token(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = await make_store(clock)
    assert await store.take_token(IP, 10.0, 1) == 0.0
    for _ in range(10):
        later(clock, 0.01)
    assert await store.take_token(IP, 10.0, 1) == 0.0  # 0.99999...: a token (EPSILON)


# -- flood blocking --------------------------------------------------------------------------------


async def test_a_flood_blocks_the_client_until_the_block_ends(make_store: MakeStore) -> None:
    clock = FakeClock(1_000_000.0)
    store = await make_store(clock)
    assert [await store.record_attempt(IP, 3, 10.0) for _ in range(3)] == [(0.0, False)] * 3
    assert await store.record_attempt(IP, 3, 10.0) == (10.0, True)  # the fourth in one second
    later(clock, 4.0)
    assert await store.record_attempt(IP, 3, 10.0) == (pytest.approx(6.0), False)
    assert await store.record_attempt("198.51.100.1", 3, 10.0) == (0.0, False)
    later(clock, 6.0)
    assert await store.record_attempt(IP, 3, 10.0) == (0.0, False)  # the block is over; counting starts again
    assert [await store.record_attempt(IP, 3, 10.0) for _ in range(3)][2] == (10.0, True)  # afresh: 3 more


async def test_attempts_are_counted_per_second(make_store: MakeStore) -> None:
    clock = FakeClock(1_000_000.5)
    store = await make_store(clock)
    for _ in range(3):
        assert await store.record_attempt(IP, 3, 10.0) == (0.0, False)
    later(clock, 0.5)  # the next second: a new window
    for _ in range(3):
        assert await store.record_attempt(IP, 3, 10.0) == (0.0, False)


async def test_a_block_of_zero_seconds_never_blocks(make_store: MakeStore) -> None:
    store = await make_store(FakeClock())
    assert {await store.record_attempt(IP, 1, 0.0) for _ in range(5)} == {(0.0, False)}


# -- sessions --------------------------------------------------------------------------------------


async def test_sessions_bind_rebind_and_are_counted(make_store: MakeStore) -> None:
    store = await make_store(FakeClock())
    assert await store.get_session("s1", 60.0) is None
    await store.bind_session("s1", "10.0.0.1:80", 60.0)
    await store.bind_session("s2", "10.0.0.2:80", 60.0)
    assert await store.get_session("s1", 60.0) == "10.0.0.1:80"
    await store.bind_session("s1", "10.0.0.2:80", 60.0)
    assert await store.get_session("s1", 60.0) == "10.0.0.2:80"
    await store.bind_session("s2", "[2001:db8::1]:8080~2", 60.0)
    assert await store.get_session("s2", 60.0) == "[2001:db8::1]:8080~2"
    assert await store.session_count() == 2


async def test_an_idle_session_expires_and_a_used_one_does_not(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = await make_store(clock)
    await store.bind_session("idle", "a:1", 10.0)
    await store.bind_session("busy", "b:1", 10.0)
    for _ in range(3):
        later(clock, 6.0)  # each look extends the busy one by 10 s
        assert await store.get_session("busy", 10.0) == "b:1"
    assert await store.session_count() == 1
    assert await store.get_session("idle", 10.0) is None
    later(clock, 10.0)
    assert await store.session_count() == 0
    assert await store.get_session("busy", 10.0) is None


async def test_purge_drops_what_is_over_and_says_how_much(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = await make_store(clock)
    for i in range(5):
        await store.bind_session(f"s{i}", "a:1", 10.0 if i < 3 else 100.0)
    await store.take_token(IP, 1.0, 2)  # full again 1 s later
    await store.record_attempt(IP, 5, 10.0)  # a count of this second
    await store.record_attempt("198.51.100.9", 0, 30.0)  # blocked for 30 s
    assert await store.purge_expired() == 0
    later(clock, 50.0)
    assert await store.purge_expired() == 3 + 1 + 1 + 1
    assert await store.purge_expired() == 0
    assert await store.session_count() == 2
    assert await store.get_session("s3", 100.0) == "a:1"


async def test_sessions_that_expired_are_not_counted_as_evicted(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = await make_store(clock, max_sessions=WAYS)  # one set: the same room in every store
    for i in range(WAYS):
        await store.bind_session(f"old{i}", "b", 60)
    later(clock, 61)
    for i in range(WAYS):
        await store.bind_session(f"new{i}", "b", 60)
    assert store.evicted_sessions == 0 and await store.session_count() == WAYS
    await store.bind_session("one-more", "b", 60)
    assert store.evicted_sessions == 1 and await store.session_count() == WAYS


async def test_the_least_recently_used_session_in_use_goes_first_when_all_are_in_use(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = await make_store(clock, max_sessions=WAYS)
    for i in range(WAYS):
        await store.bind_session(f"s{i}", "b", 60)
        await store.get_session(f"s{i}", 60)  # all in use
        later(clock, 1)
    await store.get_session("s0", 60)  # s1 is now the least recently used
    later(clock, 1)
    await store.bind_session("new", "b", 60)
    assert await store.get_session("s1", 60) is None and await store.get_session("s0", 60) == "b"
    assert store.evicted_sessions == 1


async def test_one_shot_sessions_churn_among_themselves_and_the_sessions_in_use_stay(make_store: MakeStore) -> None:
    """A client inventing a session id per request: the store stays within its room, the sessions
    looked up again stay, and every binding that does not fit is counted as an eviction."""
    store = await make_store(FakeClock(), max_sessions=1024)
    regulars = [f"regular-{i}" for i in range(100)]
    for session in regulars:
        await store.bind_session(session, "b1", 3600)
        assert await store.get_session(session, 3600) == "b1"
    await store.bind_session("frequent", "b2", 3600)
    binds = len(regulars) + 1
    for i in range(20_000):
        await store.bind_session(f"one-shot-{i}", "b3", 3600)
        binds += 1
        if i % 1000 == 0:
            assert await store.get_session("frequent", 3600) == "b2"
            assert await store.session_count() <= 1024
    assert [await store.get_session(session, 3600) for session in regulars] == ["b1"] * 100
    held = await store.session_count()
    assert 900 < held <= 1024
    assert store.evicted_sessions == binds - held


async def test_buckets_counts_and_blocks_keep_their_meaning(make_store: MakeStore) -> None:
    """What goes to make room is what is over, or nearly: a bucket mid-refill, a count of this
    second above the others' and a running block stay, however many other clients come and go
    (through 4 sets of 16 in the shared store)."""
    clock = FakeClock()
    store = await make_store(clock, max_clients=4 * WAYS)
    assert [await store.take_token("a", 1.0, 2) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    for _ in range(3):
        await store.record_attempt("f", 5, 10.0)
    assert await store.record_attempt("x", 0, 10.0) == (10.0, True)
    for i in range(1000):  # others: buckets full again 1 ms later, one attempt each in this second
        await store.take_token(f"o{i}", 1000.0, 1)
        await store.record_attempt(f"o{i}", 100, 10.0)
        later(clock, 0.0001)
    assert await store.take_token("a", 1.0, 2) > 0.0  # still empty: not dropped
    assert (await store.record_attempt("x", 0, 10.0))[0] > 9.0  # still blocked
    for _ in range(2):
        assert await store.record_attempt("f", 5, 10.0) == (0.0, False)
    assert await store.record_attempt("f", 5, 10.0) == (10.0, True)  # the sixth in the same second


async def test_a_shared_secret_is_made_once_per_name(make_store: MakeStore) -> None:
    store = await make_store(FakeClock())
    first = await store.shared_secret("affinity")
    assert len(first) == 32 and await store.shared_secret("affinity") == first
    assert await store.shared_secret("other") != first
    assert await (await make_store(FakeClock())).shared_secret("affinity") != first  # per store (region)


# -- one region, several handles (in this process) -------------------------------------------------


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """A created store and one attached to its region, on one fake clock."""
    clock = FakeClock()
    one = SharedMemoryStore.create(clock, max_sessions=64, max_clients=64)
    two = SharedMemoryStore.attach(os.dup(one.fd), clock)
    yield one, two, clock
    await one.close()
    await two.close()


async def test_handles_on_one_region_see_one_state(
    pair: tuple[SharedMemoryStore, SharedMemoryStore, FakeClock],
) -> None:
    one, two, _ = pair
    waits = await asyncio.gather(*(store.take_token(IP, 1.0, 20) for _ in range(25) for store in (one, two)))
    assert sum(1 for w in waits if w == 0.0) == 20
    await one.bind_session("s1", "a:1", 60)
    assert await two.get_session("s1", 60) == "a:1"
    assert await one.record_attempt(IP, 1, 5.0) == (0.0, False)
    assert await two.record_attempt(IP, 1, 5.0) == (5.0, True)
    assert await one.record_attempt(IP, 1, 5.0) == (5.0, False)
    assert await one.shared_secret("affinity") == await two.shared_secret("affinity")
    for i in range(100):
        await two.bind_session(f"n{i}", "b", 60)
    assert one.evicted_sessions == two.evicted_sessions > 0
    assert await one.session_count() == await two.session_count() <= 64


async def test_the_region_outlives_the_handle_that_made_it(pair: Pair) -> None:
    one, two, _ = pair
    await one.bind_session("s1", "a:1", 60)
    await one.close()
    await one.close()  # again: nothing to do
    assert await two.get_session("s1", 60) == "a:1"


async def test_a_handle_that_does_not_purge_leaves_the_sweep_to_the_one_that_does(pair: Pair) -> None:
    one, _, clock = pair
    worker = SharedMemoryStore.attach(os.dup(one.fd), clock, purges=False)
    await worker.bind_session("s1", "a:1", 1.0)
    later(clock, 2.0)
    assert await worker.purge_expired() == 0  # a worker's sweep: nothing, and no page read
    assert await one.purge_expired() == 1  # the supervisor's
    await worker.close()


# -- bounds and eviction ---------------------------------------------------------------------------


async def test_capacities_round_up_to_whole_sets_and_the_region_is_sized_from_them() -> None:
    store = SharedMemoryStore.create(FakeClock(), max_sessions=100, max_clients=17)
    try:
        assert (store.max_sessions, store.max_clients) == (112, 32)
        assert os.fstat(store.fd).st_size == store.size and store.size % 4096 == 0
    finally:
        await store.close()
    default = SharedMemoryStore.create(FakeClock())
    try:
        assert (default.max_sessions, default.max_clients) == (100_000, 100_000)
        assert default.size == 37_605_376  # docs/state.md: 30 MB of sessions, 4 MB each of buckets and flood
    finally:
        await default.close()


async def test_a_full_set_drops_an_expired_session_first_then_one_never_looked_up_again() -> None:
    clock = FakeClock()
    store = SharedMemoryStore.create(clock, max_sessions=WAYS)  # one set
    try:
        for i in range(WAYS):
            await store.bind_session(f"s{i}", "b", 10 if i == 4 else 60)  # s4 expires first
            if i % 2:
                assert await store.get_session(f"s{i}", 60) == "b"  # the odd ones are in use
            later(clock, 0.1)
        later(clock, 10)
        await store.bind_session("new0", "b", 60)  # takes s4's slot: expired, not evicted
        assert store.evicted_sessions == 0 and await store.session_count() == WAYS
        for i in range(1, 8):
            later(clock, 0.1)
            await store.bind_session(f"new{i}", "b", 60)  # then the other even ones go, oldest first
            assert await store.get_session(f"s{2 * i - 2 if i < 3 else 2 * i}", 60) is None
        assert store.evicted_sessions == 7
        assert [await store.get_session(f"s{i}", 60) is not None for i in range(WAYS)] == [
            i % 2 == 1 for i in range(16)
        ]
        await store.bind_session("new8", "b", 60)  # the oldest of the rest: new0, bound before new1..7
        assert await store.get_session("new0", 60) is None and store.evicted_sessions == 8
    finally:
        await store.close()


async def test_a_full_set_drops_the_bucket_closest_to_full() -> None:
    clock = FakeClock()
    store = SharedMemoryStore.create(clock, max_clients=WAYS)  # one set
    try:
        for i in range(WAYS):  # one token taken from each: c7 is full again in 0.1 s, the others in 1 s
            await store.take_token(f"c{i}", 10.0 if i == 7 else 1.0, 100)
        await store.take_token("newcomer", 1.0, 100)
        # c0 stayed (99 tokens left); c7 went: a full bucket again, 100 tokens (and it evicts another)
        assert [await store.take_token("c0", 1.0, 100) for _ in range(100)][98:] == [0.0, pytest.approx(1.0)]
        assert [await store.take_token("c7", 10.0, 100) for _ in range(101)][99:] == [0.0, pytest.approx(0.1)]
    finally:
        await store.close()


async def test_a_backend_id_too_long_for_its_slot_is_refused_and_the_longest_the_module_makes_fits() -> None:
    store = SharedMemoryStore.create(FakeClock(), max_sessions=WAYS)
    try:
        longest = ".".join(["a" * 63] * 3 + ["b" * 61]) + ":65535~99999999"  # a 253-character host
        assert len(longest.encode()) == MAX_BACKEND_ID_BYTES
        await store.bind_session("s1", longest, 60)
        assert await store.get_session("s1", 60) == longest
        await store.bind_session("s2", "é" * (MAX_BACKEND_ID_BYTES // 2), 60)
        with pytest.raises(ValueError, match=f"at most {MAX_BACKEND_ID_BYTES} bytes in UTF-8, got 270"):
            await store.bind_session("s3", "é" * 135, 60)
        assert await store.get_session("s3", 60) is None and await store.session_count() == 2
    finally:
        await store.close()


async def test_session_ids_of_any_length_and_characters_are_kept_apart() -> None:
    store = SharedMemoryStore.create(FakeClock(), max_sessions=WAYS * 4)
    try:
        ids = ["a" * 512, "a" * 511, "\U0001f600" * 512, "\udc80lone surrogate", "", "a" * 512 + "b"]
        for n, session in enumerate(ids):
            await store.bind_session(session, f"b{n}", 60)
        assert [await store.get_session(session, 60) for session in ids] == [f"b{n}" for n in range(len(ids))]
    finally:
        await store.close()


def test_bounds_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="SharedMemoryStore: max_sessions must be >= 1, got 0"):
        SharedMemoryStore.create(FakeClock(), max_sessions=0)
    with pytest.raises(ValueError, match="SharedMemoryStore: max_clients must be >= 1, got -1"):
        SharedMemoryStore.create(FakeClock(), max_clients=-1)


# -- the header ------------------------------------------------------------------------------------


def region_with(data: bytes, size: int) -> int:
    fd = os.memfd_create("test-region")
    os.ftruncate(fd, size)
    os.pwrite(fd, data, 0)
    return fd


async def test_attaching_to_what_is_not_a_region_says_what_is_wrong() -> None:
    store = SharedMemoryStore.create(FakeClock(), max_sessions=WAYS, max_clients=WAYS)
    try:
        header = os.pread(store.fd, HEADER.size, 0)
        cases = [
            (b"", 0, "holds 0 bytes, too few for a header"),
            (b"PK\x03\x04" + bytes(100), 4096, r"is not a shared state region: magic b'PK\\x03\\x04"),
            (header[:8] + (2).to_bytes(4, "little") + header[12:], store.size, "holds a version 2 region; this build"),
            (header, store.size - 4096, f"need {store.size} bytes, the header says {store.size} and the file holds"),
        ]
        for data, size, message in cases:
            fd = region_with(data, size)
            try:
                with pytest.raises(ValueError, match=rf"SharedMemoryStore.attach: fd {fd}\b.*{message}"):
                    SharedMemoryStore.attach(fd, FakeClock())
            finally:
                os.close(fd)  # attach takes the fd only when it succeeds
        fd = region_with(header, store.size)  # a copy of the header alone: a region, empty
        copy = SharedMemoryStore.attach(fd, FakeClock())
        assert (copy.max_sessions, copy.max_clients, copy.size) == (WAYS, WAYS, store.size)
        await copy.close()
    finally:
        await store.close()


# -- real processes ----------------------------------------------------------------------------------

CHILD = r"""
import asyncio, sys
from load_balancing_module import SystemClock
from load_balancing_module.state.shared import SharedMemoryStore

async def main():
    store = SharedMemoryStore.attach(int(sys.argv[1]), SystemClock())
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "take":  # key, how many times, burst (at a rate that refills nothing meanwhile)
            n, burst = int(args[1]), int(args[2])
            answer = sum([await store.take_token(args[0], 1e-9, burst) == 0.0 for _ in range(n)])
        elif command == "bind":
            answer = await store.bind_session(args[0], args[1], 60.0)
        elif command == "get":
            answer = await store.get_session(args[0], 60.0)
        elif command == "secret":
            answer = (await store.shared_secret(args[0])).hex()
        elif command == "hold":  # take the lock of a key's bucket set, and keep it
            store._lock(store._bucket_set(store._digest(args[0])))
            answer = "held"
        print(answer, flush=True)

asyncio.run(main())
"""


class Child:
    """A process attached to the region through an inherited fd, answering one line per command."""

    def __init__(self, fd: int) -> None:
        src = str(Path(load_balancing_module.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(fd)],
            pass_fds=(fd,),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def answer(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the child ended (exit code {self.proc.poll()})"
        return line.strip()

    def ask(self, line: str) -> str:
        self.send(line)
        return self.answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
async def region() -> AsyncIterator[SharedMemoryStore]:
    store = SharedMemoryStore.create(SystemClock(), max_sessions=1024, max_clients=1024)
    yield store
    await store.close()


@pytest.fixture
def children(region: SharedMemoryStore) -> Iterator[Callable[[int], list[Child]]]:
    started: list[Child] = []

    def start(n: int) -> list[Child]:
        new = [Child(region.fd) for _ in range(n)]
        started.extend(new)
        assert [child.answer() for child in new] == ["ready"] * n
        return new

    yield start
    for child in started:
        child.close()


@pytest.mark.timeout(60)
async def test_processes_hammering_one_bucket_get_its_burst_exactly(
    region: SharedMemoryStore, children: Callable[[int], list[Child]]
) -> None:
    """Three processes take 3,000 tokens each, at once, from one bucket of 5,000 that does not
    refill meanwhile: 5,000 are granted in all. Without the lock, lost updates grant more."""
    workers = children(3)
    for child in workers:
        child.send(f"take {IP} 3000 5000")
    granted = [int(child.answer()) for child in workers]
    assert sum(granted) == 5000, granted
    assert await region.take_token(IP, 1e-9, 5000) > 0.0  # and this process finds it empty


@pytest.mark.timeout(60)
async def test_sessions_and_secrets_mean_the_same_in_every_process(
    region: SharedMemoryStore, children: Callable[[int], list[Child]]
) -> None:
    one, two = children(2)
    await region.bind_session("from-parent", "10.0.0.1:80", 60.0)
    assert one.ask("get from-parent") == two.ask("get from-parent") == "10.0.0.1:80"
    assert one.ask("bind from-child 10.0.0.2:80") == "None"
    assert await region.get_session("from-child", 60.0) == two.ask("get from-child") == "10.0.0.2:80"
    assert one.ask("get nobody") == "None"
    key = (await region.shared_secret("affinity")).hex()
    assert one.ask("secret affinity") == two.ask("secret affinity") == key
    other = two.ask("secret made-by-a-child")
    assert other != key and one.ask("secret made-by-a-child") == other
    assert (await region.shared_secret("made-by-a-child")).hex() == other


@pytest.mark.timeout(60)
async def test_a_worker_killed_holding_a_lock_does_not_block_the_others(
    region: SharedMemoryStore, children: Callable[[int], list[Child]]
) -> None:
    (child,) = children(1)
    at = region._bucket_set(region._digest(IP))
    assert child.ask(f"hold {IP}") == "held"
    with pytest.raises(OSError):  # held by the child: this process would wait
        fcntl.lockf(region.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, at)
    child.proc.send_signal(signal.SIGKILL)
    assert child.proc.wait(10) == -signal.SIGKILL
    fcntl.lockf(region.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, at)  # the kernel released it: no wait
    fcntl.lockf(region.fd, fcntl.LOCK_UN, 1, at)
    assert await region.take_token(IP, 1.0, 1) == 0.0
