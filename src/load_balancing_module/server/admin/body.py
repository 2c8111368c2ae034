"""Request bodies as JSON the admin API can keep, and how a refusal names the field.

A body is kept only if it can be served back: :func:`parse_json` takes UTF-8
JSON without duplicate keys, nested at most ``MAX_JSON_DEPTH`` levels, whose
numbers are finite and integers fit in 64 bits, and whose strings are Unicode
text (no lone surrogate from a ``\\ud800`` escape). A value the API accepted
can then never make a later answer fail.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from ..config import describe_errors

MAX_JSON_DEPTH = 32  # far below what json and pydantic recurse through, far above any real body
MAX_JSON_INTEGER = 2**63 - 1  # beyond 64 bits a JSON integer is no longer portable
THREAD_PARSE_BYTES = 64 * 1024  # larger bodies are parsed off the event loop


class BadInput(Exception):
    """A request the API refuses: status, message (naming the field) and the field."""

    def __init__(self, status: int, message: str, field: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object with each key once: a repeated key would mean one thing here and another elsewhere."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def parse_json(raw: bytes) -> Any:
    """A request body as JSON we can keep and serve back; :class:`BadInput` (400) naming the problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(400, f"body: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})", "body") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise BadInput(400, f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels", "body") from None
    except ValueError as exc:
        raise BadInput(400, f"body: not valid JSON ({exc})", "body") from None
    problem = json_problem(value)
    if problem is not None:
        raise BadInput(400, problem, "body")
    return value


JsonPath = tuple[Any, ...]  # linked: (parent's path, key), () for the body; rendered only for a message


def _render(path: JsonPath) -> str:
    """``body.metadata.tags[2]``; long keys and paths are cut short."""
    keys: list[str] = []
    while path:
        path, key = path
        keys.append(f"[{key}]" if isinstance(key, int) else "." + (key if len(key) <= 40 else key[:40] + "..."))
    rendered = "body" + "".join(reversed(keys))
    return rendered if len(rendered) <= 200 else rendered[:200] + "..."


SURROGATE = "a lone UTF-16 surrogate (\\uD800-\\uDFFF escape)"


def json_problem(value: Any) -> str | None:
    """What makes a parsed JSON value unfit to keep, naming where it is; ``None`` if nothing does.

    Iterative (no recursion, whatever the depth); stops at the first problem. Only non-empty
    containers go on the stack, so a 1 MiB array of scalars is one pass over it."""
    if type(value) is not dict and type(value) is not list:
        problem = _scalar_problem(value)
        return None if problem is None else f"body: {problem}"
    stack: list[tuple[Any, int, JsonPath]] = [(value, 1, ())]  # a container, its level, its path
    while stack:
        item, level, path = stack.pop()
        if type(item) is dict:
            for key in item:
                if not key.isascii() and not _is_text(key):
                    return f"{_render(path)}: a key holds {SURROGATE}"
            members: Iterable[tuple[Any, Any]] = item.items()
        else:
            members = enumerate(item)
        for key, member in members:
            kind = type(member)
            if kind is dict or kind is list:
                if level >= MAX_JSON_DEPTH:
                    return f"{_render((path, key))}: JSON nested deeper than {MAX_JSON_DEPTH} levels"
                if member:
                    stack.append((member, level + 1, (path, key)))
            elif kind is str:
                if not member.isascii() and not _is_text(member):
                    return f"{_render((path, key))}: a string holds {SURROGATE}"
            elif kind is int:
                if not -MAX_JSON_INTEGER - 1 <= member <= MAX_JSON_INTEGER:
                    return f"{_render((path, key))}: {INTEGER_RANGE}"
            elif kind is float and not math.isfinite(member):
                return f"{_render((path, key))}: {FINITE}"
    return None


INTEGER_RANGE = "integer out of range (more than 64 bits)"
FINITE = "number out of range (not a finite double)"


def _scalar_problem(value: Any) -> str | None:
    kind = type(value)
    if kind is str and not value.isascii() and not _is_text(value):
        return f"a string holds {SURROGATE}"
    if kind is int and not -MAX_JSON_INTEGER - 1 <= value <= MAX_JSON_INTEGER:
        return INTEGER_RANGE
    if kind is float and not math.isfinite(value):
        return FINITE
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    """The request body as JSON (:func:`parse_json`); an empty body is ``{}`` unless required."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise BadInput(400, "body: a JSON object is required", "body")
        return {}
    if len(raw) > THREAD_PARSE_BYTES:  # its Python-level checks then share the GIL with the event loop
        return await asyncio.to_thread(parse_json, raw)
    return parse_json(raw)


async def read_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    body = await read_json(request, required=required)
    if not isinstance(body, dict):
        raise BadInput(422, f"body: must be a JSON object, not {type(body).__name__}", "body")
    return body


def validation_error(exc: ValidationError) -> BadInput:
    """422 naming the first bad field; the message lists every problem."""
    first = exc.errors()[0]["loc"] if exc.errors() else ()
    field = ".".join(str(part) for part in first) or "body"
    return BadInput(422, "; ".join(describe_errors(exc)), field)
