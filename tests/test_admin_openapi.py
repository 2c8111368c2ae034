"""/openapi.json matches the server: schemathesis runs every operation against live servers (no 5xx,
conforming answers), and the request bodies' schemas are the pydantic models' own."""

from __future__ import annotations

import asyncio
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from admin_helpers import TOKEN, Live, SlowBackend, live_server
from load_balancing_module.config import BackendConfig, LoadBalancingAlgorithm
from load_balancing_module.enums import LoadBalancingAlgorithmType
from load_balancing_module.models import DrainResult
from load_balancing_module.operations import OPERATIONS
from load_balancing_module.server.admin.models import (
    MAX_DRAIN_TIMEOUT,
    AlgorithmChange,
    AlgorithmView,
    BackendView,
    DistributionView,
    DrainRequest,
    ErrorBody,
    HealthView,
    RemovedView,
)
from load_balancing_module.server.admin.openapi import openapi_document

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# Every check (not_a_server_error among them) but positive_data_acceptance: /execute's body is open-ended
# (each operation has its own parameters), so a body that fits the schema may still be refused with 422.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]
METHODS = ("get", "put", "post", "delete", "patch")
# schemathesis never tests the operation that serves the document it reads; test_openapi_document_is_served
# covers that one.
SCHEMA_ITSELF = "GET /openapi.json"


def operations() -> set[str]:
    return {
        f"{method.upper()} {path}"
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in METHODS
    }


async def schemathesis(live: Live, cwd: Path, *selection: str) -> tuple[int, str, dict[str, bool]]:
    """Run it; its exit code, its output, and each operation tested (and "Stateful tests") with whether
    it passed."""
    junit = cwd / "junit.xml"
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        f"{live.admin}/openapi.json",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        *CHECKS,
        "--max-examples",
        "8",
        "--seed",
        "5",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "--request-timeout",
        "5",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
        *selection,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    tested = {
        case.attrib["name"]: not any(child.tag in ("failure", "error") for child in case)
        for case in ET.parse(junit).getroot().iter("testcase")
    }
    return await proc.wait(), out.decode(errors="replace"), tested


async def test_schemathesis_tests_every_operation_and_finds_no_server_error_or_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SCHEMATHESIS.exists(), "schemathesis is a test dependency: pip install -e '.[dev]'"
    extra = ["drain_timeout: 0.5"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    # Two servers: requests routed through POST /execute hold their backend slot until completed, which
    # would make drains wait for the whole timeout; so drain is fuzzed on a server of its own.
    async with (
        live_server(tmp_path / "one", monkeypatch, [SlowBackend("a"), SlowBackend("b")], extra) as one,
        live_server(tmp_path / "two", monkeypatch, [SlowBackend("c")], extra) as two,
    ):
        code1, out1, tested1 = await schemathesis(
            one,
            tmp_path / "one",
            "--exclude-operation-id",
            "drainBackend",
            "--phases",
            "examples,coverage,fuzzing,stateful",
        )
        code2, out2, tested2 = await schemathesis(
            two,
            tmp_path / "two",
            "--phases",
            "fuzzing,stateful",
            "--include-operation-id",
            "drainBackend",
            "--include-operation-id",
            "addBackend",
            "--include-operation-id",
            "listBackends",
        )
    assert code1 == 0, out1
    assert code2 == 0, out2
    assert "Specification:    Open API 3.1.0" in out1, out1  # and it loaded and validated the document
    assert tested1.pop("Stateful tests") and tested2.pop("Stateful tests"), (out1, out2)
    assert set(tested1) | set(tested2) == operations() - {SCHEMA_ITSELF}, (out1, out2)
    assert all(tested1.values()) and all(tested2.values()), (tested1, tested2)


def test_request_bodies_are_the_models_own_schemas() -> None:
    """The limits the server checks are the ones the document (and so the fuzzing) uses."""
    document = openapi_document()
    schemas = document["components"]["schemas"]
    ref = "#/components/schemas/{model}"
    assert schemas["BackendConfig"] == BackendConfig.model_json_schema(ref_template=ref)
    assert schemas["DrainRequest"] == DrainRequest.model_json_schema(ref_template=ref)
    algorithm = LoadBalancingAlgorithm.model_json_schema(ref_template=ref)
    assert schemas["LoadBalancingAlgorithmType"] == algorithm.pop("$defs")["LoadBalancingAlgorithmType"]
    # PUT /algorithm takes LoadBalancingAlgorithm with algorithm_type required, so that {} is no silent switch.
    change = AlgorithmChange.model_json_schema(ref_template=ref)
    del change["$defs"]
    assert schemas["AlgorithmChange"] == change
    assert change["required"] == ["algorithm_type"]
    # A built-in's name, or a plug-in's (any string the server then checks against what it knows).
    assert change["properties"]["algorithm_type"]["anyOf"] == [
        {"$ref": ref.format(model="LoadBalancingAlgorithmType")},
        {"type": "string"},
    ]
    assert {**change["properties"], "algorithm_type": algorithm["properties"]["algorithm_type"]} == algorithm[
        "properties"
    ]
    bodies = {
        f"{method.upper()} {path}": operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS and "requestBody" in operation
    }
    assert bodies == {
        "POST /backends": "#/components/schemas/BackendConfig",
        "PUT /algorithm": "#/components/schemas/AlgorithmChange",
        "POST /backends/{backend_id}/drain": "#/components/schemas/DrainRequest",
        "POST /execute": "#/components/schemas/ExecuteRequest",
    }
    assert {ref.rpartition("/")[2] for ref in refs(document)} <= set(schemas)  # every reference resolves


def test_answers_are_the_views_own_schemas_and_names_come_from_the_code() -> None:
    """What the document says an answer holds is what the handlers build it from."""
    schemas = openapi_document()["components"]["schemas"]
    ref = "#/components/schemas/{model}"
    for view in (BackendView, DistributionView, AlgorithmView, RemovedView, HealthView, ErrorBody, DrainResult):
        schema = view.model_json_schema(mode="serialization", ref_template=ref)
        schema.pop("$defs", None)
        assert schemas[view.__name__] == schema, view
    assert schemas["LoadBalancingAlgorithmType"]["enum"] == [kind.value for kind in LoadBalancingAlgorithmType]
    assert schemas["ExecuteRequest"]["properties"]["operation"]["enum"] == sorted(OPERATIONS)
    assert schemas["DrainRequest"]["properties"]["timeout"]["anyOf"][0]["maximum"] == MAX_DRAIN_TIMEOUT


def refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [r for key, value in node.items() for r in ([value] if key == "$ref" else refs(value))]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_every_operation_lists_the_guards_answers() -> None:
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            responses = operation["responses"]
            assert "421" in responses, (method, path)
            assert ("403" in responses) == ((method, path) != ("get", "/")), (method, path)
            assert ("415" in responses) == (method in ("post", "put", "patch")), (method, path)
