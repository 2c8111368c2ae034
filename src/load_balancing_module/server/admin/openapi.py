"""The OpenAPI 3.1 document of the admin listener, served at ``GET /openapi.json``.

Request bodies that a pydantic model validates (``BackendConfig``,
``LoadBalancingAlgorithm``, ``DrainRequest``) get the model's own JSON Schema
(``model_json_schema``; OpenAPI 3.1 schemas are JSON Schema 2020-12, as
pydantic writes them), so their limits live in one place and the fuzzing uses
the real ones. The rest (answers, ``/execute``'s open-ended body) is written by
hand next to the handlers (:mod:`.app`, :mod:`.api`); the test suite
runs schemathesis against a live server to keep the two in step.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from ... import __version__
from ...config import BackendConfig, LoadBalancingAlgorithm
from ...enums import CircuitState, HealthState
from .api import DrainRequest
from .body import MAX_JSON_DEPTH
from .guard import MUTATING, OPEN_TO_ANY_ORIGIN

JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def model_schemas(*models: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """Each model's validation schema, and the schemas it refers to, as components."""
    schemas: dict[str, dict[str, Any]] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


NUMBER = {"type": "number"}
MAYBE_NUMBER = {"type": ["number", "null"]}  # null only where a value is not finite
INTEGER = {"type": "integer"}
STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
OBJECT = {"type": "object", "additionalProperties": True}
ALGORITHMS = _ref("LoadBalancingAlgorithmType")

BACKEND_FIELDS: dict[str, dict[str, Any]] = {
    "backend_id": {**STRING, "description": "host:port, with ~2, ~3... for a second backend at one address"},
    "host": STRING,
    "port": INTEGER,
    "weight": NUMBER,
    "effective_weight": {**NUMBER, "description": "the weight now (lower during slow start)"},
    "priority": INTEGER,
    "quantum_capable": BOOLEAN,
    "max_connections": INTEGER,
    "metadata": OBJECT,
    "active_connections": {**INTEGER, "description": "requests in flight"},
    "total_requests": INTEGER,
    "successful_requests": INTEGER,
    "failed_requests": INTEGER,
    "requests_per_second": {**MAYBE_NUMBER, "description": "completions per second over the last 10 s"},
    "avg_latency_ms": MAYBE_NUMBER,
    "p50_latency_ms": MAYBE_NUMBER,
    "p95_latency_ms": MAYBE_NUMBER,
    "p99_latency_ms": MAYBE_NUMBER,
    "error_rate": {**MAYBE_NUMBER, "description": "0..1, over the recent window"},
    "health_status": {"type": "string", "enum": [s.value for s in HealthState]},
    "circuit_state": {"type": "string", "enum": [s.value for s in CircuitState]},
    "load_fraction": {**NUMBER, "description": "share of all routed requests"},
    "draining": {**BOOLEAN, "description": "being drained: takes no new requests"},
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error", "field"],
        "properties": {
            "error": {**STRING, "description": "what is wrong, starting with the field's name"},
            "field": {"type": ["string", "null"], "description": "the field (path) at fault, if any"},
        },
    },
    "Backend": {"type": "object", "required": list(BACKEND_FIELDS), "properties": BACKEND_FIELDS},
    "Removed": {
        "type": "object",
        "required": ["backend_id", "removed", "in_flight"],
        "properties": {"backend_id": STRING, "removed": BOOLEAN, "in_flight": INTEGER},
    },
    "DrainResult": {
        "type": "object",
        "required": [
            "backend_id",
            "in_flight",
            "completed",
            "in_flight_left",
            "started_at",
            "finished_at",
            "waited_seconds",
        ],
        "properties": {
            "backend_id": STRING,
            "in_flight": {**INTEGER, "description": "requests in flight when the drain began"},
            "completed": {**BOOLEAN, "description": "all of them finished before the timeout"},
            "in_flight_left": {**INTEGER, "description": "still running when the backend was removed"},
            "started_at": {**NUMBER, "description": "Unix time"},
            "finished_at": {**NUMBER, "description": "Unix time the backend was removed"},
            "waited_seconds": NUMBER,
        },
    },
    "Distribution": {
        "type": "object",
        "required": [
            "total_requests",
            "requests_per_second",
            "algorithm",
            "timestamp",
            "active_sessions",
            "queued_requests",
            "backends",
        ],
        "properties": {
            "total_requests": INTEGER,
            "requests_per_second": MAYBE_NUMBER,
            "algorithm": ALGORITHMS,
            "timestamp": {**NUMBER, "description": "Unix time"},
            "active_sessions": INTEGER,
            "queued_requests": INTEGER,
            "backends": {"type": "object", "additionalProperties": _ref("Backend"), "description": "by backend id"},
        },
    },
    "Algorithm": {
        "type": "object",
        "required": ["algorithm", "config", "available"],
        "properties": {"algorithm": ALGORITHMS, "config": OBJECT, "available": {"type": "array", "items": ALGORITHMS}},
    },
    "ExecuteRequest": {
        "type": "object",
        "required": ["operation"],
        "additionalProperties": True,
        "properties": {
            "operation": {
                "type": "string",
                "enum": [
                    "add_backend",
                    "remove_backend",
                    "health_check",
                    "route_request",
                    "complete_request",
                    "get_load_distribution",
                    "configure_algorithm",
                ],
            },
        },
        "description": "LoadBalancingModule.execute's params: the operation and its parameters",
    },
    "ExecuteResult": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["success", "error"]},
            "result": {"description": "the operation's result (success)"},
            "error": STRING,
            "error_type": STRING,
            "field": {"type": ["string", "null"]},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "healthy_backends", "backends"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "healthy_backends": INTEGER,
            "backends": INTEGER,
        },
    },
}

SCHEMAS.update(model_schemas(BackendConfig, LoadBalancingAlgorithm, DrainRequest))
# The model defaults algorithm_type; PUT /algorithm asks for it, so that {} is no silent switch.
SCHEMAS["LoadBalancingAlgorithm"]["required"] = ["algorithm_type"]

BACKEND_ID = {
    "name": "backend_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the backend's id, percent-encoded (host:port)",
}
UNAUTHORIZED = _error("missing or wrong bearer token")
NOT_FOUND = _error("no backend with this id")
NOT_JSON = _error(
    "the body is not JSON the API keeps: not UTF-8, not JSON, a key repeated, nested deeper than "
    f"{MAX_JSON_DEPTH} levels, a number not finite or an integer over 64 bits, a lone surrogate"
)
INVALID = _error("the JSON is wrong: the message and `field` name the field")
PUBLIC: list[dict[str, list[str]]] = []  # no security requirement


def _body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


PATHS: dict[str, dict[str, Any]] = {
    "/backends": {
        "get": {
            "operationId": "listBackends",
            "summary": "Every backend, with its load, health and latency",
            "responses": {
                "200": _json({"type": "array", "items": _ref("Backend")}, "the backends"),
                "401": UNAUTHORIZED,
            },
        },
        "post": {
            "operationId": "addBackend",
            "summary": "Add a backend; it takes requests at once",
            "requestBody": _body(_ref("BackendConfig")),
            "responses": {
                "201": {
                    **_json(_ref("Backend"), "the new backend; its id is backend_id"),
                    "headers": {"Location": {"schema": {"type": "string"}}},
                },
                "400": NOT_JSON,
                "401": UNAUTHORIZED,
                "422": INVALID,
            },
        },
    },
    "/backends/{backend_id}": {
        "parameters": [BACKEND_ID],
        "get": {
            "operationId": "getBackend",
            "summary": "One backend",
            "responses": {"200": _json(_ref("Backend"), "the backend"), "401": UNAUTHORIZED, "404": NOT_FOUND},
        },
        "delete": {
            "operationId": "removeBackend",
            "summary": "Remove a backend at once (requests in flight still complete)",
            "responses": {"200": _json(_ref("Removed"), "removed"), "401": UNAUTHORIZED, "404": NOT_FOUND},
        },
    },
    "/backends/{backend_id}/drain": {
        "parameters": [BACKEND_ID],
        "post": {
            "operationId": "drainBackend",
            "summary": "Stop new requests, wait for those in flight, then remove the backend",
            "description": "Answers when the drain is over (all requests in flight finished, or the timeout).",
            "requestBody": _body(_ref("DrainRequest"), required=False),
            "responses": {
                "200": _json(_ref("DrainResult"), "the drain is over and the backend removed"),
                "400": NOT_JSON,
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
                "422": INVALID,
            },
        },
    },
    "/distribution": {
        "get": {
            "operationId": "getDistribution",
            "summary": "The load distribution (what the dashboard shows)",
            "responses": {"200": _json(_ref("Distribution"), "a snapshot"), "401": UNAUTHORIZED},
        },
    },
    "/algorithm": {
        "get": {
            "operationId": "getAlgorithm",
            "summary": "The algorithm in use and the ones available",
            "responses": {"200": _json(_ref("Algorithm"), "the algorithm"), "401": UNAUTHORIZED},
        },
        "put": {
            "operationId": "setAlgorithm",
            "summary": "Switch algorithm at once",
            "requestBody": _body(_ref("LoadBalancingAlgorithm")),
            "responses": {
                "200": _json(_ref("Algorithm"), "switched"),
                "400": NOT_JSON,
                "401": UNAUTHORIZED,
                "422": INVALID,
            },
        },
    },
    "/execute": {
        "post": {
            "operationId": "execute",
            "summary": "LoadBalancingModule.execute: the library's dict interface",
            "requestBody": _body(_ref("ExecuteRequest")),
            "responses": {
                "200": _json(_ref("ExecuteResult"), "status success, with the result"),
                "400": NOT_JSON,
                "401": UNAUTHORIZED,
                "404": _json(_ref("ExecuteResult"), "status error: no such backend"),
                "422": _json({"anyOf": [_ref("ExecuteResult"), _ref("Error")]}, "status error: bad params"),
                "429": _json(_ref("ExecuteResult"), "status error: rate limited (route_request)"),
                "503": _json(_ref("ExecuteResult"), "status error: no backend could take the request"),
            },
        },
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "200 when at least one backend is HEALTHY, else 503",
            "security": PUBLIC,
            "responses": {"200": _json(_ref("Health"), "healthy"), "503": _json(_ref("Health"), "no healthy backend")},
        },
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus text format; every name starts with omnixan_lb_",
            "security": PUBLIC,
            "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": STRING}}}},
        },
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": PUBLIC,
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document")},
        },
    },
    "/": {
        "get": {
            "operationId": "dashboard",
            "summary": "The live dashboard (asks for the token, kept in session storage)",
            "security": PUBLIC,
            "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": STRING}}}},
        },
    },
    "/dashboard/{name}": {
        "get": {
            "operationId": "dashboardAsset",
            "summary": "The dashboard's script and style sheet",
            "security": PUBLIC,
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": ["dashboard.css", "dashboard.js"]},
                }
            ],
            "responses": {
                "200": {
                    "description": "the file",
                    "content": {"text/css": {"schema": STRING}, "text/javascript": {"schema": STRING}},
                },
                "404": _error("no such file"),
            },
        },
    },
}


MISDIRECTED = _error("the Host header is not a name of this listener (DNS rebinding): see admin.allowed_hosts")
FOREIGN_ORIGIN = _error("the request comes from another site's page (its Origin is not the admin's own)")
NOT_JSON_TYPE = _error("a change needs Content-Type: application/json, even with an empty body")


def _guarded(path: str, method: str, operation: dict[str, Any]) -> dict[str, Any]:
    """The operation with the answers of :mod:`.guard`, which come before any handler."""
    responses = {"421": MISDIRECTED, **operation["responses"]}
    if (method.upper(), path) not in OPEN_TO_ANY_ORIGIN:
        responses["403"] = FOREIGN_ORIGIN
    if method.upper() in MUTATING:
        responses["415"] = NOT_JSON_TYPE
    return {**operation, "responses": dict(sorted(responses.items()))}


@cache
def openapi_document() -> dict[str, Any]:
    paths = {
        path: {key: _guarded(path, key, value) if key != "parameters" else value for key, value in item.items()}
        for path, item in PATHS.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OMNIXAN LB admin API",
            "version": __version__,
            "description": "Runtime control of the load balancer. Send `Authorization: Bearer <token>` "
            "(the value of the variable named by admin.token_env) to every operation but the public ones. "
            "Every request needs a Host that names this listener (421), no foreign Origin (403), and "
            "POST and PUT need Content-Type: application/json (415): no web page can drive the API.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
