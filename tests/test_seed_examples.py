"""Every code example of the seed README, run unchanged.

Each snippet below is copied verbatim from the seed README. Snippets that use
top-level ``await`` run inside a coroutine; the names they expect from their
surrounding prose (``lb_module``, ``request``, ``logger``...) are provided.
The two integration examples import the sibling OMNIXAN modules, which are
stood in for by small modules written to a temporary directory.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import load_balancing_module
from load_balancing_module import (
    BackendConfig,
    BackendUnavailableError,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    WorkloadType,
)

QUICK_START = """
import asyncio
from load_balancing_module import (
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    LoadBalancingAlgorithm,
    LoadBalancingAlgorithmType,
    BackendConfig,
    Request,
    WorkloadType,
)

async def main():
    # Create configuration
    config = LoadBalancingModuleConfig(
        algorithm=LoadBalancingAlgorithm(
            algorithm_type=LoadBalancingAlgorithmType.QUANTUM_AWARE
        ),
        session_affinity=True,
        metrics_enabled=True
    )

    # Initialize module
    lb_module = LoadBalancingModule(config)
    await lb_module.initialize()

    try:
        # Add backends
        backend1 = BackendConfig(
            host="backend1.omnixan.local",
            port=8080,
            weight=1.0,
            quantum_capable=True,
            priority=10
        )
        backend1_id = await lb_module.add_backend(backend1)

        # Route a request
        request = Request(
            client_ip="192.168.1.100",
            workload_type=WorkloadType.QUANTUM_SIMULATION,
            session_id="user_session_123"
        )

        result = await lb_module.route_request(request)
        print(f"Routed to: {result.backend_id}")
        print(f"Latency: {result.latency_ms:.2f}ms")

        # Get load distribution
        distribution = await lb_module.get_load_distribution()
        print(f"Total requests: {distribution.total_requests}")

    finally:
        await lb_module.shutdown()

if __name__ == "__main__":
    asyncio.run(main())
"""

CONFIGURATION = """
from load_balancing_module import (
    LoadBalancingModuleConfig,
    LoadBalancingAlgorithm,
    LoadBalancingAlgorithmType,
    HealthCheckConfig,
    CircuitBreakerConfig,
    RateLimitConfig,
)

config = LoadBalancingModuleConfig(
    algorithm=LoadBalancingAlgorithm(
        algorithm_type=LoadBalancingAlgorithmType.QUANTUM_AWARE,
        config={}  # Algorithm-specific configuration
    ),
    health_check=HealthCheckConfig(
        interval=5.0,  # Check every 5 seconds
        timeout=2.0,   # 2 second timeout
        unhealthy_threshold=3,  # 3 failures = unhealthy
        healthy_threshold=2     # 2 successes = healthy
    ),
    circuit_breaker=CircuitBreakerConfig(
        failure_threshold=5,      # Open after 5 failures
        success_threshold=2,      # Close after 2 successes
        timeout=60.0,            # Try again after 60 seconds
        half_open_max_calls=3    # Max calls in half-open state
    ),
    rate_limit=RateLimitConfig(
        enabled=True,
        requests_per_second=1000,
        burst_size=1500,
        ddos_threshold=5000
    ),
    request_timeout=30.0,
    max_retries=3,
    session_affinity=True,
    metrics_enabled=True
)
"""

BACKEND = """
backend = BackendConfig(
    host="backend.omnixan.local",
    port=8080,
    weight=1.5,              # Routing weight (higher = more traffic)
    max_connections=1000,     # Maximum concurrent connections
    quantum_capable=True,     # Supports quantum workloads
    priority=10,             # Backend priority (higher = preferred)
    metadata={               # Custom metadata
        "datacenter": "us-east-1",
        "rack": "rack-42"
    }
)
"""

ALGORITHMS = {
    name: f"""
algorithm = LoadBalancingAlgorithm(
    algorithm_type=LoadBalancingAlgorithmType.{name}
)
"""
    for name in ("ROUND_ROBIN", "LEAST_CONNECTIONS", "WEIGHTED", "QUANTUM_AWARE", "IP_HASH", "LEAST_LATENCY")
}

METRICS = """
distribution = await lb_module.get_load_distribution()

for backend_id, info in distribution.backends.items():
    print(f"Backend: {info['host']}:{info['port']}")
    print(f"  Requests: {info['total_requests']}")
    print(f"  Success Rate: {info['successful_requests']}/{info['total_requests']}")
    print(f"  Avg Latency: {info['avg_latency_ms']:.2f}ms")
    print(f"  Error Rate: {info['error_rate']:.2%}")
    print(f"  Health: {info['health_status']}")
"""

ERROR_HANDLING = """
try:
    result = await lb_module.route_request(request)
except BackendUnavailableError:
    # No backends available, trigger scaling or alert
    await trigger_auto_scaling()
except RoutingError as e:
    # Routing failed, log and retry
    logger.error(f"Routing failed: {e}")
    await retry_with_backoff(request)
"""

AUTO_SCALING = """
from auto_scaling_module import AutoScalingModule

auto_scaler = AutoScalingModule()
await lb_module.integrate_auto_scaling(auto_scaler)
"""

REDUNDANT = """
from redundant_deployment_module import RedundantDeploymentModule

deployment = RedundantDeploymentModule()
await lb_module.integrate_redundant_deployment(deployment)
"""

LOGGING = """
import logging

logging.basicConfig(
    level=logging.INFO,
    format='%(asctime)s - %(name)s - %(levelname)s - %(message)s',
    handlers=[
        logging.FileHandler('load_balancer.log'),
        logging.StreamHandler()
    ]
)
"""

EXPORT_METRICS = '''
async def export_metrics():
    """Export metrics to monitoring system"""
    while True:
        distribution = await lb_module.get_load_distribution()

        # Export to Prometheus, Grafana, etc.
        metrics_exporter.export(distribution)

        await asyncio.sleep(60)
'''

HEALTH_ENDPOINT = '''
from aiohttp import web

async def health_handler(request):
    """HTTP health check endpoint"""
    distribution = await lb_module.get_load_distribution()

    healthy_backends = sum(
        1 for b in distribution.backends.values()
        if b['health_status'] == 'healthy'
    )

    if healthy_backends > 0:
        return web.Response(text='OK', status=200)
    else:
        return web.Response(text='No healthy backends', status=503)
'''

# The sibling OMNIXAN modules the integration examples import.
SIBLINGS = {
    "auto_scaling_module.py": """
class AutoScalingModule:
    def __init__(self):
        self.reports = []
    async def on_load_report(self, distribution):
        self.reports.append(distribution)
""",
    "redundant_deployment_module.py": """
from load_balancing_module import BackendConfig
class RedundantDeploymentModule:
    def __init__(self):
        self.changes = []
    def list_replicas(self):
        return [BackendConfig(host="primary.test", port=8080, priority=10),
                BackendConfig(host="standby.test", port=8080, priority=0)]
    async def on_backend_health_change(self, backend_id, status):
        self.changes.append((backend_id, status))
""",
}


async def run_async_snippet(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run a snippet that uses top-level ``await`` inside a coroutine; return its locals."""
    body = textwrap.indent(source, "    ") + "\n    return locals()\n"
    exec(f"async def __snippet__():\n{body}", namespace)
    return await namespace["__snippet__"]()  # type: ignore[no-any-return]


def quiet_config() -> LoadBalancingModuleConfig:
    return LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False))


def test_quick_start_runs_as_a_script(capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(QUICK_START, namespace)
    out = capsys.readouterr().out
    assert "Routed to: backend1.omnixan.local:8080" in out
    assert "Total requests: 1" in out


def test_configuration_example_builds_the_documented_config() -> None:
    namespace: dict[str, Any] = {}
    exec(CONFIGURATION, namespace)
    config = namespace["config"]
    assert config.health_check.unhealthy_threshold == 3
    assert config.circuit_breaker.half_open_max_calls == 3
    assert config.rate_limit.burst_size == 1500
    assert config.max_retries == 3
    LoadBalancingModule(config)  # and the module accepts it


def test_backend_configuration_example() -> None:
    namespace: dict[str, Any] = {"BackendConfig": BackendConfig}
    exec(BACKEND, namespace)
    backend = namespace["backend"]
    assert backend.weight == 1.5 and backend.metadata["rack"] == "rack-42"


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
async def test_algorithm_examples_are_accepted_at_run_time(name: str) -> None:
    namespace = dict(vars(load_balancing_module))
    exec(ALGORITHMS[name], namespace)
    lb = LoadBalancingModule(quiet_config())
    await lb.add_backend(BackendConfig(host="a.test", port=80))
    await lb.configure_algorithm(namespace["algorithm"])
    result = await lb.route_request(Request(client_ip="10.0.0.1"))
    assert result.algorithm.name == name


async def test_metrics_example_prints_every_backend(capsys: pytest.CaptureFixture[str]) -> None:
    lb_module = LoadBalancingModule(quiet_config())
    for port in (8081, 8082):
        await lb_module.add_backend(BackendConfig(host="metrics.test", port=port))
    for _ in range(4):
        result = await lb_module.route_request(Request(client_ip="10.0.0.2"))
        await lb_module.complete_request(result, success=True, latency_ms=12.0)
    await run_async_snippet(METRICS, {"lb_module": lb_module})
    out = capsys.readouterr().out
    assert "Backend: metrics.test:8081" in out and "Backend: metrics.test:8082" in out
    assert "Success Rate: 2/2" in out
    assert "Avg Latency: 12.00ms" in out
    assert "Error Rate: 0.00%" in out
    assert "Health: healthy" in out


async def test_error_handling_example_triggers_scaling_when_nothing_is_available() -> None:
    lb_module = LoadBalancingModule(quiet_config())
    calls: list[str] = []

    async def trigger_auto_scaling() -> None:
        calls.append("scale")

    async def retry_with_backoff(request: Request) -> None:
        calls.append("retry")

    namespace = {
        **vars(load_balancing_module),
        "lb_module": lb_module,
        "request": Request(client_ip="192.168.1.100", workload_type=WorkloadType.QUANTUM_ML),
        "trigger_auto_scaling": trigger_auto_scaling,
        "retry_with_backoff": retry_with_backoff,
        "logger": logging.getLogger("example"),
    }
    await run_async_snippet(ERROR_HANDLING, namespace)
    assert calls == ["scale"]
    # With a backend the same block routes normally.
    await lb_module.add_backend(BackendConfig(host="ok.test", port=80))
    local = await run_async_snippet(ERROR_HANDLING, namespace)
    assert local["result"].host == "ok.test" and calls == ["scale"]
    # A routing failure that is not "unavailable" takes the second branch.
    assert not issubclass(load_balancing_module.RateLimitExceededError, BackendUnavailableError)


@pytest.fixture
def siblings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, source in SIBLINGS.items():
        (tmp_path / name).write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in SIBLINGS:
        sys.modules.pop(name.removesuffix(".py"), None)


async def test_auto_scaling_integration_example(siblings: Path) -> None:
    lb_module = LoadBalancingModule(quiet_config())
    local = await run_async_snippet(AUTO_SCALING, {"lb_module": lb_module})
    assert lb_module._hooks.scalers == [local["auto_scaler"]]


async def test_redundant_deployment_integration_example(siblings: Path) -> None:
    lb_module = LoadBalancingModule(quiet_config())
    await run_async_snippet(REDUNDANT, {"lb_module": lb_module})
    hosts = sorted(b.host for b in lb_module.backends.values())
    assert hosts == ["primary.test", "standby.test"]
    result = await lb_module.route_request(Request(client_ip="10.0.0.3"))
    assert result.host == "primary.test"  # the standby is the lower priority tier


def test_logging_configuration_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    root.handlers = []
    try:
        exec(LOGGING, {})
        asyncio.run(_add_one_backend())
        for handler in root.handlers:
            handler.flush()
        text = (tmp_path / "load_balancer.log").read_text()
        assert "load_balancing_module - INFO - backend_added" in text
    finally:
        for handler in root.handlers:
            handler.close()
        root.setLevel(saved[0])
        root.handlers = saved[1]


async def _add_one_backend() -> None:
    lb = LoadBalancingModule(quiet_config())
    await lb.add_backend(BackendConfig(host="logged.test", port=80))


async def test_export_metrics_example_exports_a_distribution() -> None:
    lb_module = LoadBalancingModule(quiet_config())
    await lb_module.add_backend(BackendConfig(host="exported.test", port=80))
    exported: list[Any] = []

    class Exporter:
        def export(self, distribution: Any) -> None:
            exported.append(distribution)

    namespace: dict[str, Any] = {"asyncio": asyncio, "lb_module": lb_module, "metrics_exporter": Exporter()}
    exec(EXPORT_METRICS, namespace)
    task = asyncio.create_task(namespace["export_metrics"]())
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(exported) == 1
    assert "exported.test:80" in exported[0].backends


async def test_health_endpoint_example() -> None:
    lb_module = LoadBalancingModule(quiet_config())
    namespace: dict[str, Any] = {"lb_module": lb_module}
    exec(HEALTH_ENDPOINT, namespace)
    handler = namespace["health_handler"]
    assert (await handler(None)).status == 503
    await lb_module.add_backend(BackendConfig(host="healthy.test", port=80))
    response = await handler(None)
    assert response.status == 200 and response.text == "OK"
