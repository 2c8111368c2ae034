"""``LoadBalancingModule``: the facade of the seed README.

It wires the policies together: rate limiting and flood blocking, sticky
sessions, the routing core (:mod:`.router`), circuit breakers, active health
checks, retries, slow start, metrics and the integration hooks. Each concern
with state or a loop of its own is an object in its own module that the
facade builds and owns (:mod:`.calls`, :mod:`.limiter`, :mod:`.probing`,
:mod:`.slow_start`, :mod:`.draining`, :mod:`.hooks`, :mod:`.operations`);
front ends use the named data-plane surface listed in docs/library.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from types import TracebackType
from typing import Any, TypeVar

from ._log import log_event
from .algorithms import AlgorithmFactory
from .backend import Backend
from .breaker import CircuitBreaker
from .calls import Acquired, CallPolicy, Calls, CallTracer, Held
from .clock import Clock, SystemClock
from .config import BackendConfig, LoadBalancingAlgorithm, LoadBalancingModuleConfig, Request
from .discovery import Provider, Target, Watch
from .draining import Drains
from .enums import CircuitState
from .exceptions import (
    BackendNotFoundError,
    BackendUnavailableError,
    RequestTimeoutError,
)
from .health import HealthTracker, Probe, Prober, ProbeTLS
from .hooks import Hooks, maybe_call
from .limiter import RateLimiter
from .models import DrainResult, HealthStatus, LoadDistribution, RouteResult
from .operations import Operations
from .outcome import IsFailure, Outcome, RetryOn, failure_predicate, raised_is_failure, retry_predicate
from .probing import HealthChecks
from .retry import ExponentialJitterBackoff, RetryBudget
from .router import Router
from .slow_start import SlowStart
from .state import MemoryStore, StateStore
from .stats import RequestStats
from .views import describe, load_distribution

T = TypeVar("T")
BackendID = str

# What the module counts (``counts()``; the metrics collector exports them).
COUNTERS = (
    "rate_limited",
    "ddos_blocked",
    "retries",
    "queue_timeouts",
    "unavailable",
    "probes_not_run",
    "discovery_errors",
)


class LoadBalancingModule:
    """Spreads requests over backends. See the README for the full API."""

    def __init__(
        self,
        config: LoadBalancingModuleConfig | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        state_store: StateStore | None = None,
        probe: Probe | None = None,
        probe_tls: ProbeTLS | None = None,
        is_failure: IsFailure | None = None,
        retry_on: RetryOn | None = None,
        tracer: CallTracer | None = None,
    ) -> None:
        self.config = config if config is not None else LoadBalancingModuleConfig()
        # Read on every request: copied out of the (pydantic) config once.
        self._rate_limited = self.config.rate_limit.enabled
        self._sticky = self.config.session_affinity
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.rng = rng if rng is not None else random.Random()
        self._owns_store = state_store is None
        if state_store is None:
            state_store = MemoryStore(self.clock, max_sessions=self.config.max_sessions)
        self.store: StateStore = state_store
        factory = AlgorithmFactory(self.config.algorithm, self.rng, self.clock)
        self.router = Router(factory, self.clock, self.config.max_queue_size)
        self.backoff = ExponentialJitterBackoff(self.config.retry_backoff_base, self.config.retry_backoff_max, self.rng)
        self.retry_budget = RetryBudget(self.config.retry_budget_percent, self.config.retry_budget_min_concurrency)
        self._rid_prefix = f"{self.rng.getrandbits(32):08x}"
        self._rid_seq = 0
        self.total_requests = 0
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.request_stats = RequestStats()  # answered requests by status class: filled by the proxy
        # The concerns the facade owns, each built with what it needs of the module.
        self._limiter = RateLimiter(self.store, self.config.rate_limit, self.counters)
        self._slow_start = SlowStart(self.router, self.clock)
        self._hooks = Hooks(self.clock, self.config.load_report_interval, self.get_load_distribution)
        self._prober = Prober(self.config.health_check, self.clock, probe, probe_tls)
        self._health = HealthChecks(
            self.config.health_check,
            self.clock,
            self.rng,
            self.router,
            self._prober,
            self._slow_start,
            self._hooks,
            self.counters,
        )
        self._drains = Drains(self.router, self.clock, self.remove_backend)
        self._operations = Operations(self)
        # Spans of call()'s tries and of the integrations' requests (load_balancing_module.tracing).
        self.tracer = tracer
        self._calls = Calls(self, self._route, self.clock, self.config.request_timeout, self.config.max_retries, tracer)
        # call(), acquire() and the integrations judge tries by these unless a call says otherwise.
        self.is_failure: IsFailure = failure_predicate(is_failure)
        # acquire(): a raising block fails the backend, unless the module was given its own judge.
        self._block_failure: IsFailure = self.is_failure if is_failure is not None else raised_is_failure
        self.retry_on: Callable[[Outcome], bool] = retry_predicate(retry_on)
        self._cleanup: asyncio.Task[None] | None = None
        self._watches: list[Watch] = []  # discovery (watch()): stopped on shutdown
        self._initialized = False

    # -- lifecycle -----------------------------------------------------------

    async def initialize(self) -> None:
        """Start background work: health checks, session cleanup, load reports."""
        if self._initialized:
            return
        self._initialized = True
        self._health.start_all(self.router.members())
        self._cleanup = asyncio.create_task(self._cleanup_loop(), name="omnixan-lb-cleanup")
        self._hooks.start_reports()
        log_event("module_initialized", algorithm=str(self.router.factory.kind), backends=len(self.router.backends))

    async def shutdown(self) -> None:
        """Stop background work and wait for it; waiting requests fail."""
        if not self._initialized:
            return
        self._initialized = False
        for watch in self._watches:
            await watch.stop()
        self._watches.clear()
        tasks: list[asyncio.Task[Any]] = [*self._hooks.cancel(), *self._health.cancel(), *self._drains.tasks()]
        if self._cleanup is not None:
            tasks.append(self._cleanup)
            self._cleanup = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.router.fail_waiters("the load balancer is shutting down")
        await self._prober.close()
        if self._owns_store:
            await self.store.close()
        log_event("module_shutdown")

    async def __aenter__(self) -> LoadBalancingModule:
        await self.initialize()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    # -- backends --------------------------------------------------------------

    async def add_backend(
        self, backend: BackendConfig | Mapping[str, Any], *, backend_id: BackendID | None = None
    ) -> BackendID:
        """Add a backend; it starts HEALTHY. Returns its id: ``backend_id`` if given (it must be
        unused), else ``host:port``, made unique."""
        config = backend if isinstance(backend, BackendConfig) else BackendConfig.model_validate(backend)
        if backend_id is None:
            backend_id = self._new_id(config)
        elif backend_id in self.router.backends or not backend_id:
            raise ValueError(f"backend_id: {backend_id!r} is taken or empty")
        tracker = HealthTracker(backend_id, self.config.health_check)
        breaker = CircuitBreaker(self.config.circuit_breaker, self.clock)
        now = self.clock.monotonic()
        runtime = Backend(backend_id, config, breaker, tracker, now=now)
        breaker.listener = lambda _b, old, new: self._on_circuit_change(runtime, old, new)
        self._slow_start.begin(runtime, now)
        self.router.add(runtime)
        self._health.start(runtime)
        log_event(
            "backend_added",
            backend_id=backend_id,
            address=config.address,
            weight=config.weight,
            priority=config.priority,
            quantum_capable=config.quantum_capable,
        )
        return backend_id

    async def remove_backend(self, backend_id: BackendID) -> None:
        """Stop routing to a backend at once; requests already routed may still complete."""
        backend = self._get(backend_id)
        self.router.remove(backend)
        self.router.dispatch()  # waiters that only this backend could have served fail now
        self._health.stop(backend_id)
        log_event("backend_removed", backend_id=backend_id, in_flight=backend.in_flight)

    def _new_id(self, config: BackendConfig) -> str:
        base = config.address
        if base not in self.router.backends:
            return base
        n = 2
        while f"{base}~{n}" in self.router.backends:
            n += 1
        return f"{base}~{n}"

    def _get(self, backend_id: BackendID) -> Backend:
        try:
            return self.router.backends[backend_id]
        except (KeyError, TypeError):
            raise BackendNotFoundError(f"no backend with id {backend_id!r}") from None

    @property
    def backends(self) -> Mapping[str, Backend]:
        """Runtime state of every backend, by id (read-only use)."""
        return self.router.backends

    # -- routing -----------------------------------------------------------------

    def route_now(self, request: Request, prefer: str | None = None) -> RouteResult | None:
        """Route at once, without awaiting anything; ``None`` when the request needs
        :meth:`route_request` (a rate limit or sticky session to consult, a queue to
        join, or no free backend). The common case of every request, and the proxy's
        way to route without a task. ``prefer``: as for :meth:`route_request`."""
        started = self.clock.monotonic()
        router = self.router
        if started >= router.next_timer:
            router.run_timers(started)
        if self._rate_limited or (self._sticky and request.session_id) or router.waiters:
            return None
        backend = None
        if prefer is not None:
            backend = router.backends.get(prefer)
            if backend is not None and backend.rank is None:
                backend = None  # not a candidate now: the algorithm picks
        if backend is None:
            backend = router.pick(request)
            if backend is None:
                return None
        router.take(backend)
        return self._result(request, backend, started, 1)

    async def route_request(self, request: Request, prefer: str | None = None) -> RouteResult:
        """Choose a backend and take one of its connection slots.

        ``prefer``: the id of a backend to use while it is a candidate, as a sticky session's
        (the proxy's affinity cookie names the backend itself, so it needs no session store)."""
        result = self.route_now(request, prefer)
        if result is not None:
            return result
        started = self.clock.monotonic()
        if self._rate_limited:
            await self._limiter.admit(request)
        if (self._sticky and request.session_id) or prefer is not None:
            return await self._route(request, started, (), prefer=prefer)
        router = self.router
        backend = None if router.waiters else router.pick(request)
        if backend is None:
            backend = await self._wait_for_slot(request, (), started)
        else:
            router.take(backend)
        return self._result(request, backend, started, 1)

    async def route_retry(
        self, request: Request, tried: Sequence[Backend], *, attempt: int, started: float | None = None
    ) -> RouteResult:
        """Route a retry of ``request`` to a backend not in ``tried`` (the ``backend`` of
        earlier results). No rate limit: the client made one request. ``started`` is when
        the whole request began, for the queue's timeout."""
        now = self.clock.monotonic()
        if now >= self.router.next_timer:
            self.router.run_timers(now)
        return await self._route(request, now if started is None else started, tuple(tried), attempt)

    async def _route(
        self,
        request: Request,
        started: float,
        exclude: tuple[Backend, ...],
        attempt: int = 1,
        prefer: str | None = None,
    ) -> RouteResult:
        """Route with sticky sessions, a preferred backend and retry exclusions (the general path)."""
        router = self.router
        session_id = request.session_id if self._sticky else None
        backend: Backend | None = None
        bound: str | None = None
        if session_id:
            bound = await self.store.get_session(session_id, self.config.session_ttl)
        wanted = bound or prefer
        if wanted:
            sticky = router.backends.get(wanted)
            if sticky is not None and sticky.rank is not None and sticky not in exclude:
                backend = sticky
                router.take(backend)
        if backend is None:
            backend = None if router.waiters else router.pick(request, exclude)
            if backend is not None:
                router.take(backend)
            else:
                backend = await self._wait_for_slot(request, exclude, started)
        if session_id and bound != backend.id:
            await self.store.bind_session(session_id, backend.id, self.config.session_ttl)
        return self._result(request, backend, started, attempt)

    def _result(self, request: Request, backend: Backend, started: float, attempt: int) -> RouteResult:
        now = self.clock.monotonic()
        backend.total += 1
        self.total_requests += 1
        self._rid_seq += 1
        kind = self.router.kind
        latency_ms = (now - started) * 1000.0
        return RouteResult(backend, kind, request.request_id, latency_ms, attempt, now, self._rid_prefix, self._rid_seq)

    async def _wait_for_slot(self, request: Request, exclude: tuple[Backend, ...], started: float) -> Backend:
        try:
            self.router.must_wait(exclude)
            remaining = self.config.request_timeout - (self.clock.monotonic() - started)
            return await self.router.wait(request, exclude, max(remaining, 0.0))
        except RequestTimeoutError:
            self.counters["queue_timeouts"] += 1
            await self._hooks.capacity_exhausted(request)
            raise
        except BackendUnavailableError:
            self.counters["unavailable"] += 1
            await self._hooks.capacity_exhausted(request)
            raise

    async def complete_request(self, result: RouteResult, *, success: bool, latency_ms: float | None = None) -> None:
        """Release the slot and record the outcome; a second call does nothing."""
        self.complete_now(result, success=success, latency_ms=latency_ms)

    def complete_now(self, result: RouteResult, *, success: bool, latency_ms: float | None = None) -> None:
        """:meth:`complete_request` without the coroutine, for callers on the event loop's hot path."""
        backend = result.backend
        if result.completed:
            return
        result.completed = True
        now = self.clock.monotonic()
        if latency_ms is None:
            latency_ms = (now - result.started_at) * 1000.0
        if success:
            backend.successful += 1
            if not backend.breaker_quiet:  # else CLOSED without failures: a success changes nothing
                backend.breaker.on_success()
                backend.breaker_quiet = backend.breaker.quiet
        else:
            backend.failed += 1
            backend.breaker.on_failure()
            backend.breaker_quiet = backend.breaker.quiet
        backend.record_latency(latency_ms, success, now)
        self.router.observe(backend, latency_ms, now)
        self.router.release(backend)

    def abandon_request(self, result: RouteResult) -> None:
        """Release a slot without recording an outcome: the caller, not the backend, ended
        the try (a cancelled call, a client that hung up). Once only, like completion."""
        if not result.completed:
            result.completed = True
            self.router.release(result.backend)

    def acquire(self, request: Request) -> Acquired:
        """``async with lb.acquire(request) as result``: route, then complete the result when
        the block ends: a success, or a failure if it raised (as the module's own ``is_failure``
        judges the exception, when it was given one); abandoned if it was cancelled."""
        return Acquired(self, request, self._block_failure, self.clock)

    async def call(
        self,
        request: Request,
        fn: Callable[[RouteResult], Awaitable[T]],
        *,
        retry_on: RetryOn | None = None,
        is_failure: IsFailure | None = None,
        idempotent: bool = True,
    ) -> T:
        """Route and await ``fn(result)``, retrying on untried backends what ``retry_on`` names.

        Each try runs within ``request_timeout`` and ends in an :class:`Outcome`, judged by
        ``is_failure`` (the backend's fault?) and ``retry_on`` (another backend?); both default
        to the module's. Between tries it sleeps an exponential backoff with full jitter; retries
        stop at ``max_retries``, when the retry budget is spent, or when no untried backend is
        left. A request that is not ``idempotent`` is retried only if no backend received it.
        The last answer returned stands; an exception that is not a failure propagates as is;
        all tries failed: :class:`RoutingError` from the last error.
        """
        held = await self._call(request, fn, retry_on, is_failure, idempotent, False, None)
        return held.value

    async def call_held(
        self,
        request: Request,
        fn: Callable[[RouteResult], Awaitable[T]],
        *,
        retry_on: RetryOn | None = None,
        is_failure: IsFailure | None = None,
        idempotent: bool = True,
        discard: Callable[[T], Awaitable[None]] | None = None,
    ) -> Held[T]:
        """:meth:`call` for an answer that is still streaming: the last try's backend slot stays
        held (``held.open``) until the caller passes ``held.result`` to :meth:`complete_now`
        (``held.outcome`` has the verdict and the latency). An answer a retry replaces goes to
        ``discard`` (close its connection). The httpx and aiohttp integrations use it."""
        return await self._call(request, fn, retry_on, is_failure, idempotent, True, discard)

    async def _call(
        self,
        request: Request,
        fn: Callable[[RouteResult], Awaitable[T]],
        retry_on: RetryOn | None,
        is_failure: IsFailure | None,
        idempotent: bool,
        hold: bool,
        discard: Callable[[T], Awaitable[None]] | None,
    ) -> Held[T]:
        started = self.clock.monotonic()
        if started >= self.router.next_timer:
            self.router.run_timers(started)
        if self._rate_limited:
            await self._limiter.admit(request)
        policy = CallPolicy(
            self.is_failure if is_failure is None else failure_predicate(is_failure),
            self.retry_on if retry_on is None else retry_predicate(retry_on),
            idempotent,
        )
        return await self._calls.run(request, fn, policy, hold, discard)

    # -- the rest of the data-plane surface (docs/library.md): retries, counts, settings ----

    @property
    def backend_count(self) -> int:
        """How many backends routing knows (draining ones included, until they are removed)."""
        return len(self.router.backends)

    def retry_allowed(self) -> bool:
        """Whether the retry budget admits one more retry of a request that a backend may
        already have received (retries in progress against requests in flight)."""
        return self.retry_budget.allows(self.router.in_flight)

    def begin_retry(self, *, budgeted: bool) -> None:
        """Count one retry. ``budgeted``: a backend may have received the request, so the retry
        also holds one unit of the retry budget until :meth:`end_retry`."""
        self.counters["retries"] += 1
        if budgeted:
            self.retry_budget.active += 1

    def end_retry(self) -> None:
        """Give back the unit of the retry budget that ``begin_retry(budgeted=True)`` took."""
        self.retry_budget.active -= 1

    def algorithm_settings(self) -> tuple[str, dict[str, Any]]:
        """The current algorithm's name and settings (a copy), as ``configure_algorithm`` accepts them."""
        factory = self.router.factory
        return str(factory.kind), dict(factory.settings)

    def counts(self) -> dict[str, int]:
        """A copy of the module's counters: rate_limited, ddos_blocked, retries, queue_timeouts,
        unavailable, probes_not_run, discovery_errors."""
        return dict(self.counters)

    # -- breakers ------------------------------------------------------------------

    def _on_circuit_change(self, backend: Backend, old: CircuitState, new: CircuitState) -> None:
        level = logging.WARNING if new is CircuitState.OPEN else logging.INFO
        log_event("circuit_state_changed", level, backend_id=backend.id, old=old.value, new=new.value)
        backend.breaker_quiet = backend.breaker.quiet
        retry_at = backend.breaker.retry_at
        if retry_at is not None:
            self.router.schedule(retry_at, backend.breaker.poll)
        self.router.refresh(backend)
        self.router.dispatch()  # a slot for waiters, or, if none can come any more, their error now

    # -- health ----------------------------------------------------------------------

    async def health_check(self, backend_id: BackendID) -> HealthStatus:
        """Probe a backend now; the outcome counts toward its thresholds."""
        backend = self._get(backend_id)
        await self._health.check(backend)
        return backend.health.last

    def configure_probe_tls(self, tls: ProbeTLS | None) -> None:
        """Probe over TLS with ``tls`` from the next probe on (None: plain TCP and HTTP)."""
        self._prober.tls = tls

    def configure_probe(self, probe: Probe | None) -> None:
        """Probe with ``probe`` from the next probe on (None: the configured TCP or HTTP check)."""
        self._prober.custom = probe

    def watch_probes(self, observer: Callable[[HealthStatus], None]) -> None:
        """Tell ``observer`` the outcome of every probe this module makes (to share it with others)."""
        self._health.observers.append(observer)

    async def follow_health(self, status: HealthStatus) -> None:
        """Take a probe's outcome made elsewhere (``watch_probes`` of another module, with
        ``health_check.enabled: false`` here) as this module's own. Unknown id: :class:`BackendNotFoundError`."""
        await self._health.follow(self._get(status.backend_id), status)

    # -- background -------------------------------------------------------------------

    async def _cleanup_loop(self) -> None:
        period = min(self.config.session_ttl, 60.0)
        while True:
            await self.clock.sleep(period)
            try:
                await self.store.purge_expired()
            except Exception as exc:
                log_event("state_cleanup_error", logging.ERROR, error=repr(exc))

    # -- observation and control ------------------------------------------------------

    async def get_load_distribution(self) -> LoadDistribution:
        """A snapshot of every backend's load, health and latency. No I/O on the memory store."""
        return await load_distribution(self.router, self.store, self.clock, self.total_requests)

    def describe_backend(self, backend_id: BackendID) -> dict[str, Any]:
        """One backend as :meth:`get_load_distribution` describes it; :class:`BackendNotFoundError` if unknown."""
        return describe(self._get(backend_id), self.clock.monotonic(), self.total_requests)

    async def configure_algorithm(self, algorithm: LoadBalancingAlgorithm | Mapping[str, Any] | str) -> None:
        """Switch algorithm at once; :class:`AlgorithmError` if it is unsupported or misconfigured."""
        factory = AlgorithmFactory(algorithm, self.rng, self.clock)
        self.router.set_algorithm(factory)
        log_event("algorithm_changed", algorithm=str(factory.kind), config=factory.settings)

    async def execute(self, params: Any) -> dict[str, Any]:
        """The dict interface for integration; never raises for bad input (a non-dict included,
        hence ``Any``: compiled code would otherwise reject it before the check)."""
        try:
            result = await self._operations.run(params)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return {"status": "error", "error": str(exc), "error_type": type(exc).__name__}
        return {"status": "success", "result": result}

    # -- integrations ---------------------------------------------------------------

    async def integrate_auto_scaling(self, scaler: Any) -> None:
        """Send ``scaler`` load reports and capacity-exhausted events (the hooks it defines)."""
        self._hooks.scalers.append(scaler)
        if self._initialized:
            self._hooks.start_reports()
        log_event("auto_scaling_integrated", scaler=type(scaler).__name__)

    async def integrate_redundant_deployment(self, deployment: Any) -> list[BackendID]:
        """Add ``deployment.list_replicas()`` as backends and report health changes to it."""
        self._hooks.deployments.append(deployment)
        added: list[BackendID] = []
        replicas = await maybe_call(deployment, "list_replicas")
        for replica in replicas or ():
            added.append(await self.add_backend(replica))
        log_event("redundant_deployment_integrated", deployment=type(deployment).__name__, replicas=len(added))
        return added

    # -- draining ---------------------------------------------------------------------

    @property
    def draining(self) -> Set[str]:
        """Ids of the backends being drained now."""
        return self._drains.ids

    async def drain_backend(self, backend_id: BackendID, timeout: float | None = None) -> DrainResult:
        """Stop new requests to a backend, wait for its requests in flight, then remove it.

        From the call on the backend is no candidate for any pick (sticky
        sessions bound to it move elsewhere); it stays listed, marked
        ``draining``, until its last request in flight completes or ``timeout``
        seconds pass (default ``request_timeout``), and is then removed; requests
        still running then may complete without error. A second call for the
        same backend waits for the same drain. Cancelling the caller does not
        stop the drain. Unknown id: :class:`BackendNotFoundError`.
        """
        return await asyncio.shield(self.begin_drain(backend_id, timeout))

    def begin_drain(self, backend_id: BackendID, timeout: float | None = None) -> asyncio.Task[DrainResult]:
        """:meth:`drain_backend` without waiting: the backend leaves every pick now; the task
        running its drain is returned."""
        task = self._drains.running(backend_id)
        if task is None:
            backend = self._get(backend_id)
            wait = self.config.request_timeout if timeout is None else timeout
            if wait < 0:
                raise ValueError(f"timeout: must be >= 0, got {wait}")
            task = self._drains.start(backend, wait)
        return task

    # -- discovery ---------------------------------------------------------------------

    def watch(
        self,
        provider: Provider,
        *,
        name: str = "discovery",
        retry_min: float = 1.0,
        retry_max: float = 30.0,
        target: Target | None = None,
    ) -> Watch:
        """Keep the backends to the sets ``provider`` yields (docs/discovery.md): added ones join
        (through slow start), vanished ones drain, changed ones are replaced; a provider that
        fails keeps the last good set, is counted (``discovery_errors``) and is retried after a
        back-off on :attr:`clock`. ``target``: what the sets change, if not this module alone
        (the proxy's supervisor: this module and its workers). The watch stops with
        :meth:`shutdown` or its own :meth:`Watch.stop`."""
        watch = Watch(
            self if target is None else target,
            provider,
            self.clock,
            name=name,
            retry_min=retry_min,
            retry_max=retry_max,
            on_error=self._discovery_failed,
        )
        self._watches = [w for w in self._watches if w.task is not None]  # those stopped meanwhile go
        self._watches.append(watch)
        watch.start()
        return watch

    def _discovery_failed(self, _error: str) -> None:
        self.counters["discovery_errors"] += 1
