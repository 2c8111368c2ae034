"""admin.body.parse_json without a server: which bodies the admin API keeps, and how a refusal names the spot.

On a live server, for every endpoint and with hypothesis-built bodies: test_admin_fuzz.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from load_balancing_module.server.admin.body import MAX_JSON_DEPTH, BadInput, parse_json


def refusal(raw: bytes) -> str:
    with pytest.raises(BadInput) as caught:
        parse_json(raw)
    assert caught.value.status == 400 and caught.value.field == "body"
    assert caught.value.message.startswith("body"), caught.value.message
    return caught.value.message


def levels(n: int, innermost: Any) -> Any:
    """``n`` nested containers (arrays and objects in turn) around ``innermost``."""
    value = innermost
    for i in range(n):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("innermost", [1, [], {}, "x"])
def test_nesting_is_kept_up_to_the_limit(innermost: Any) -> None:
    container = 1 if isinstance(innermost, (list, dict)) else 0
    deepest = levels(MAX_JSON_DEPTH - container, innermost)
    assert parse_json(json.dumps(deepest).encode()) == deepest
    message = refusal(json.dumps(levels(MAX_JSON_DEPTH + 1 - container, innermost)).encode())
    assert message.endswith(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def test_a_refusal_names_where_the_problem_is() -> None:
    assert refusal(b'{"a": [1, {"b": 1e400}]}') == "body.a[1].b: number out of range (not a finite double)"
    assert refusal(b'{"a": [-1e999]}') == "body.a[0]: number out of range (not a finite double)"
    assert refusal(b"1e400") == "body: number out of range (not a finite double)"
    assert refusal(b'{"p": 9223372036854775808}') == "body.p: integer out of range (more than 64 bits)"
    assert refusal(b"[-9223372036854775809]") == "body[0]: integer out of range (more than 64 bits)"
    assert refusal(b'{"m": {"\\udc80": 1}}').startswith("body.m: a key holds a lone UTF-16 surrogate")
    assert refusal(b'["ok", "\\ud800x"]').startswith("body[1]: a string holds a lone UTF-16 surrogate")
    assert refusal(b'{"a": 1, "b": 2, "a": 3}') == "body: not valid JSON (duplicate key 'a')"
    assert refusal(b'{"a": [{"b": 1, "b": 1}]}') == "body: not valid JSON (duplicate key 'b')"
    assert refusal(b'{"h": "\xc3\x28"}') == "body: not UTF-8 (byte 0xc3 at offset 7)"
    assert refusal(b'{"w": NaN}').startswith("body: not valid JSON (NaN is not a JSON number")
    assert refusal(b"[" * 100_000) == f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels"
    message = refusal(b'{"' + b"k" * 1000 + b'": [1e400]}')  # a long key is cut short in the message
    assert message == "body." + "k" * 40 + "...[0]: number out of range (not a finite double)"


def test_what_is_kept_is_exactly_what_was_sent() -> None:
    body = {
        "i": [2**63 - 1, -(2**63), 0],
        "f": [1.7976931348623157e308, -5e-324, 0.1],
        "t": "é😀\u2028",
        "pair": "\U0001f600",
        "n": None,
        "b": [True, False],
        "e": [{}, []],
    }
    raw = json.dumps(body, ensure_ascii=True).encode()  # the emoji as a surrogate pair escape, which is fine
    assert parse_json(raw) == body
    assert parse_json(json.dumps(body, ensure_ascii=False).encode()) == body
