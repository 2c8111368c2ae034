"""One module probes, others follow (the supervisor and its workers): ``watch_probes`` and
``follow_health``; and ``add_backend(..., backend_id=...)``, which keeps their ids alike."""

from __future__ import annotations

import pytest

from load_balancing_module import LoadBalancingModule, LoadBalancingModuleConfig
from load_balancing_module.config import BackendConfig, Request
from load_balancing_module.enums import HealthState
from load_balancing_module.exceptions import BackendNotFoundError
from load_balancing_module.health import HealthStatus, ProbeFailed


async def test_a_follower_takes_every_outcome_the_prober_makes() -> None:
    down: set[str] = set()

    def probe(backend: BackendConfig) -> None:
        if backend.address in down:
            raise ProbeFailed("refused")

    config = LoadBalancingModuleConfig(health_check={"unhealthy_threshold": 2, "healthy_threshold": 1})
    prober = LoadBalancingModule(config, probe=probe)
    follower = LoadBalancingModule(
        config.model_copy(update={"health_check": config.health_check.model_copy(update={"enabled": False})})
    )
    seen: list[HealthStatus] = []
    prober.watch_probes(seen.append)
    for lb in (prober, follower):
        await lb.add_backend({"host": "a.test", "port": 80})
        await lb.add_backend({"host": "b.test", "port": 80})
    down.add("a.test:80")
    for _ in range(2):
        await prober.health_check("a.test:80")
    assert [s.status for s in seen] == [HealthState.HEALTHY, HealthState.UNHEALTHY]
    for status in seen:
        await follower.follow_health(status)
    assert follower.backends["a.test:80"].health.state is HealthState.UNHEALTHY
    assert follower.backends["a.test:80"].health.last == seen[-1]
    routed = {follower.route_now(Request()).backend_id for _ in range(6)}  # type: ignore[union-attr]
    assert routed == {"b.test:80"}  # the follower routes by the prober's outcome
    down.clear()
    await prober.health_check("a.test:80")
    await follower.follow_health(seen[-1])
    assert follower.backends["a.test:80"].health.state is HealthState.HEALTHY


async def test_following_an_unknown_backend_raises() -> None:
    lb = LoadBalancingModule()
    with pytest.raises(BackendNotFoundError):
        await lb.follow_health(HealthStatus(backend_id="nope:1", status=HealthState.UNHEALTHY))


async def test_a_backend_may_be_added_under_an_id_of_ones_own() -> None:
    lb = LoadBalancingModule()
    assert await lb.add_backend({"host": "a.test", "port": 80}, backend_id="a.test:80~7") == "a.test:80~7"
    assert await lb.add_backend({"host": "a.test", "port": 80}) == "a.test:80"
    with pytest.raises(ValueError, match="taken"):
        await lb.add_backend({"host": "a.test", "port": 80}, backend_id="a.test:80~7")
    with pytest.raises(ValueError, match="empty"):
        await lb.add_backend({"host": "a.test", "port": 80}, backend_id="")
    assert set(lb.backends) == {"a.test:80~7", "a.test:80"}
