"""The OpenAPI 3.1 document of the admin listener, served at ``GET /openapi.json``; generated.

FastAPI's way, without FastAPI: the paths come from the table of routes
(:mod:`.routes`), and every schema is pydantic's JSON Schema of a model of
:mod:`.models` or of the library (OpenAPI 3.1 schemas are JSON Schema 2020-12,
as pydantic writes them), request bodies as validated and answers as
serialised, their ``$defs`` gathered into ``components``. So the limits,
fields and enum names in the document are the ones the server checks and
sends, and the fuzzing (schemathesis, in the test suite) uses them.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, Literal

from pydantic import TypeAdapter

from ...build import __version__
from .body import MAX_JSON_DEPTH
from .guard import MUTATING, OPEN_TO_ANY_ORIGIN
from .models import ErrorBody
from .routes import JSON, ROUTES, Answer, Route

REF_TEMPLATE = "#/components/schemas/{model}"
Mode = Literal["validation", "serialization"]

# The answers that come from the listener rather than from a handler (:mod:`.app`, :mod:`.guard`, :mod:`.body`).
MISDIRECTED = Answer(
    ErrorBody, "the Host header is not a name of this listener (DNS rebinding): see admin.allowed_hosts"
)
FOREIGN_ORIGIN = Answer(ErrorBody, "the request comes from another site's page (its Origin is not the admin's own)")
NOT_JSON_TYPE = Answer(ErrorBody, "a change needs Content-Type: application/json, even with an empty body")
UNAUTHORIZED = Answer(ErrorBody, "missing or wrong bearer token")
NOT_JSON = Answer(
    ErrorBody,
    "the body is not JSON the API keeps: not UTF-8, not JSON, a key repeated, nested deeper than "
    f"{MAX_JSON_DEPTH} levels, a number not finite or an integer over 64 bits, a lone surrogate",
)
INVALID = Answer(ErrorBody, "the JSON is wrong: the message and `field` name the field")

DESCRIPTION = (
    "Runtime control of the load balancer. Send `Authorization: Bearer <token>` (the value of the variable named "
    "by admin.token_env) to every operation but the public ones. Every request needs a Host that names this "
    "listener (421), no foreign Origin (403), and POST and PUT need Content-Type: application/json (415): "
    "no web page can drive the API."
)


def answers(route: Route) -> dict[int, Answer]:
    """The route's own answers, with those every route of its kind shares."""
    shared = {421: MISDIRECTED}
    if (route.method, route.path) not in OPEN_TO_ANY_ORIGIN:
        shared[403] = FOREIGN_ORIGIN
    if route.method in MUTATING:
        shared[415] = NOT_JSON_TYPE
    if not route.public:
        shared[401] = UNAUTHORIZED
    if route.body is not None:
        shared.update({400: NOT_JSON, 422: INVALID})
    return dict(sorted({**shared, **route.answers}.items()))


def _types() -> list[tuple[Any, Mode]]:
    """Every type the document shows: request bodies as validated, answers as sent."""
    found: dict[tuple[Any, Mode], None] = {}  # a dict keeps the order, for a stable document
    for route in ROUTES:
        if route.body is not None:
            found[route.body, "validation"] = None
        for answer in answers(route).values():
            found[answer.body, "serialization"] = None
    return list(found)


def schemas() -> tuple[dict[tuple[Any, Mode], dict[str, Any]], dict[str, Any]]:
    """Each type's schema (a ``$ref`` for a model), and the components they refer to."""
    inputs = [((tp, mode), mode, TypeAdapter(tp)) for tp, mode in _types()]
    by_type, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF_TEMPLATE)
    return {key: schema for (key, _), schema in by_type.items()}, definitions.get("$defs", {})


def _parameters(route: Route) -> list[dict[str, Any]]:
    """One path parameter per field of ``route.params`` (they must be the path's placeholders), then
    one optional query parameter per field of ``route.query``."""
    placeholders = re.findall(r"{(\w+)}", route.path)
    model = route.params.model_json_schema() if route.params is not None else {"properties": {}}
    if sorted(placeholders) != sorted(model["properties"]):
        raise ValueError(f"{route.method} {route.path}: the params model must name exactly {placeholders}")
    parameters = [_parameter(name, field, "path") for name, field in model["properties"].items()]
    if route.query is not None:
        query = route.query.model_json_schema()["properties"]
        parameters += [_parameter(name, field, "query") for name, field in query.items()]
    return parameters


def _parameter(name: str, field: dict[str, Any], where: Literal["path", "query"]) -> dict[str, Any]:
    schema = {key: value for key, value in field.items() if key not in ("title", "description")}
    parameter = {"name": name, "in": where, "required": where == "path", "schema": schema}
    if "description" in field:
        parameter["description"] = field["description"]
    return parameter


def _response(answer: Answer, by_type: dict[tuple[Any, Mode], dict[str, Any]]) -> dict[str, Any]:
    schema = by_type[answer.body, "serialization"]
    content = {media: {"schema": schema} for media in answer.media}
    response: dict[str, Any] = {"description": answer.description, "content": content}
    if answer.headers:
        response["headers"] = {name: {"schema": {"type": "string"}} for name in answer.headers}
    return response


def operation(route: Route, by_type: dict[tuple[Any, Mode], dict[str, Any]]) -> dict[str, Any]:
    """The route's entry under ``paths``."""
    entry: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary}
    if route.description is not None:
        entry["description"] = route.description
    if route.public:
        entry["security"] = []  # no security requirement
    parameters = _parameters(route)
    if parameters:
        entry["parameters"] = parameters
    if route.body is not None:
        schema = by_type[route.body, "validation"]
        entry["requestBody"] = {"required": route.body_required, "content": {JSON: {"schema": schema}}}
    entry["responses"] = {str(status): _response(answer, by_type) for status, answer in answers(route).items()}
    return entry


@cache
def openapi_document() -> dict[str, Any]:
    by_type, components = schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = operation(route, by_type)
    return {
        "openapi": "3.1.0",
        "info": {"title": "OMNIXAN LB admin API", "version": __version__, "description": DESCRIPTION},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
