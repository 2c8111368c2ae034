"""``LoadBalancingModule``: the facade of the seed README.

It wires the policies together: rate limiting and flood blocking, sticky
sessions, the routing core (:mod:`.router`), circuit breakers, active health
checks, retries, slow start, metrics and the integration hooks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from types import TracebackType
from typing import Any, TypeVar

from ._log import log_event
from .algorithms import AlgorithmFactory
from .backend import Backend
from .breaker import CircuitBreaker
from .clock import Clock, SystemClock
from .config import BackendConfig, LoadBalancingAlgorithm, LoadBalancingModuleConfig, Request
from .enums import CircuitState, HealthState
from .exceptions import (
    BackendNotFoundError,
    BackendUnavailableError,
    LoadBalancingError,
    RateLimitExceededError,
    RequestTimeoutError,
    RoutingError,
)
from .health import HealthTracker, Probe, ProbeFailed, ProbeNotRun, Prober
from .models import DrainResult, HealthStatus, LoadDistribution, RouteResult
from .retry import ExponentialJitterBackoff, RetryBudget
from .router import Router
from .state import MemoryStore, StateStore
from .stats import RequestStats

T = TypeVar("T")
BackendID = str

SLOW_START_STEPS = 20
SLOW_START_FLOOR = 0.05  # share of its weight a backend starts slow start with
DRAIN_POLL = 0.01  # seconds between looks at a draining backend's requests in flight


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
        self._prober = Prober(self.config.health_check, self.clock, probe)
        self.backoff = ExponentialJitterBackoff(self.config.retry_backoff_base, self.config.retry_backoff_max, self.rng)
        self.retry_budget = RetryBudget(self.config.retry_budget_percent, self.config.retry_budget_min_concurrency)
        self._rid_prefix = f"{self.rng.getrandbits(32):08x}"
        self._rid_seq = 0
        self.total_requests = 0
        self.counters = {"rate_limited": 0, "ddos_blocked": 0, "retries": 0, "queue_timeouts": 0, "unavailable": 0,
                         "probes_not_run": 0}  # fmt: skip
        self.request_stats = RequestStats()  # answered requests by status class: filled by the proxy
        self._health_tasks: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._scalers: list[Any] = []
        self._deployments: list[Any] = []
        self._outstanding: dict[str, RouteResult] = {}  # routed through execute(), awaiting completion
        self._drains: dict[str, asyncio.Task[DrainResult]] = {}  # by backend id
        self._initialized = False

    # -- lifecycle -----------------------------------------------------------

    async def initialize(self) -> None:
        """Start background work: health checks, session cleanup, load reports."""
        if self._initialized:
            return
        self._initialized = True
        for backend in self.router.members():
            self._start_health(backend)
        self._tasks.append(asyncio.create_task(self._cleanup_loop(), name="omnixan-lb-cleanup"))
        if self._scalers:
            self._start_load_reports()
        log_event("module_initialized", algorithm=self.router.factory.kind.value, backends=len(self.router.backends))

    async def shutdown(self) -> None:
        """Stop background work and wait for it; waiting requests fail."""
        if not self._initialized:
            return
        self._initialized = False
        tasks = [*self._tasks, *self._health_tasks.values(), *self._drains.values()]
        self._tasks.clear()
        self._health_tasks.clear()
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

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        await self.shutdown()

    # -- backends --------------------------------------------------------------

    async def add_backend(self, backend: BackendConfig | Mapping[str, Any]) -> BackendID:
        """Add a backend; it starts HEALTHY. Returns its id (``host:port``, made unique)."""
        config = backend if isinstance(backend, BackendConfig) else BackendConfig.model_validate(backend)
        backend_id = self._new_id(config)
        tracker = HealthTracker(backend_id, self.config.health_check)
        breaker = CircuitBreaker(self.config.circuit_breaker, self.clock)
        now = self.clock.monotonic()
        runtime = Backend(backend_id, config, breaker, tracker, now=now)
        breaker.listener = lambda _b, old, new: self._on_circuit_change(runtime, old, new)
        self._begin_slow_start(runtime, now)
        self.router.add(runtime)
        self._start_health(runtime)
        log_event("backend_added", backend_id=backend_id, address=config.address, weight=config.weight,
                  priority=config.priority, quantum_capable=config.quantum_capable)  # fmt: skip
        return backend_id

    async def remove_backend(self, backend_id: BackendID) -> None:
        """Stop routing to a backend at once; requests already routed may still complete."""
        backend = self._get(backend_id)
        self.router.remove(backend)
        self.router.dispatch()  # waiters that only this backend could have served fail now
        task = self._health_tasks.pop(backend_id, None)
        if task is not None:
            task.cancel()
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
            await self._admit(request)
        if (self._sticky and request.session_id) or prefer is not None:
            return await self._route(request, started, (), prefer=prefer)
        router = self.router
        backend = None if router.waiters else router.pick(request)
        if backend is None:
            backend = await self._wait_for_slot(request, (), started)
        else:
            router.take(backend)
        return self._result(request, backend, started, 1)

    async def route_retry(self, request: Request, tried: Sequence[Backend], *, attempt: int,
                          started: float | None = None) -> RouteResult:  # fmt: skip
        """Route a retry of ``request`` to a backend not in ``tried`` (the ``backend`` of
        earlier results). No rate limit: the client made one request. ``started`` is when
        the whole request began, for the queue's timeout."""
        now = self.clock.monotonic()
        if now >= self.router.next_timer:
            self.router.run_timers(now)
        return await self._route(request, now if started is None else started, tuple(tried), attempt)

    async def _route(self, request: Request, started: float, exclude: tuple[Backend, ...],
                     attempt: int = 1, prefer: str | None = None) -> RouteResult:  # fmt: skip
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
        return RouteResult(backend, kind, request.request_id, latency_ms, attempt, now, self._rid_prefix,
                           self._rid_seq)  # fmt: skip

    async def _wait_for_slot(self, request: Request, exclude: tuple[Backend, ...], started: float) -> Backend:
        try:
            self.router.must_wait(exclude)
            remaining = self.config.request_timeout - (self.clock.monotonic() - started)
            return await self.router.wait(request, exclude, max(remaining, 0.0))
        except RequestTimeoutError:
            self.counters["queue_timeouts"] += 1
            await self._capacity_exhausted(request)
            raise
        except BackendUnavailableError:
            self.counters["unavailable"] += 1
            await self._capacity_exhausted(request)
            raise

    async def _admit(self, request: Request) -> None:
        """Flood blocking, then the token bucket, for the request's client IP."""
        limits = self.config.rate_limit
        ip = request.client_ip
        blocked_for, newly = await self.store.record_attempt(ip, limits.ddos_threshold, limits.ddos_block_seconds)
        if blocked_for > 0:
            self.counters["ddos_blocked"] += 1
            if newly:
                log_event("client_blocked", logging.WARNING, client_ip=ip, seconds=limits.ddos_block_seconds,
                          threshold=limits.ddos_threshold)  # fmt: skip
            raise RateLimitExceededError(f"client {ip} is blocked for flooding ({blocked_for:.1f} s left)",
                                         retry_after=blocked_for, client_ip=ip, blocked=True)  # fmt: skip
        wait = await self.store.take_token(ip, limits.requests_per_second, limits.burst_size)
        if wait > 0:
            self.counters["rate_limited"] += 1
            raise RateLimitExceededError(f"client {ip} is over {limits.requests_per_second:g} requests/s",
                                         retry_after=wait, client_ip=ip)  # fmt: skip

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
        the block ends, as a failure if it raised (abandoned if it was cancelled)."""
        return Acquired(self, request)

    async def call(self, request: Request, fn: Callable[[RouteResult], Awaitable[T]]) -> T:
        """Route and await ``fn(result)``, retrying failures on untried backends.

        Each try runs within ``request_timeout``. Between tries it sleeps an
        exponential backoff with full jitter; retries stop at ``max_retries``,
        when the retry budget is spent, or when no untried backend is left.
        All tries failed: :class:`RoutingError` from the last error.
        """
        started = self.clock.monotonic()
        if started >= self.router.next_timer:
            self.router.run_timers(started)
        if self._rate_limited:
            await self._admit(request)
        tried: list[Backend] = []
        last_error: BaseException | None = None
        retry = 0
        in_budget = False  # this call holds one unit of the retry budget
        try:
            while True:
                try:
                    result = await self._route(request, self.clock.monotonic(), tuple(tried), attempt=retry + 1)
                except RoutingError as exc:
                    if last_error is None:
                        raise
                    error = RoutingError(f"{len(tried)} tries failed and no other backend can take the request "
                                         f"({exc}); last error: {last_error!r}")  # fmt: skip
                    error.__cause__ = last_error  # see the end of this method
                    raise error  # noqa: B904 - its cause is set just above
                tried.append(result.backend)
                try:
                    value = await self.clock.wait_for(fn(result), self.config.request_timeout)
                except asyncio.CancelledError:
                    self.abandon_request(result)
                    raise
                except Exception as exc:
                    self.complete_now(result, success=False)
                    last_error = self._attempt_error(result, exc)
                else:
                    self.complete_now(result, success=True)
                    return value
                if in_budget:
                    self.retry_budget.active -= 1
                    in_budget = False
                if retry >= self.config.max_retries or not self.retry_budget.allows(self.router.in_flight):
                    break
                retry += 1
                self.counters["retries"] += 1
                self.retry_budget.active += 1
                in_budget = True
                log_event("request_retry", logging.DEBUG, request_id=result.request_id, retry=retry,
                          failed_backend=result.backend_id, error=repr(last_error))  # fmt: skip
                await self.clock.sleep(self.backoff(retry))
        finally:
            if in_budget:
                self.retry_budget.active -= 1
        error = RoutingError(f"request {result.request_id} failed after {len(tried)} tries: {last_error!r}")
        # Not ``raise ... from last_error``: compiled by mypyc, a coroutine loses the cause that way.
        error.__cause__ = last_error
        raise error

    def _attempt_error(self, result: RouteResult, exc: Exception) -> Exception:
        if not isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or isinstance(exc, LoadBalancingError):
            return exc
        error = RequestTimeoutError(
            f"backend {result.backend_id} did not answer within {self.config.request_timeout:g} s"
        )
        error.__cause__ = exc
        return error

    # -- breakers, slow start ------------------------------------------------------

    def _on_circuit_change(self, backend: Backend, old: CircuitState, new: CircuitState) -> None:
        log_event("circuit_state_changed", logging.WARNING if new is CircuitState.OPEN else logging.INFO,
                  backend_id=backend.id, old=old.value, new=new.value)  # fmt: skip
        backend.breaker_quiet = backend.breaker.quiet
        retry_at = backend.breaker.retry_at
        if retry_at is not None:
            self.router.schedule(retry_at, backend.breaker.poll)
        self.router.refresh(backend)
        self.router.dispatch()  # a slot for waiters, or, if none can come any more, their error now

    def _begin_slow_start(self, backend: Backend, now: float) -> None:
        duration = backend.config.slow_start_seconds
        if duration <= 0:
            return
        backend.joined_at = now
        backend.effective_weight = backend.weight * SLOW_START_FLOOR
        self.router.schedule(now + duration / SLOW_START_STEPS, lambda: self._slow_start_step(backend))

    def _slow_start_step(self, backend: Backend) -> None:
        if backend.removed:
            return
        duration = backend.config.slow_start_seconds
        now = self.clock.monotonic()
        share = min(1.0, max(SLOW_START_FLOOR, (now - backend.joined_at) / duration))
        backend.effective_weight = backend.weight * share
        self.router.refresh(backend)
        if share < 1.0:
            self.router.schedule(now + duration / SLOW_START_STEPS, lambda: self._slow_start_step(backend))

    # -- health ----------------------------------------------------------------------

    async def health_check(self, backend_id: BackendID) -> HealthStatus:
        """Probe a backend now; the outcome counts toward its thresholds."""
        backend = self._get(backend_id)
        await self._check(backend)
        return backend.health.last

    async def _check(self, backend: Backend) -> None:
        try:
            latency: float | None = await self._prober.probe(backend.config)
            error = None
        except ProbeFailed as exc:
            latency, error = None, str(exc)
        except ProbeNotRun as exc:  # this host is out of descriptors or memory: no news of the backend
            self.counters["probes_not_run"] += 1
            log_event("health_probe_not_run", logging.WARNING, backend_id=backend.id, error=str(exc))
            return
        if backend.removed:
            return
        now = self.clock.monotonic()
        old = backend.health.state
        new = backend.health.record(error is None, latency, self.clock.time(), error)
        if latency is not None and self.router.observe(backend, latency, now):
            self.router.refresh(backend)
        if new is old:
            return
        log_event("health_state_changed", logging.WARNING if new is HealthState.UNHEALTHY else logging.INFO,
                  backend_id=backend.id, old=old.value, new=new.value, error=error)  # fmt: skip
        if old is HealthState.UNHEALTHY:
            self._begin_slow_start(backend, now)
        self.router.refresh(backend)
        self.router.dispatch()
        for deployment in self._deployments:
            await _maybe_call(deployment, "on_backend_health_change", backend.id, backend.health.last)

    def _start_health(self, backend: Backend) -> None:
        if self._initialized and self.config.health_check.enabled and backend.id not in self._health_tasks:
            self._health_tasks[backend.id] = asyncio.create_task(
                self._health_loop(backend), name=f"omnixan-lb-health-{backend.id}"
            )

    async def _health_loop(self, backend: Backend) -> None:
        cfg = self.config.health_check
        await self.clock.sleep(self.rng.uniform(0.0, cfg.interval))  # spread the fleet's first probes
        # Checking _initialized too: on Python 3.10 asyncio.wait_for can lose shutdown()'s cancel.
        while self._initialized and not backend.removed:
            try:
                await self._check(backend)
            except Exception as exc:  # a bug in a hook must not stop health checking
                log_event("health_check_error", logging.ERROR, backend_id=backend.id, error=repr(exc))
            await self.clock.sleep(cfg.interval * (1.0 + self.rng.uniform(-cfg.jitter, cfg.jitter)))

    # -- background -------------------------------------------------------------------

    async def _cleanup_loop(self) -> None:
        period = min(self.config.session_ttl, 60.0)
        while True:
            await self.clock.sleep(period)
            try:
                await self.store.purge_expired()
            except Exception as exc:
                log_event("state_cleanup_error", logging.ERROR, error=repr(exc))

    def _start_load_reports(self) -> None:
        if not any(t.get_name() == "omnixan-lb-load-report" for t in self._tasks):
            self._tasks.append(asyncio.create_task(self._load_report_loop(), name="omnixan-lb-load-report"))

    async def _load_report_loop(self) -> None:
        while True:
            await self.clock.sleep(self.config.load_report_interval)
            distribution = await self.get_load_distribution()
            for scaler in self._scalers:
                await _maybe_call(scaler, "on_load_report", distribution)

    async def _capacity_exhausted(self, request: Request) -> None:
        for scaler in self._scalers:
            await _maybe_call(scaler, "on_capacity_exhausted", request)

    # -- observation and control ------------------------------------------------------

    async def get_load_distribution(self) -> LoadDistribution:
        """A snapshot of every backend's load, health and latency. No I/O on the memory store."""
        now = self.clock.monotonic()
        if now >= self.router.next_timer:
            self.router.run_timers(now)
        total = self.total_requests
        backends = {b.id: self._describe(b, now, total) for b in self.router.members()}
        return LoadDistribution(
            total_requests=total,
            # Completions per second over the last 10 s, summed from the backends' windows.
            requests_per_second=sum(b["requests_per_second"] for b in backends.values()),
            algorithm=self.router.factory.kind,
            timestamp=self.clock.time(),
            active_sessions=await self.store.session_count(),
            queued_requests=self.router.queued,
            backends=backends,
        )

    @staticmethod
    def _describe(b: Backend, now: float, total: int) -> dict[str, Any]:
        window = b.latency_summary(now)
        completed = b.successful + b.failed
        return {
            "backend_id": b.id,
            "host": b.host,
            "port": b.port,
            "weight": b.weight,
            "effective_weight": b.effective_weight,
            "priority": b.priority,
            "quantum_capable": b.quantum,
            "max_connections": b.config.max_connections,
            "metadata": dict(b.config.metadata),
            "active_connections": b.in_flight,
            "total_requests": b.total,
            "successful_requests": b.successful,
            "failed_requests": b.failed,
            "requests_per_second": window.per_second,
            "avg_latency_ms": window.avg_ms,
            "p50_latency_ms": window.p50_ms,
            "p95_latency_ms": window.p95_ms,
            "p99_latency_ms": window.p99_ms,
            "error_rate": window.error_rate if window.samples else (b.failed / completed if completed else 0.0),
            "health_status": b.health.state.value,
            "circuit_state": b.breaker.state.value,
            "load_fraction": b.total / total if total else 0.0,
            "draining": b.excluded > 0,  # only a drain leaves a backend excluded between picks
        }

    def describe_backend(self, backend_id: BackendID) -> dict[str, Any]:
        """One backend as :meth:`get_load_distribution` describes it; :class:`BackendNotFoundError` if unknown."""
        return self._describe(self._get(backend_id), self.clock.monotonic(), self.total_requests)

    async def configure_algorithm(self, algorithm: LoadBalancingAlgorithm | Mapping[str, Any] | str) -> None:
        """Switch algorithm at once; :class:`AlgorithmError` if it is unsupported or misconfigured."""
        factory = AlgorithmFactory(algorithm, self.rng, self.clock)
        self.router.set_algorithm(factory)
        log_event("algorithm_changed", algorithm=factory.kind.value, config=factory.settings)

    async def execute(self, params: Any) -> dict[str, Any]:
        """The dict interface for integration; never raises for bad input (a non-dict included,
        hence ``Any``: compiled code would otherwise reject it before the check)."""
        from .operations import run_operation

        try:
            result = await run_operation(self, params)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return {"status": "error", "error": str(exc), "error_type": type(exc).__name__}
        return {"status": "success", "result": result}

    # -- integrations ---------------------------------------------------------------

    async def integrate_auto_scaling(self, scaler: Any) -> None:
        """Send ``scaler`` load reports and capacity-exhausted events (the hooks it defines)."""
        self._scalers.append(scaler)
        if self._initialized:
            self._start_load_reports()
        log_event("auto_scaling_integrated", scaler=type(scaler).__name__)

    async def integrate_redundant_deployment(self, deployment: Any) -> list[BackendID]:
        """Add ``deployment.list_replicas()`` as backends and report health changes to it."""
        self._deployments.append(deployment)
        added: list[BackendID] = []
        replicas = await _maybe_call(deployment, "list_replicas")
        for replica in replicas or ():
            added.append(await self.add_backend(replica))
        log_event("redundant_deployment_integrated", deployment=type(deployment).__name__, replicas=len(added))
        return added

    # -- draining ---------------------------------------------------------------------

    @property
    def draining(self) -> Set[str]:
        """Ids of the backends being drained now."""
        return self._drains.keys()

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
        task = self._drains.get(backend_id)
        if task is None:
            backend = self._get(backend_id)
            wait = self.config.request_timeout if timeout is None else timeout
            if wait < 0:
                raise ValueError(f"timeout: must be >= 0, got {wait}")
            backend.excluded += 1
            self.router.refresh(backend)
            self.router.dispatch()
            log_event("backend_draining", backend_id=backend_id, in_flight=backend.in_flight, timeout=wait)
            task = asyncio.create_task(self._drain(backend, wait), name=f"omnixan-lb-drain-{backend_id}")
            self._drains[backend_id] = task
        return await asyncio.shield(task)

    async def _drain(self, backend: Backend, timeout: float) -> DrainResult:
        clock = self.clock
        started, started_wall = clock.monotonic(), clock.time()
        in_flight = backend.in_flight
        deadline = started + timeout
        try:
            while backend.in_flight and not backend.removed and clock.monotonic() < deadline:
                await clock.sleep(min(DRAIN_POLL, max(deadline - clock.monotonic(), 0.0)))
        except asyncio.CancelledError:  # shutdown: leave the backend as it was
            if not backend.removed:
                backend.excluded -= 1
                self.router.refresh(backend)
            raise
        finally:
            self._drains.pop(backend.id, None)
        left = backend.in_flight
        if not backend.removed:
            await self.remove_backend(backend.id)
        result = DrainResult(backend_id=backend.id, in_flight=in_flight, completed=left == 0, in_flight_left=left,
                             started_at=started_wall, finished_at=clock.time(),
                             waited_seconds=clock.monotonic() - started)  # fmt: skip
        log_event("backend_drained", backend_id=backend.id, in_flight=in_flight, in_flight_left=left,
                  waited_seconds=round(result.waited_seconds, 3))  # fmt: skip
        return result


async def _maybe_call(target: Any, name: str, *args: Any) -> Any:
    """Call ``target.name(*args)`` if defined, awaiting it if it is async; log its errors."""
    method = getattr(target, name, None)
    if method is None:
        return None
    try:
        outcome = method(*args)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        return outcome
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log_event("integration_hook_error", logging.ERROR, hook=f"{type(target).__name__}.{name}", error=repr(exc))
        return None


class Acquired:
    """The async context manager of :meth:`LoadBalancingModule.acquire` (a class, not a generator,
    so that the module compiles with mypyc)."""

    __slots__ = ("_lb", "_request", "_result")

    def __init__(self, lb: LoadBalancingModule, request: Request) -> None:
        self._lb = lb
        self._request = request
        self._result: RouteResult | None = None

    async def __aenter__(self) -> RouteResult:
        self._result = await self._lb.route_request(self._request)
        return self._result

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        result = self._result
        if result is None:
            return
        if exc_type is None:
            self._lb.complete_now(result, success=True)
        elif issubclass(exc_type, asyncio.CancelledError):
            self._lb.abandon_request(result)
        else:
            self._lb.complete_now(result, success=False)
