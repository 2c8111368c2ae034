"""The admin listener's routes and its OpenAPI document come from one table: every aiohttp route is
documented and every documented operation is routed; every answer of every GET route validates against the
schema the document gives for its status; and the views name exactly the fields the library hands over."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from prometheus_client import CollectorRegistry

from admin_helpers import Live, SlowBackend, Traffic, live_server
from load_balancing_module import LoadBalancingModule
from load_balancing_module.models import LoadDistribution
from load_balancing_module.server.admin.app import AdminServer
from load_balancing_module.server.admin.models import (
    BackendView,
    DistributionView,
    ExecuteFailure,
    ExecuteSuccess,
    PoolDistributionView,
)
from load_balancing_module.server.admin.openapi import openapi_document
from load_balancing_module.server.config import AdminConfig

METHODS = ("get", "put", "post", "delete", "patch")


def documented() -> set[str]:
    paths = openapi_document()["paths"]
    return {f"{method.upper()} {path}" for path, item in paths.items() for method in item if method in METHODS}


def test_every_route_is_documented_and_every_operation_is_routed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNIXAN_ADMIN_TOKEN", raising=False)
    app = AdminServer(LoadBalancingModule(), CollectorRegistry(), AdminConfig(listen="127.0.0.1:0")).app()
    routes = [(route.method, route.resource.canonical) for route in app.router.routes() if route.resource]
    assert {f"{method} {path}" for method, path in routes if method != "HEAD"} == documented()
    # aiohttp serves HEAD for every GET route, and for nothing else
    gets = {path for method, path in routes if method == "GET"}
    assert {path for method, path in routes if method == "HEAD"} == gets
    operation_ids = [op["operationId"] for item in openapi_document()["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids)) == len(routes) - len(gets)


def validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """A validator of ``schema``, whose ``$ref``s point into the document's components."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": openapi_document()["components"]})


def test_the_validator_resolves_the_documents_references() -> None:
    """So that a GET answer that validates below does so against the real schema, not an empty one."""
    backend = validator({"$ref": "#/components/schemas/BackendView"})
    assert not backend.is_valid({"backend_id": "a:1"})
    assert not validator({"$ref": "#/components/schemas/ErrorBody"}).is_valid({"error": "x", "field": 3})
    assert validator({"$ref": "#/components/schemas/ErrorBody"}).is_valid({"error": "x", "field": None})


def arguments(parameters: list[dict[str, Any]], live: Live) -> list[dict[str, str]]:
    """Values for the path parameters: the documented enum, or a real backend id, and one that is neither."""
    choices = []
    for parameter in parameters:
        known = parameter["schema"].get("enum") or [live.backend_id(b) for b in live.backends]
        choices.append([(parameter["name"], value) for value in [*known, "nope"]])
    return [dict(combination) for combination in itertools.product(*choices)]


async def answers_of_every_get(live: Live) -> list[tuple[str, int, str, Any]]:
    """Each GET route called with each argument: the path called, the status, the media type and the body."""
    seen = []
    for path, item in openapi_document()["paths"].items():
        if "get" not in item:
            continue
        for args in arguments(item["get"].get("parameters", []), live):
            url = path.format(**args)
            async with live.session.get(live.admin + url) as response:
                text = await response.text()
                body = await response.json() if response.content_type == "application/json" else text
                seen.append((path, response.status, response.content_type, body))
    return seen


async def test_every_get_answer_validates_against_its_documented_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with live_server(tmp_path, monkeypatch, [SlowBackend("a", delay=0.001), SlowBackend("b")]) as live:
        async with Traffic(live.proxy, clients=2, limit=40):  # latencies and rates that are numbers, not null
            pass
        await live.api("PUT", "/algorithm", {"algorithm_type": "ip_hash", "config": {"points": 40}})
        answers = await answers_of_every_get(live)
    statuses = set()
    for path, status, media, body in answers:
        documented = openapi_document()["paths"][path]["get"]["responses"]
        assert str(status) in documented, (path, status, body)
        content = documented[str(status)]["content"]
        assert media in content, (path, status, media)
        if media == "application/json":
            errors = [error.message for error in validator(content[media]["schema"]).iter_errors(body)]
            assert not errors, (path, status, errors)
        statuses.add((path, status))
    assert ("/backends/{backend_id}", 404) in statuses and ("/dashboard/{name}", 404) in statuses
    distribution = next(body for path, status, _, body in answers if path == "/distribution")
    assert all(isinstance(b["p99_latency_ms"], float) for b in distribution["backends"].values()), distribution
    assert {path for path, status in statuses if status == 200} == {
        path for path, item in openapi_document()["paths"].items() if "get" in item
    }


async def test_the_views_name_every_field_the_library_hands_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A view drops a key it does not name: if the library adds one, this says the view must name it too."""
    async with live_server(tmp_path, monkeypatch, [SlowBackend("a")]) as live:
        lb = live.server.lb
        assert set(lb.describe_backend(live.backend_id(live.backends[0]))) == set(BackendView.model_fields)
        # and workers: one row per worker process, which only a supervisor fills
        assert set(LoadDistribution.model_fields) | {"workers", "pools"} == set(DistributionView.model_fields)
        assert set(LoadDistribution.model_fields) == set(PoolDistributionView.model_fields)
        success = await lb.execute({"operation": "get_load_distribution"})
        failure = await lb.execute({"operation": "remove_backend", "backend_id": "nope"})
        assert set(success) == set(ExecuteSuccess.model_fields)
        assert set(failure) | {"field"} == set(ExecuteFailure.model_fields)  # the handler adds field: null


async def test_a_rate_or_latency_that_overflowed_is_sent_as_null() -> None:
    """JSON has no infinity; the document says such a field is a number or null."""
    lb = LoadBalancingModule()
    backend_id = await lb.add_backend({"host": "127.0.0.1", "port": 9})
    described = {**lb.describe_backend(backend_id), "avg_latency_ms": float("inf"), "error_rate": float("nan")}
    view = BackendView.model_validate(described).model_dump(mode="json")
    assert view["avg_latency_ms"] is None and view["error_rate"] is None
    assert validator({"$ref": "#/components/schemas/BackendView"}).is_valid(view)
