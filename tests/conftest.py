"""Shared fixtures: a fake clock, a module factory, and probes the test controls.

Everything is deterministic: time moves only when a test moves it, randomness
comes from a seeded ``random.Random``, and health probes never touch the
network (``Probes`` answers them).
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import pytest

from load_balancing_module import (
    BackendConfig,
    FakeClock,
    HealthCheckConfig,
    HealthState,
    LoadBalancingAlgorithm,
    LoadBalancingAlgorithmType,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
)

SLOW_PROBE_MS = 500.0  # a "slow" probe takes this long; DEGRADED_MS marks it DEGRADED
DEGRADED_MS = 100.0

MakeLB = Callable[..., Awaitable[LoadBalancingModule]]

pytest_plugins = ["redis_helpers"]  # a real Redis for the shared-state tests, found or started


class Probes:
    """A fake active probe. Each backend answers ``HEALTHY`` (fast),
    ``DEGRADED`` (passes, but slower than ``degraded_latency_ms``) or
    ``UNHEALTHY`` (fails). Thresholds are 1, so one probe sets the state."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.answer: dict[str, HealthState] = {}

    async def __call__(self, backend: BackendConfig) -> bool:
        answer = self.answer.get(backend.address, HealthState.HEALTHY)
        if answer is HealthState.DEGRADED:
            self.clock.set(self.clock.monotonic() + SLOW_PROBE_MS / 1000.0)
        return answer is not HealthState.UNHEALTHY

    async def set(self, lb: LoadBalancingModule, backend_id: str, state: HealthState) -> None:
        """Make ``backend_id`` answer as ``state`` and probe it once, through the public API."""
        self.answer[lb.backends[backend_id].config.address] = state
        status = await lb.health_check(backend_id)
        assert status.status is state


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def probes(fake_clock: FakeClock) -> Probes:
    return Probes(fake_clock)


def config(
    algorithm: LoadBalancingAlgorithmType | str = LoadBalancingAlgorithmType.ROUND_ROBIN,
    algorithm_config: Mapping[str, Any] | None = None,
    **fields: Any,
) -> LoadBalancingModuleConfig:
    """A module config with background health checks off and thresholds of 1."""
    fields.setdefault(
        "health_check",
        HealthCheckConfig(enabled=False, unhealthy_threshold=1, healthy_threshold=1, degraded_latency_ms=DEGRADED_MS),
    )
    algo = LoadBalancingAlgorithm(algorithm_type=algorithm, config=dict(algorithm_config or {}))
    return LoadBalancingModuleConfig(algorithm=algo, **fields)


@pytest.fixture
def make_lb(fake_clock: FakeClock, probes: Probes) -> MakeLB:
    """``await make_lb(algorithm, backends, algorithm_config=..., seed=..., **config fields)``.

    ``backends`` are BackendConfigs (or dicts); the module is not initialised,
    so no background task runs."""

    async def make(
        algorithm: LoadBalancingAlgorithmType | str = LoadBalancingAlgorithmType.ROUND_ROBIN,
        backends: Iterable[BackendConfig | Mapping[str, Any]] = (),
        *,
        algorithm_config: Mapping[str, Any] | None = None,
        seed: int = 0,
        **fields: Any,
    ) -> LoadBalancingModule:
        lb = LoadBalancingModule(
            config(algorithm, algorithm_config, **fields), clock=fake_clock, rng=random.Random(seed), probe=probes
        )
        for b in backends:
            await lb.add_backend(b)
        return lb

    return make


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (``omnixan-lb serve``...): each still running at the end is
    asked to stop (SIGTERM, which drains), then killed if it has not within 15 s."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
