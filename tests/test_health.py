"""Active health checking, end to end.

Real probes (TCP connect, HTTP GET) run against real servers on 127.0.0.1
started by each test (see ``servers.py``), on the real clock with timeouts of
at most 0.2 s. The threshold state machine and the background probe schedule
are tested on a :class:`FakeClock` with a custom probe, so they are exact.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import itertools
import os
import random
import sys
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from load_balancing_module import (
    BackendConfig,
    BackendNotFoundError,
    BackendUnavailableError,
    FakeClock,
    HealthCheckConfig,
    HealthState,
    HealthStatus,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
)
from servers import HttpServer, TcpListener, closed_port, unaccepting_port

HOST = "127.0.0.1"
HEALTHY, DEGRADED, UNHEALTHY = HealthState.HEALTHY, HealthState.DEGRADED, HealthState.UNHEALTHY

# Probes only when the test asks (health_check); no background probes interfere.
MANUAL = {"enabled": False, "timeout": 0.2, "unhealthy_threshold": 3, "healthy_threshold": 2}

Factory = Callable[..., Awaitable[LoadBalancingModule]]


@pytest.fixture
async def make_lb() -> AsyncIterator[Factory]:
    """Build an initialized module; every one is shut down after the test."""
    made: list[LoadBalancingModule] = []

    async def factory(
        start: bool = True, probe: Any = None, clock: Any = None, rng: Any = None, **health: Any
    ) -> LoadBalancingModule:
        config = LoadBalancingModuleConfig(health_check=HealthCheckConfig(**{**MANUAL, **health}))
        lb = LoadBalancingModule(config, probe=probe, clock=clock, rng=rng)
        made.append(lb)
        if start:
            await lb.initialize()
        return lb

    yield factory
    for lb in made:
        await asyncio.wait_for(lb.shutdown(), 5.0)  # fail, rather than hang, if background work never ends


@pytest.fixture
async def http() -> AsyncIterator[HttpServer]:
    async with HttpServer() as server:
        server.answer("/health")
        yield server


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll on the real clock (10 ms steps) until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


class Probes:
    """A custom probe for FakeClock tests: per-port outcome and latency, and a log of calls."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.ok: dict[int, bool] = {}
        self.latency_s: dict[int, float] = {}
        self.calls: list[tuple[int, float]] = []

    async def __call__(self, backend: BackendConfig) -> bool:
        self.calls.append((backend.port, self.clock.monotonic()))
        # The probe "takes" latency_s: move the fake clock without waking sleepers.
        self.clock.set(self.clock.monotonic() + self.latency_s.get(backend.port, 0.0))
        return self.ok.get(backend.port, True)

    def times(self, port: int) -> list[float]:
        return [t for p, t in self.calls if p == port]


def state(lb: LoadBalancingModule, backend_id: str) -> HealthState:
    return lb.backends[backend_id].health.state


async def route_counts(lb: LoadBalancingModule, n: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(n):
        result = await lb.route_request(Request())
        counts[result.backend_id] = counts.get(result.backend_id, 0) + 1
        await lb.complete_request(result, success=True)
    return counts


# -- 1. TCP probe ------------------------------------------------------------------


async def test_tcp_probe_passes_against_a_listening_socket(make_lb: Factory) -> None:
    lb = await make_lb()
    async with TcpListener() as listener:
        bid = await lb.add_backend(BackendConfig(host=HOST, port=listener.port))
        status = await lb.health_check(bid)
        await wait_until(lambda: listener.accepted == 1)
    assert status.status is HEALTHY
    assert status.error is None
    assert status.consecutive_successes == 1 and status.consecutive_failures == 0
    assert status.latency_ms is not None and status.latency_ms > 0


async def test_tcp_probe_fails_on_a_closed_port_naming_the_refusal(make_lb: Factory) -> None:
    lb = await make_lb()
    port = closed_port()
    bid = await lb.add_backend(BackendConfig(host=HOST, port=port))
    status = await lb.health_check(bid)
    assert status.error is not None and "refused" in status.error.lower()
    assert status.consecutive_failures == 1 and status.consecutive_successes == 0
    assert status.latency_ms is None
    assert status.status is HEALTHY  # one failure of three


async def test_tcp_probe_of_an_unresolvable_host_names_the_host(make_lb: Factory) -> None:
    lb = await make_lb()
    bid = await lb.add_backend(BackendConfig(host="no-such-backend.test", port=8080))
    status = await lb.health_check(bid)
    assert status.error is not None and "no-such-backend.test" in status.error
    assert status.consecutive_failures == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relies on Linux dropping SYNs to a full queue")
async def test_tcp_probe_times_out_against_a_listener_that_accepts_nothing(make_lb: Factory) -> None:
    lb = await make_lb(timeout=0.1)
    with unaccepting_port() as port:
        bid = await lb.add_backend(BackendConfig(host=HOST, port=port))
        started = time.monotonic()
        status = await asyncio.wait_for(lb.health_check(bid), 2.0)  # the connect itself would hang for minutes
        elapsed = time.monotonic() - started
    assert status.error == f"no answer from {HOST}:{port} within 0.1 s"
    assert elapsed < 1.0


async def test_health_check_of_an_unknown_backend_raises(make_lb: Factory) -> None:
    lb = await make_lb()
    with pytest.raises(BackendNotFoundError):
        await lb.health_check("127.0.0.1:1")
    bid = await lb.add_backend(BackendConfig(host=HOST, port=9001))
    await lb.remove_backend(bid)
    with pytest.raises(KeyError):
        await lb.health_check(bid)


# -- 2. HTTP probe -------------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 204, 301, 302, 307, 308])
async def test_http_probe_passes_on_2xx_and_3xx_without_following_redirects(
    make_lb: Factory, http: HttpServer, code: int
) -> None:
    http.answer("/health", code, headers={"Location": "/elsewhere"} if code >= 300 else None)
    http.answer("/elsewhere", 500)  # followed, the redirect would fail the probe
    lb = await make_lb(type="http")
    bid = await lb.add_backend(BackendConfig(host=HOST, port=http.port))
    status = await lb.health_check(bid)
    assert status.error is None
    assert status.consecutive_successes == 1
    assert http.requests == ["/health"]


@pytest.mark.parametrize("code", [404, 500, 503])
async def test_http_probe_fails_on_4xx_and_5xx_naming_the_status(make_lb: Factory, http: HttpServer, code: int) -> None:
    http.answer("/health", code)
    lb = await make_lb(type="http")
    bid = await lb.add_backend(BackendConfig(host=HOST, port=http.port))
    status = await lb.health_check(bid)
    assert status.error is not None and f"HTTP {code}" in status.error
    assert status.consecutive_failures == 1 and status.latency_ms is None
    assert http.requests == ["/health"]


async def test_http_probe_requests_the_configured_path(make_lb: Factory, http: HttpServer) -> None:
    http.answer("/health", 500)
    http.answer("/ready/deep", 200)
    lb = await make_lb(type="http", path="/ready/deep")
    bid = await lb.add_backend(BackendConfig(host=HOST, port=http.port))
    status = await lb.health_check(bid)
    assert status.error is None
    assert http.requests == ["/ready/deep"]


async def test_http_probe_fails_when_the_answer_is_slower_than_the_timeout(make_lb: Factory, http: HttpServer) -> None:
    http.answer("/health", 200, delay=2.0)
    lb = await make_lb(type="http", timeout=0.1)
    bid = await lb.add_backend(BackendConfig(host=HOST, port=http.port))
    started = time.monotonic()
    status = await asyncio.wait_for(lb.health_check(bid), 2.0)
    elapsed = time.monotonic() - started
    assert status.error == f"no answer from {HOST}:{http.port} within 0.1 s"
    assert status.consecutive_failures == 1
    assert elapsed < 1.0  # well before the server would have answered
    assert http.requests == ["/health"]


async def test_http_probe_judges_the_status_line_not_a_slow_body(make_lb: Factory, http: HttpServer) -> None:
    # A health endpoint that streams its body: the status is known at once.
    http.answer("/health", 200, body_delay=2.0)
    http.answer("/broken", 500, body_delay=2.0)
    lb = await make_lb(type="http", timeout=0.2)
    bid = await lb.add_backend(BackendConfig(host=HOST, port=http.port))
    assert (await lb.health_check(bid)).error is None

    lb2 = await make_lb(type="http", timeout=0.2, path="/broken")
    bid2 = await lb2.add_backend(BackendConfig(host=HOST, port=http.port))
    status = await lb2.health_check(bid2)
    assert status.error is not None and "HTTP 500" in status.error


async def test_http_probe_fails_on_a_closed_port_naming_the_refusal(make_lb: Factory) -> None:
    lb = await make_lb(type="http")
    bid = await lb.add_backend(BackendConfig(host=HOST, port=closed_port()))
    status = await lb.health_check(bid)
    assert status.error is not None and "refused" in status.error.lower()


async def test_http_probe_of_an_unresolvable_host_names_the_host(make_lb: Factory) -> None:
    lb = await make_lb(type="http")
    bid = await lb.add_backend(BackendConfig(host="no-such-backend.test", port=8080))
    status = await lb.health_check(bid)
    assert status.error is not None and "no-such-backend.test" in status.error


async def test_http_probe_leaves_no_client_session_open(http: HttpServer) -> None:
    # health_check() works without initialize()/shutdown(); nothing may be left open.
    lb = LoadBalancingModule(LoadBalancingModuleConfig(health_check=HealthCheckConfig(type="http", enabled=False)))
    bid = await lb.add_backend(BackendConfig(host=HOST, port=http.port))
    assert (await lb.health_check(bid)).error is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del lb
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# -- 3. thresholds, DEGRADED, routing ------------------------------------------------------


async def test_thresholds_on_a_real_http_backend(make_lb: Factory, http: HttpServer) -> None:
    lb = await make_lb(type="http", unhealthy_threshold=3, healthy_threshold=2)
    bid = await lb.add_backend(BackendConfig(host=HOST, port=http.port))

    http.answer("/health", 500)
    for n in (1, 2):
        status = await lb.health_check(bid)
        assert (status.status, status.consecutive_failures, status.consecutive_successes) == (HEALTHY, n, 0)
    before = time.time()
    status = await lb.health_check(bid)
    after = time.time()
    assert isinstance(status, HealthStatus)
    assert status.backend_id == bid
    assert (status.status, status.consecutive_failures, status.consecutive_successes) == (UNHEALTHY, 3, 0)
    assert status.latency_ms is None and status.error is not None and "HTTP 500" in status.error
    assert status.checked_at is not None and before - 0.01 <= status.checked_at <= after + 0.01
    assert (await lb.get_load_distribution()).backends[bid]["health_status"] == "unhealthy"

    http.answer("/health", 200)
    status = await lb.health_check(bid)
    assert (status.status, status.consecutive_failures, status.consecutive_successes) == (UNHEALTHY, 0, 1)
    assert status.error is None and status.latency_ms is not None and status.latency_ms > 0
    status = await lb.health_check(bid)
    assert (status.status, status.consecutive_successes) == (HEALTHY, 2)
    assert (await lb.get_load_distribution()).backends[bid]["health_status"] == "healthy"


async def test_a_pass_between_failures_restarts_the_count(make_lb: Factory) -> None:
    lb = await make_lb(unhealthy_threshold=2)
    async with TcpListener() as listener:
        bid = await lb.add_backend(BackendConfig(host=HOST, port=listener.port))
        await listener.stop()
        assert (await lb.health_check(bid)).consecutive_failures == 1
        await listener.start()  # same port
        assert (await lb.health_check(bid)).consecutive_failures == 0
        await listener.stop()
        status = await lb.health_check(bid)
        assert (status.status, status.consecutive_failures) == (HEALTHY, 1)
        status = await lb.health_check(bid)
        assert (status.status, status.consecutive_failures) == (UNHEALTHY, 2)


async def test_a_slow_real_answer_marks_degraded_and_fast_ones_recover(make_lb: Factory, http: HttpServer) -> None:
    lb = await make_lb(type="http", degraded_latency_ms=40, healthy_threshold=2)
    bid = await lb.add_backend(BackendConfig(host=HOST, port=http.port))
    http.answer("/health", 200, delay=0.08)
    status = await lb.health_check(bid)
    assert status.status is DEGRADED and status.error is None
    assert status.latency_ms is not None and status.latency_ms >= 75

    http.answer("/health", 200)
    assert (await lb.health_check(bid)).status is DEGRADED  # one fast pass of two
    status = await lb.health_check(bid)
    assert status.status is HEALTHY
    assert status.latency_ms is not None and status.latency_ms < 40


async def test_degraded_state_machine(make_lb: Factory) -> None:
    clock = FakeClock()
    probes = Probes(clock)
    lb = await make_lb(clock=clock, probe=probes, degraded_latency_ms=100, unhealthy_threshold=2, healthy_threshold=2)
    bid = await lb.add_backend(BackendConfig(host=HOST, port=9001))

    def slow(s: float) -> None:
        probes.latency_s[9001] = s

    async def check() -> HealthStatus:
        return await lb.health_check(bid)

    slow(0.05)
    status = await check()
    assert status.status is HEALTHY and status.latency_ms == pytest.approx(50)
    slow(0.15)
    status = await check()
    assert status.status is DEGRADED and status.latency_ms == pytest.approx(150)
    slow(0.01)
    assert (await check()).status is DEGRADED
    slow(0.15)
    assert (await check()).status is DEGRADED  # the slow pass breaks the fast streak
    slow(0.01)
    assert (await check()).status is DEGRADED
    probes.ok[9001] = False
    assert (await check()).status is DEGRADED  # one failure of two also breaks it
    probes.ok[9001] = True
    assert (await check()).status is DEGRADED
    assert (await check()).status is HEALTHY

    # Leaving UNHEALTHY with a slow last pass lands in DEGRADED.
    probes.ok[9001] = False
    await check()
    assert (await check()).status is UNHEALTHY
    probes.ok[9001] = True
    assert (await check()).status is UNHEALTHY
    slow(0.15)
    assert (await check()).status is DEGRADED


async def test_routing_skips_unhealthy_and_degraded_only_as_a_fallback(make_lb: Factory) -> None:
    clock = FakeClock()
    probes = Probes(clock)
    lb = await make_lb(clock=clock, probe=probes, unhealthy_threshold=1, healthy_threshold=1, degraded_latency_ms=100)
    a = await lb.add_backend(BackendConfig(host=HOST, port=9001))
    b = await lb.add_backend(BackendConfig(host=HOST, port=9002))
    assert await route_counts(lb, 10) == {a: 5, b: 5}

    probes.ok[9001] = False
    assert (await lb.health_check(a)).status is UNHEALTHY
    assert await route_counts(lb, 10) == {b: 10}

    probes.latency_s[9002] = 0.2
    assert (await lb.health_check(b)).status is DEGRADED
    assert await route_counts(lb, 4) == {b: 4}  # the only candidate left

    probes.ok[9002] = False
    assert (await lb.health_check(b)).status is UNHEALTHY
    with pytest.raises(BackendUnavailableError):
        await lb.route_request(Request())

    probes.ok[9001] = True
    assert (await lb.health_check(a)).status is HEALTHY
    probes.ok[9002] = True
    assert (await lb.health_check(b)).status is DEGRADED  # still slow
    assert await route_counts(lb, 6) == {a: 6}  # HEALTHY preferred over DEGRADED


# -- 4. background probes and custom probes ----------------------------------------------------


async def test_background_probes_every_interval_with_jitter_not_in_lockstep(make_lb: Factory) -> None:
    clock = FakeClock()
    probes = Probes(clock)
    interval, jitter = 10.0, 0.2
    lb = await make_lb(
        start=False,
        clock=clock,
        rng=random.Random(20240611),
        probe=probes,
        enabled=True,
        interval=interval,
        jitter=jitter,
    )
    ports = [9001, 9002, 9003, 9004]
    for port in ports:
        await lb.add_backend(BackendConfig(host=HOST, port=port))
    assert probes.calls == []
    start = clock.monotonic()
    await lb.initialize()
    await clock.advance(200.0)

    firsts = []
    all_gaps: list[float] = []
    for port in ports:
        times = probes.times(port)
        # first probe in [0, interval], then one every interval * (1 ± jitter)
        assert 1 + (200 - interval) // (interval * (1 + jitter)) <= len(times) <= 1 + 200 // (interval * (1 - jitter))
        assert start <= times[0] <= start + interval  # first probes are spread over one interval
        firsts.append(times[0])
        gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times)]
        assert all(interval * (1 - jitter) - 1e-9 <= g <= interval * (1 + jitter) + 1e-9 for g in gaps), gaps
        assert len({round(g, 6) for g in gaps}) > 1  # jittered, not a fixed period
        all_gaps += gaps
    assert len({round(t, 6) for t in firsts}) == len(ports)
    for i, p in enumerate(ports):  # no two backends are probed at the same moment
        for q in ports[i + 1 :]:
            assert not {round(t, 6) for t in probes.times(p)} & {round(t, 6) for t in probes.times(q)}
    mean = sum(all_gaps) / len(all_gaps)
    assert interval * 0.95 <= mean <= interval * 1.05


async def test_background_probes_drive_the_thresholds(make_lb: Factory) -> None:
    clock = FakeClock()
    probes = Probes(clock)
    lb = await make_lb(
        clock=clock,
        rng=random.Random(1),
        probe=probes,
        enabled=True,
        interval=5.0,
        unhealthy_threshold=3,
        healthy_threshold=2,
    )
    bid = await lb.add_backend(BackendConfig(host=HOST, port=9001))
    probes.ok[9001] = False

    async def advance_to_probe(n: int) -> None:
        while len(probes.calls) < n:
            await clock.advance(0.5)

    await advance_to_probe(2)
    assert state(lb, bid) is HEALTHY
    await advance_to_probe(3)
    assert state(lb, bid) is UNHEALTHY
    probes.ok[9001] = True
    await advance_to_probe(4)
    assert state(lb, bid) is UNHEALTHY
    await advance_to_probe(5)
    assert state(lb, bid) is HEALTHY


async def test_shutdown_stops_background_probes(make_lb: Factory) -> None:
    clock = FakeClock()
    probes = Probes(clock)
    lb = await make_lb(clock=clock, probe=probes, enabled=True, interval=5.0)
    await lb.add_backend(BackendConfig(host=HOST, port=9001))
    await clock.advance(30.0)
    assert len(probes.calls) >= 5
    await asyncio.wait_for(lb.shutdown(), 1.0)  # real seconds: the loops must end, not be awaited forever
    seen = len(probes.calls)
    await clock.advance(100.0)
    assert len(probes.calls) == seen


async def test_removed_backend_is_no_longer_probed(make_lb: Factory) -> None:
    clock = FakeClock()
    probes = Probes(clock)
    lb = await make_lb(clock=clock, probe=probes, enabled=True, interval=5.0)
    bid = await lb.add_backend(BackendConfig(host=HOST, port=9001))
    await clock.advance(30.0)
    await lb.remove_backend(bid)
    seen = len(probes.calls)
    await clock.advance(100.0)
    assert len(probes.calls) == seen


async def test_disabled_health_checks_probe_nothing_in_the_background(make_lb: Factory) -> None:
    clock = FakeClock()
    probes = Probes(clock)
    lb = await make_lb(clock=clock, probe=probes, enabled=False, interval=1.0)
    bid = await lb.add_backend(BackendConfig(host=HOST, port=9001))
    await clock.advance(100.0)
    assert probes.calls == []
    await lb.health_check(bid)  # an explicit check still probes, once
    assert len(probes.calls) == 1


async def test_custom_probe_is_called_with_the_backend_config_and_false_fails(make_lb: Factory) -> None:
    seen: list[BackendConfig] = []
    answer: list[object] = [None]

    async def probe(backend: BackendConfig) -> object:
        seen.append(backend)
        return answer[0]

    lb = await make_lb(probe=probe, type="http")  # the custom probe wins over the built-in type
    config = BackendConfig(host=HOST, port=closed_port(), metadata={"zone": "a"})
    bid = await lb.add_backend(config)
    status = await lb.health_check(bid)
    assert seen == [config]
    assert status.error is None and status.consecutive_successes == 1  # None is a pass

    answer[0] = False
    status = await lb.health_check(bid)
    assert status.error == "custom probe returned False"
    assert status.consecutive_failures == 1


async def test_custom_probe_that_raises_counts_as_a_failure(make_lb: Factory) -> None:
    async def probe(backend: BackendConfig) -> bool:
        raise RuntimeError("database unreachable")

    lb = await make_lb(probe=probe, unhealthy_threshold=2)
    bid = await lb.add_backend(BackendConfig(host=HOST, port=9001))
    status = await lb.health_check(bid)
    assert status.error is not None and "RuntimeError" in status.error and "database unreachable" in status.error
    assert status.consecutive_failures == 1
    assert (await lb.health_check(bid)).status is UNHEALTHY


async def test_custom_probe_that_raises_fails_background_checks(make_lb: Factory) -> None:
    clock = FakeClock()
    calls = 0

    async def probe(backend: BackendConfig) -> bool:
        nonlocal calls
        calls += 1
        raise ValueError("bad answer")

    lb = await make_lb(clock=clock, probe=probe, enabled=True, interval=5.0, unhealthy_threshold=2)
    bid = await lb.add_backend(BackendConfig(host=HOST, port=9001))
    while calls < 2:
        await clock.advance(0.5)
    assert state(lb, bid) is UNHEALTHY


async def test_custom_probe_slower_than_the_timeout_fails(make_lb: Factory) -> None:
    clock = FakeClock()

    async def probe(backend: BackendConfig) -> bool:
        await clock.sleep(60.0)
        return True

    lb = await make_lb(clock=clock, probe=probe, timeout=1.0)
    bid = await lb.add_backend(BackendConfig(host=HOST, port=9001))
    check = asyncio.ensure_future(lb.health_check(bid))
    await clock.advance(1.0)
    status = await asyncio.wait_for(check, 1.0)
    assert status.error == f"no answer from {HOST}:9001 within 1 s"


class GatedProbe:
    """A custom probe that waits for the test to open the gate."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self, backend: BackendConfig) -> bool:
        self.entered.set()
        await self.gate.wait()
        return True


async def test_a_cancel_arriving_as_the_probe_ends_is_not_lost(make_lb: Factory) -> None:
    # The real clock: asyncio.wait_for before Python 3.12 returns the result instead of
    # raising when both happen in the same loop step (CPython gh-86296).
    probe = GatedProbe()
    lb = await make_lb(probe=probe)
    bid = await lb.add_backend(BackendConfig(host=HOST, port=9001))
    check = asyncio.ensure_future(lb.health_check(bid))
    await asyncio.wait_for(probe.entered.wait(), 1.0)
    probe.gate.set()
    check.cancel()
    with pytest.raises(asyncio.CancelledError):
        await check
    assert lb.backends[bid].health.last.checked_at is None  # the cancelled check recorded nothing


async def test_shutdown_during_a_finishing_probe_stops_the_loop(make_lb: Factory) -> None:
    probe = GatedProbe()
    lb = await make_lb(probe=probe, enabled=True, interval=0.01)
    await lb.add_backend(BackendConfig(host=HOST, port=9001))
    await asyncio.wait_for(probe.entered.wait(), 1.0)
    probe.gate.set()
    await asyncio.wait_for(lb.shutdown(), 1.0)  # a lost cancel leaves the loop running and shutdown waiting


# -- 5. redundant deployment hook ---------------------------------------------------------------


class Deployment:
    def __init__(self, replicas: list[BackendConfig]) -> None:
        self.replicas = replicas
        self.changes: list[tuple[str, Any]] = []

    def list_replicas(self) -> list[BackendConfig]:
        return self.replicas

    async def on_backend_health_change(self, backend_id: str, status: Any) -> None:
        await asyncio.sleep(0)  # really awaited
        self.changes.append((backend_id, status))


def change_states(deployment: Deployment) -> list[tuple[str, HealthState]]:
    """(backend id, new state) per reported change; the hook receives a HealthStatus."""
    out = []
    for backend_id, status in deployment.changes:
        assert isinstance(status, HealthStatus) and status.backend_id == backend_id
        out.append((backend_id, status.status))
    return out


async def test_redundant_deployment_adds_replicas_and_hears_every_health_change(make_lb: Factory) -> None:
    clock = FakeClock()
    probes = Probes(clock)
    lb = await make_lb(clock=clock, probe=probes, unhealthy_threshold=2, healthy_threshold=2, degraded_latency_ms=100)
    primary = BackendConfig(host=HOST, port=9001, priority=10)
    backup = BackendConfig(host=HOST, port=9002, priority=0)
    deployment = Deployment([primary, backup])
    ids = await lb.integrate_redundant_deployment(deployment)
    assert len(ids) == 2 and set(ids) == set(lb.backends)
    p, b = ids
    assert lb.backends[p].config == primary and lb.backends[b].config == backup
    assert await route_counts(lb, 3) == {p: 3}  # the primary tier

    probes.ok[9001] = False
    await lb.health_check(p)
    assert deployment.changes == []  # below the threshold: no change
    await lb.health_check(p)
    await lb.health_check(p)  # still UNHEALTHY: no new change
    assert change_states(deployment) == [(p, UNHEALTHY)]
    assert await route_counts(lb, 3) == {b: 3}  # failover to the backup tier

    probes.ok[9001] = True
    probes.latency_s[9001] = 0.2
    await lb.health_check(p)
    await lb.health_check(p)
    probes.latency_s[9001] = 0.0
    await lb.health_check(p)
    await lb.health_check(p)
    assert change_states(deployment) == [(p, UNHEALTHY), (p, DEGRADED), (p, HEALTHY)]
    assert await route_counts(lb, 3) == {p: 3}


async def test_redundant_deployment_hooks_may_be_sync_and_replicas_dicts(make_lb: Factory) -> None:
    changes: list[tuple[str, HealthState]] = []

    class SyncDeployment:
        async def list_replicas(self) -> list[Any]:
            return [{"host": HOST, "port": 9001}, BackendConfig(host=HOST, port=9002)]

        def on_backend_health_change(self, backend_id: str, status: HealthStatus) -> None:
            changes.append((backend_id, status.status))

    lb = await make_lb(probe=lambda _b: False, unhealthy_threshold=1)
    ids = await lb.integrate_redundant_deployment(SyncDeployment())
    assert [lb.backends[i].port for i in ids] == [9001, 9002]
    await lb.health_check(ids[1])
    assert changes == [(ids[1], UNHEALTHY)]


async def test_redundant_deployment_without_hooks_is_accepted(make_lb: Factory) -> None:
    lb = await make_lb(probe=lambda _b: False, unhealthy_threshold=1)
    assert await lb.integrate_redundant_deployment(object()) == []
    bid = await lb.add_backend(BackendConfig(host=HOST, port=9001))
    assert (await lb.health_check(bid)).status is UNHEALTHY


# -- 6. a real backend stopped and restarted mid-test ------------------------------------------------


async def test_stopped_backend_is_taken_out_and_brought_back_when_restarted(make_lb: Factory) -> None:
    servers = [HttpServer(), HttpServer()]
    for server in servers:
        await server.start()
        server.answer("/health")
        server.answer("/work", 200, body=b"done")
    a, b = servers
    deployment = Deployment([BackendConfig(host=HOST, port=a.port), BackendConfig(host=HOST, port=b.port)])
    lb = await make_lb(
        start=False, enabled=True, type="http", interval=0.02, timeout=0.2, unhealthy_threshold=2, healthy_threshold=2
    )
    try:
        async with aiohttp.ClientSession() as client:

            async def send(route: Any) -> bytes:
                async with client.get(f"http://{route.host}:{route.port}/work") as response:
                    response.raise_for_status()
                    return await response.read()

            async def traffic(n: int) -> None:
                for _ in range(n):
                    assert await lb.call(Request(), send) == b"done"

            id_a, id_b = await lb.integrate_redundant_deployment(deployment)
            await lb.initialize()
            await traffic(10)
            assert (a.hits("/work"), b.hits("/work")) == (5, 5)

            await a.stop()
            await wait_until(lambda: state(lb, id_a) is UNHEALTHY)
            assert state(lb, id_b) is HEALTHY
            await traffic(10)
            assert (a.hits("/work"), b.hits("/work")) == (5, 15)
            assert lb.backends[id_a].total == 5  # none even routed there, and no retries were needed

            await a.start()  # the same port
            assert a.port == deployment.replicas[0].port
            await wait_until(lambda: state(lb, id_a) is HEALTHY)
            await traffic(10)
            assert a.hits("/work") >= 5 + 4 and b.hits("/work") >= 15 + 4
            assert change_states(deployment) == [(id_a, UNHEALTHY), (id_a, HEALTHY)]
    finally:
        await lb.shutdown()
        for server in servers:
            await server.stop()


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
async def test_a_probe_this_host_cannot_make_says_nothing_of_the_backend(make_lb: Factory, code: int) -> None:
    """Out of descriptors or memory here is no news about the backend: not counted either way."""

    async def exhausted(backend: BackendConfig) -> bool:
        raise OSError(code, os.strerror(code))

    lb = await make_lb(probe=exhausted, unhealthy_threshold=1)
    backend_id = await lb.add_backend(BackendConfig(host=HOST, port=9))
    for _ in range(3):
        status = await lb.health_check(backend_id)
        assert status.status is HEALTHY and status.consecutive_failures == 0
    assert lb.counters["probes_not_run"] == 3


async def test_an_exhausted_host_hidden_in_an_aiohttp_error_is_recognised(make_lb: Factory) -> None:
    async def exhausted(backend: BackendConfig) -> bool:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            raise RuntimeError("the client library's own wrapper") from exc

    lb = await make_lb(probe=exhausted, unhealthy_threshold=1)
    backend_id = await lb.add_backend(BackendConfig(host=HOST, port=9))
    assert (await lb.health_check(backend_id)).status is HEALTHY
