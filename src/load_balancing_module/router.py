"""The routing core: backends in priority tiers, picking, slots and the queue.

Everything here is synchronous except :meth:`Router.wait`. A pick walks the
tiers from the highest priority down and asks the first tier with a free
member to pick (the tier's algorithm), so only the highest tier that has a
candidate is used and lower tiers are the failover set. When every candidate
is at capacity, requests wait first in first out; a released slot is handed
straight to the first waiter (as httpcore's connection pool does), so a new
arrival cannot overtake the queue.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import count

from ._log import log_event
from .algorithms import AlgorithmFactory
from .algorithms.base import Algorithm, TierCounts
from .backend import Backend
from .clock import Clock
from .config import Request
from .enums import CircuitState, HealthState
from .exceptions import BackendUnavailableError, CircuitBreakerOpenError, RequestTimeoutError


class Tier(TierCounts):
    """The backends of one priority, their algorithm, and the counts of free members it reads."""

    __slots__ = ("priority", "members", "algorithm", "load_aware", "observes_latency", "dirty")

    def __init__(self, priority: int, algorithm: Algorithm) -> None:
        super().__init__()
        self.priority = priority
        self.members: list[Backend] = []
        self.algorithm = algorithm
        self.load_aware = True
        self.observes_latency = False
        self.dirty = True
        self.use(algorithm)

    def use(self, algorithm: Algorithm) -> None:
        self.algorithm = algorithm
        algorithm.tier = self
        # Copied here so the hot path reads one attribute: algorithms whose keys ignore
        # load need no update when a slot is taken, and only some read latency.
        self.load_aware = algorithm.load_aware
        self.observes_latency = algorithm.observes_latency
        self.dirty = True


class _Waiter:
    __slots__ = ("request", "exclude", "future")

    def __init__(self, request: Request, exclude: Sequence[Backend], future: asyncio.Future[Backend]) -> None:
        self.request = request
        self.exclude = exclude
        self.future = future


class Router:
    def __init__(self, factory: AlgorithmFactory, clock: Clock, max_queue_size: int) -> None:
        self.factory = factory
        self.kind = factory.kind
        self.workload_aware = factory.cls.workload_aware
        self.clock = clock
        self.max_queue_size = max_queue_size
        self.backends: dict[str, Backend] = {}
        self.tiers: list[Tier] = []
        self.in_flight = 0
        self._dirty = False
        self.waiters: deque[_Waiter] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = count()
        self.next_timer = float("inf")

    # -- membership ---------------------------------------------------------

    def add(self, backend: Backend) -> None:
        self.backends[backend.id] = backend
        tier = next((t for t in self.tiers if t.priority == backend.priority), None)
        if tier is None:
            tier = Tier(backend.priority, self.factory.create())
            self.tiers.append(tier)
            self.tiers.sort(key=lambda t: -t.priority)
        tier.members.append(backend)
        backend.tier = tier
        self._mark(tier)
        self.refresh(backend)
        self.dispatch()

    def remove(self, backend: Backend) -> None:
        del self.backends[backend.id]
        backend.removed = True
        self.refresh(backend)
        tier = backend.tier
        if isinstance(tier, Tier):
            tier.members.remove(backend)
            tier.in_flight -= backend.in_flight
            backend.tier = None
            if tier.members:
                self._mark(tier)
            else:
                self.tiers.remove(tier)

    def set_algorithm(self, factory: AlgorithmFactory) -> None:
        self.factory = factory
        self.kind = factory.kind
        self.workload_aware = factory.cls.workload_aware
        for tier in self.tiers:
            tier.use(factory.create())
            self._mark(tier)

    def _mark(self, tier: Tier) -> None:
        tier.dirty = True
        self._dirty = True

    def _rebuild(self) -> None:
        for tier in self.tiers:
            if tier.dirty:
                tier.algorithm.rebuild(tier.members)
                tier.dirty = False
        self._dirty = False

    # -- state of one backend -----------------------------------------------

    def refresh(self, backend: Backend) -> None:
        """Recompute a backend's rank after any change (health, breaker, weight, latency...)."""
        rank = backend.compute_rank()
        tier = backend.tier
        if rank != backend.rank:
            self._set_rank(backend, rank)
        elif isinstance(tier, Tier) and not tier.dirty:
            tier.algorithm.update(backend)

    def _set_rank(self, backend: Backend, rank: int | None) -> None:
        tier = backend.tier
        if not isinstance(tier, Tier):
            backend.rank = rank
            return
        tier.count(backend, backend.rank, -1)
        tier.count(backend, rank, 1)
        backend.rank = rank
        if not tier.dirty:
            tier.algorithm.update(backend)

    def observe(self, backend: Backend, latency_ms: float, now: float) -> bool:
        """Hand a latency sample of ``backend`` (a completion or a passing probe) to its tier's
        algorithm if it reads latency; return whether it did."""
        tier = backend.tier
        if isinstance(tier, Tier) and tier.observes_latency:
            tier.algorithm.observe(backend, latency_ms, now)
            return True
        return False

    # take/release run twice per request: only in_flight changed, so compare it with the limit.

    def take(self, backend: Backend) -> None:
        backend.in_flight += 1
        self.in_flight += 1
        tier = backend.tier
        if isinstance(tier, Tier):
            tier.in_flight += 1
            if backend.in_flight >= backend.limit:
                if backend.rank is not None:
                    self._set_rank(backend, None)
            elif tier.load_aware and not tier.dirty:
                tier.algorithm.update(backend)

    def release(self, backend: Backend) -> None:
        backend.in_flight -= 1
        self.in_flight -= 1
        tier = backend.tier
        if isinstance(tier, Tier):
            tier.in_flight -= 1
            if backend.rank is None:
                if backend.base_rank is not None and backend.in_flight < backend.limit:
                    self._set_rank(backend, backend.base_rank)
            elif tier.load_aware and not tier.dirty:
                tier.algorithm.update(backend)
        if self.waiters:
            self.dispatch()

    # -- picking --------------------------------------------------------------

    def pick(self, request: Request, exclude: Sequence[Backend] = ()) -> Backend | None:
        """The backend for ``request`` now, or ``None`` if no tier has a free candidate."""
        if self._dirty:
            self._rebuild()
        if not exclude:
            return self._select(request)
        for b in exclude:
            b.excluded += 1
            self.refresh(b)
        try:
            return self._select(request)
        finally:
            for b in exclude:
                b.excluded -= 1
                self.refresh(b)

    def _select(self, request: Request) -> Backend | None:
        if self.workload_aware and self.tiers:
            klass = self.tiers[0].algorithm.preferred_class(request)
            if klass is not None:
                for tier in self.tiers:
                    if tier.free[klass]:
                        return tier.algorithm.pick(request, klass)
        for tier in self.tiers:
            if tier.free[0] or tier.free[1]:
                return tier.algorithm.pick(request, None)
        return None

    def must_wait(self, exclude: Sequence[Backend] = ()) -> bool:
        """After a failed pick: True if the request may wait for a slot; otherwise raise the error
        that says why nothing can take it."""
        error = self.refusal(exclude)
        if error is not None:
            raise error
        return True

    def refusal(self, exclude: Sequence[Backend] = ()) -> BackendUnavailableError | None:
        """Why a request that found no free candidate cannot wait for one, or None if it may.

        Only ``max_connections`` saturation queues: a backend whose slots are all taken but that
        is otherwise a candidate (healthy or degraded, circuit CLOSED, not draining) will free one.
        A breaker that refuses (OPEN, or HALF_OPEN with its trial requests in flight), an
        UNHEALTHY backend or a draining one may stay so for longer than any request should wait,
        so a request they leave without a candidate fails at once, as resilience4j and pybreaker
        fail a call the breaker refuses."""
        live = [b for b in self.backends.values() if b not in exclude]
        if not live:
            what = "untried backend" if exclude else "backend"
            return BackendUnavailableError(f"no {what} is configured")
        if any(_saturated(b) for b in live):
            return None
        reasons: dict[str, int] = {}
        for b in live:
            reason = _why_not(b)
            reasons[reason] = reasons.get(reason, 0) + 1
        summary = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
        if all(b.circuit_state is not CircuitState.CLOSED for b in live):
            return CircuitBreakerOpenError(f"every circuit refuses requests ({summary})")
        return BackendUnavailableError(f"no backend can take the request ({summary})")

    # -- the queue ------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self.waiters)  # the hot path tests the deque itself

    async def wait(self, request: Request, exclude: Sequence[Backend], timeout: float) -> Backend:
        """Wait in FIFO order for a slot; the slot is already taken when this returns."""
        if len(self.waiters) >= self.max_queue_size:
            raise BackendUnavailableError(
                f"every backend is at max_connections and the queue is full ({self.max_queue_size} waiting)"
            )
        future: asyncio.Future[Backend] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(request, exclude, future)
        self.waiters.append(waiter)
        try:
            return await self.clock.wait_for(future, timeout)
        except (TimeoutError, asyncio.TimeoutError):
            if future.done() and not future.cancelled():
                return future.result()  # the slot arrived as the timer fired
            raise RequestTimeoutError(
                f"no backend slot became free within {timeout:g} s (every backend is at max_connections)"
            ) from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())  # handed a slot just as we were cancelled
            raise
        finally:
            if not future.done():
                future.cancel()
            if waiter in self.waiters:
                self.waiters.remove(waiter)

    def dispatch(self) -> None:
        """Hand free slots to waiters, first come first served."""
        waiters = self.waiters
        while waiters:
            waiter = waiters[0]
            if waiter.future.done():
                waiters.popleft()
                continue
            backend = self.pick(waiter.request, waiter.exclude)
            if backend is None:
                error = self.refusal(waiter.exclude)
                if error is None:
                    return  # a slot will come free: keep waiting
                waiters.popleft()  # what it waited for is gone (circuits opened, health failed, drain)
                waiter.future.set_exception(error)
                continue
            waiters.popleft()
            self.take(backend)
            waiter.future.set_result(backend)

    def fail_waiters(self, reason: str) -> None:
        while self.waiters:
            future = self.waiters.popleft().future
            if not future.done():
                future.set_exception(BackendUnavailableError(reason))

    # -- timers (checked lazily on each request, so a fake clock drives them) --

    def schedule(self, deadline: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (deadline, next(self._timer_seq), callback))
        self.next_timer = self._timers[0][0]

    def run_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, callback = heapq.heappop(timers)
            try:
                callback()
            except Exception as exc:  # a timer must never break routing
                log_event("timer_failed", error=repr(exc))
        self.next_timer = timers[0][0] if timers else float("inf")

    def members(self) -> Iterable[Backend]:
        return self.backends.values()


def _saturated(b: Backend) -> bool:
    """A candidate but for its slots: all ``max_connections`` of them are taken."""
    return b.base_rank is not None and b.circuit_state is CircuitState.CLOSED and b.in_flight >= b.limit


def _why_not(b: Backend) -> str:
    """Why ``b`` is no candidate now, in a few words (it is not merely saturated)."""
    if b.excluded:
        return "draining"
    if b.health.state is HealthState.UNHEALTHY:
        return "unhealthy"
    state = b.circuit_state
    if state is CircuitState.OPEN:
        return "with an open circuit"
    if state is CircuitState.HALF_OPEN:
        return "half-open with every trial request in flight"
    return "unavailable"
