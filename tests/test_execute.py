"""The ``execute`` dict interface: every operation, and errors instead of exceptions."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from load_balancing_module import FakeClock, HealthCheckConfig, LoadBalancingModule, LoadBalancingModuleConfig


def make_lb() -> LoadBalancingModule:
    return LoadBalancingModule(
        LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False)),
        clock=FakeClock(),
        rng=random.Random(9),
    )


async def ok(lb: LoadBalancingModule, params: dict[str, Any]) -> Any:
    answer = await lb.execute(params)
    assert answer["status"] == "success", answer
    json.dumps(answer)  # JSON serialisable
    return answer["result"]


async def test_every_operation_round_trip() -> None:
    lb = make_lb()
    added = await ok(lb, {"operation": "add_backend", "backend": {"host": "x.test", "port": 8080, "weight": 2}})
    backend_id = added["backend_id"]
    await ok(lb, {"operation": "add_backend", "backend": {"host": "y.test", "port": 8080}})
    routed = await ok(lb, {"operation": "route_request", "request": {"client_ip": "10.0.0.1", "request_id": "q1"}})
    assert routed["request_id"] == "q1" and routed["algorithm"] == "round_robin"
    done = await ok(lb, {"operation": "complete_request", "request_id": "q1", "success": False, "latency_ms": 3})
    assert done == {"request_id": "q1", "completed": True}
    dist = await ok(lb, {"operation": "get_load_distribution"})
    assert dist["total_requests"] == 1 and dist["backends"][routed["backend_id"]]["failed_requests"] == 1
    algo = await ok(
        lb,
        {
            "operation": "configure_algorithm",
            "algorithm": {"algorithm_type": "least_connections", "config": {"choice_count": 2}},
        },
    )
    assert algo == {"algorithm": "least_connections", "config": {"choice_count": 2}}
    await ok(lb, {"operation": "configure_algorithm", "algorithm": "weighted"})
    removed = await ok(lb, {"operation": "remove_backend", "backend_id": backend_id})
    assert removed["removed"] is True
    assert list(lb.backends) == ["y.test:8080"]


@pytest.mark.parametrize(
    ("params", "error_type", "text"),
    [
        ({}, "ConfigurationError", "unknown operation None"),
        ({"operation": "explode"}, "ConfigurationError", "explode"),
        ({"operation": "add_backend"}, "ConfigurationError", "'backend'"),
        ({"operation": "add_backend", "backend": {"host": "h.test", "port": 0}}, "ValidationError", "port"),
        ({"operation": "add_backend", "backend": "h.test:80"}, "ConfigurationError", "wrong type"),
        ({"operation": "remove_backend", "backend_id": "ghost"}, "BackendNotFoundError", "ghost"),
        ({"operation": "health_check", "backend_id": "ghost"}, "BackendNotFoundError", "ghost"),
        ({"operation": "route_request", "request": {"client_ip": "nope"}}, "ValidationError", "client_ip"),
        ({"operation": "route_request", "request": {}}, "BackendUnavailableError", "no backend"),
        ({"operation": "complete_request", "request_id": "never"}, "ConfigurationError", "never"),
        ({"operation": "configure_algorithm", "algorithm": "fastest"}, "AlgorithmError", "fastest"),
        (
            {"operation": "configure_algorithm", "algorithm": {"algorithm_type": "ip_hash", "config": {"x": 1}}},
            "AlgorithmError",
            "unknown config key",
        ),
    ],
)
async def test_bad_input_is_an_error_answer_not_an_exception(
    params: dict[str, Any], error_type: str, text: str
) -> None:
    lb = make_lb()
    answer = await lb.execute(params)
    assert answer["status"] == "error"
    assert answer["error_type"] == error_type
    assert text in answer["error"]
    json.dumps(answer)


async def test_params_that_are_not_a_dict() -> None:
    answer = await make_lb().execute(["operation", "add_backend"])  # type: ignore[arg-type]
    assert answer["status"] == "error" and "dict" in answer["error"]


async def test_a_bad_completion_is_refused_and_nothing_is_lost() -> None:
    lb = make_lb()
    await ok(lb, {"operation": "add_backend", "backend": {"host": "x.test", "port": 1}})
    await ok(lb, {"operation": "route_request", "request": {"request_id": "r"}})
    bad = await lb.execute({"operation": "complete_request", "request_id": "r", "success": "yes"})
    assert bad["status"] == "error"
    assert await ok(lb, {"operation": "complete_request", "request_id": "r"}) == {"request_id": "r", "completed": True}
