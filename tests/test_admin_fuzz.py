"""Hostile bodies to every endpoint that takes one, on a live server: never a 5xx, always a JSON error, and
the server keeps serving; what the API accepted it can always serve back.

Named cases first (each rule of admin.body.parse_json, the 1 MiB limit), then hypothesis-built bodies: JSON
of wrong types, huge numbers and NaN/Infinity literals, repeated keys, random bytes. Requests go out on raw
sockets from a worker thread while the server runs in the test's event loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin_helpers import TOKEN, Live, RawResponse, SlowBackend, live_server, raw_request
from load_balancing_module.server.admin.app import MAX_BODY_BYTES
from load_balancing_module.server.admin.body import MAX_JSON_DEPTH, THREAD_PARSE_BYTES

AUTH = ("Authorization", f"Bearer {TOKEN}")
JSON = ("Content-Type", "application/json")
MIB = 1024**2
# drain_timeout 0: a drain that a fuzzed /execute route_request left a slot held on does not wait.
EXTRA = ["drain_timeout: 0"]


def nested(depth: int) -> Any:
    """An object that makes a body ``depth`` levels deep when it sits one level down (as metadata does):
    objects and arrays in turn, an object outermost."""
    value: Any = 1
    for i in range(depth - 1):
        value = {"a": value} if (depth - i) % 2 == 0 else [value]
    return value


BIG_STRING = b'{"host": "' + b"a" * MAX_BODY_BYTES + b'", "port": 80}'
# fmt: off
HOSTILE: dict[str, tuple[bytes, int]] = {  # body, and the status it must get everywhere
    "100,000 [": (b"[" * 100_000, 400),
    "50,000 {": (b'{"a":' * 50_000, 400),
    "100,000 balanced []": (b"[" * 100_000 + b"]" * 100_000, 400),
    f"{MAX_JSON_DEPTH + 1} levels": (json.dumps({"metadata": nested(MAX_JSON_DEPTH + 1)}).encode(), 400),
    # Kept once, such metadata made every later GET /distribution a 500 (pydantic serialises 255 levels).
    "metadata 300 levels": (json.dumps({"host": "127.0.0.1", "port": 9, "metadata": nested(300)}).encode(), 400),
    "execute, metadata 300 levels": (json.dumps({"operation": "add_backend", "backend": {
        "host": "127.0.0.1", "port": 9, "metadata": nested(300)}}).encode(), 400),
    "over the limit": (BIG_STRING, 413),
    "at the limit, parsed in a thread": (b"[" + b"0," * ((MAX_BODY_BYTES - 3) // 2) + b"0]", 422),
    "over 64 KiB, parsed in a thread, too deep": (
        b'{"a": ' + b" " * THREAD_PARSE_BYTES + json.dumps(nested(MAX_JSON_DEPTH + 1)).encode() + b"}", 400),
    "4 MiB": (b"[" + b"0," * (2 * MIB) + b"0]", 413),
    "not UTF-8": (b'{"host": "\xff\xfe", "port": 80}', 400),
    "UTF-16": ('{"host": "h", "port": 80}'.encode("utf-16"), 400),
    "UTF-8 BOM": (b'\xef\xbb\xbf{"host": "h", "port": 80}', 400),
    "NaN": (b'{"host": "h", "port": 80, "weight": NaN}', 400),
    "Infinity": (b'{"timeout": Infinity, "algorithm_type": "ip_hash", "operation": "x"}', 400),
    "-Infinity": (b'{"host": "h", "port": -Infinity}', 400),
    "1e400": (b'{"host": "h", "port": 80, "weight": 1e400, "timeout": 1e400}', 400),
    "10**30": (b'{"host": "h", "port": 80, "priority": 1000000000000000000000000000000}', 400),
    "5,000 digits": (b'{"host": "h", "port": 80, "priority": ' + b"9" * 5000 + b"}", 400),
    "repeated key": (b'{"host": "h", "port": 80, "port": 81, "timeout": 1, "timeout": 2}', 400),
    "lone surrogate": (b'{"host": "\\ud800", "port": 80, "operation": "\\udfff"}', 400),
    "lone surrogate key": (b'{"\\ud800": 1}', 400),
    "not JSON": (b"{not json", 400),
    "array": (b"[1, 2]", 422),
    "string": (b'"remove_backend"', 422),
    "number": (b"42", 422),
    "null": (b"null", 422),
}
# fmt: on


def endpoints(live: Live) -> list[tuple[str, str]]:
    backend = live.backend_id(live.backends[0])
    return [
        ("POST", "/backends"),
        ("POST", "/backends?pool=default"),
        ("POST", f"/backends/{backend}/drain"),
        ("POST", "/backends/nope/drain"),
        ("PUT", "/algorithm"),
        ("POST", "/execute"),
    ]


def send(live: Live, method: str, path: str, body: bytes) -> RawResponse:
    return raw_request(live.server.admin.port, method, path, [AUTH, JSON], body)


def still_serving(live: Live) -> None:
    response = raw_request(live.server.admin.port, "GET", "/distribution", [AUTH])
    assert response.status == 200 and isinstance(response.json()["backends"], dict), response
    listed = raw_request(live.server.admin.port, "GET", "/backends", [AUTH])
    assert listed.status == 200, listed
    for backend in listed.json():  # each one can be read back on its own too
        one = raw_request(live.server.admin.port, "GET", f"/backends/{backend['backend_id']}", [AUTH])
        assert one.status == 200, one


def json_error(response: RawResponse) -> dict[str, Any]:
    assert response.status < 500, response
    assert response.headers["content-type"].startswith("application/json"), response
    error = response.json()
    assert isinstance(error, dict) and isinstance(error.get("error"), str) and "field" in error, error
    return error


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_bodies_get_a_json_error_everywhere(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, status = HOSTILE[case]
    async with live_server(tmp_path, monkeypatch, [SlowBackend("a")], EXTRA) as live:
        before = await live.api("GET", "/distribution")
        for method, path in endpoints(live):
            response = await asyncio.to_thread(send, live, method, path, body)
            error = json_error(response)
            assert response.status == status, (case, path, response)
            if status == 400:
                assert error["field"] == "body" and error["error"].startswith("body"), error
            await asyncio.to_thread(still_serving, live)
        after = await live.api("GET", "/distribution")
        assert after[1]["backends"].keys() == before[1]["backends"].keys()
        assert after[1]["algorithm"] == before[1]["algorithm"]


async def test_what_is_accepted_can_be_served_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deepest metadata the API keeps, and every kind of JSON value, come back as sent."""
    metadata = {
        "deep": nested(MAX_JSON_DEPTH - 1),
        "text": "é\u2028\U0001f600",
        "big": 2**63 - 1,
        "small": -(2**63),
        "float": 1.7976931348623157e308,
        "tiny": 5e-324,
        "none": None,
    }
    async with live_server(tmp_path, monkeypatch, [SlowBackend("a")], EXTRA) as live:
        status, added = await live.api("POST", "/backends", {"host": "127.0.0.1", "port": 9, "metadata": metadata})
        if status == 422:  # a stricter BackendConfig (metadata depth and size bounded at the model) is fine too
            assert added["field"].startswith("metadata"), added
            metadata = {k: v for k, v in metadata.items() if k != "deep"}
            status, added = await live.api("POST", "/backends", {"host": "127.0.0.1", "port": 9, "metadata": metadata})
        assert status == 201, added
        assert added["metadata"] == metadata
        if "deep" in metadata:  # one level further down in an /execute body
            metadata["deep"] = nested(MAX_JSON_DEPTH - 2)
        status, result = await live.api(
            "POST",
            "/execute",
            {"operation": "add_backend", "backend": {"host": "127.0.0.1", "port": 10, "metadata": metadata}},
        )
        assert status == 200, result
        for path in ("/backends", "/distribution", "/backends/127.0.0.1:10"):
            assert (await live.api("GET", path))[0] == 200
        assert (await live.api("GET", "/backends/127.0.0.1:10"))[1]["metadata"] == metadata


# -- hypothesis -----------------------------------------------------------------------------

KEYS = [
    "host",
    "port",
    "weight",
    "max_connections",
    "quantum_capable",
    "priority",
    "metadata",
    "slow_start_seconds",
    "timeout",
    "algorithm_type",
    "config",
    "operation",
    "backend",
    "backend_id",
    "choice_count",
    "points",
]
OPERATIONS = ["add_backend", "remove_backend", "health_check", "get_load_distribution", "configure_algorithm"]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["127.0.0.1", "ip_hash", "round_robin", "a b", ""])
    | st.sampled_from(OPERATIONS)
)
# Around the limit, and far over it (kept, 300 levels made the old API's later answers fail).
DEEP = st.one_of(st.integers(min_value=MAX_JSON_DEPTH - 2, max_value=MAX_JSON_DEPTH + 2), st.just(300)).map(nested)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def encode(pairs: list[tuple[str, Any]]) -> bytes:
    """An object written pair by pair: keys may repeat; floats may come out as NaN or Infinity."""
    return ("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}").encode()


BACKEND = st.fixed_dictionaries(
    {
        "host": st.sampled_from(["127.0.0.1", "10.0.0.7", "backend-1.example", "::1"]) | VALUES,
        "port": st.integers(min_value=0, max_value=70_000),
    },
    optional={
        "weight": st.floats(min_value=0, max_value=2e6) | VALUES,
        "priority": st.integers(),
        "max_connections": st.integers(min_value=-1, max_value=2**64),
        "metadata": VALUES | DEEP,
        "quantum_capable": st.booleans(),
        "slow_start_seconds": st.floats(min_value=0, max_value=10),
    },
)
VALID_BACKEND = st.fixed_dictionaries(  # added, unless its metadata is too deep
    {
        "host": st.sampled_from(["127.0.0.1", "10.0.0.7", "backend-1.example", "::1"]),
        "port": st.integers(min_value=1, max_value=65_535),
    },
    optional={
        "weight": st.floats(min_value=0.001, max_value=1e6),
        "priority": st.integers(-10, 10),
        "metadata": st.dictionaries(st.text(max_size=6), VALUES, max_size=3) | DEEP,
        "quantum_capable": st.booleans(),
    },
)
NEAR_VALID = {  # bodies each kind of endpoint takes, give or take a field
    "/backends": VALID_BACKEND | BACKEND,
    "/drain": st.fixed_dictionaries({}, optional={"timeout": st.floats(min_value=-1, max_value=0.01) | VALUES}),
    "/algorithm": st.fixed_dictionaries(
        {"algorithm_type": st.sampled_from(["round_robin", "ip_hash", "least_connections", "weighted", "fast"])},
        optional={"config": st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=2)},
    ),
    "/execute": st.fixed_dictionaries(
        {"operation": st.sampled_from(OPERATIONS)}, optional={"backend_id": VALUES, "backend": BACKEND | VALUES}
    ),
}
BODIES = st.one_of(
    st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=6).map(encode),  # close to real, often wrong
    VALUES.map(lambda v: json.dumps(v).encode()),  # any JSON at all
    st.binary(max_size=64),  # any bytes
    st.tuples(
        st.lists(st.tuples(st.sampled_from(KEYS), SCALARS), max_size=4).map(encode),
        st.integers(min_value=0, max_value=64),
        st.binary(min_size=1, max_size=3),
    ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]),  # JSON with a few bytes dropped in
    st.sampled_from([body for body, _ in HOSTILE.values() if len(body) < 200_000]),
)


async def test_hypothesis_bodies_never_get_a_server_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with live_server(tmp_path, monkeypatch, [SlowBackend("a"), SlowBackend("b")], EXTRA) as live:
        targets = [*endpoints(live), ("DELETE", "/backends/nope")]
        seen: set[int] = set()

        def bodies(target: tuple[str, str]) -> st.SearchStrategy[tuple[tuple[str, str], bytes]]:
            kind = "/" + target[1].rpartition("/")[2] if target[1].endswith(("/drain", "/backends")) else target[1]
            near = NEAR_VALID.get(kind, VALUES).map(lambda body: json.dumps(body).encode())
            return st.tuples(st.just(target), st.one_of(near, BODIES))

        @settings(
            max_examples=300,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(case=st.sampled_from(targets).flatmap(bodies))
        def one(case: tuple[tuple[str, str], bytes]) -> None:
            response = send(live, *case[0], case[1])
            seen.add(response.status)
            if response.status >= 300:
                json_error(response)
            else:
                response.json()
            still_serving(live)

        await asyncio.to_thread(one)
        assert {200, 201, 400, 422} <= seen and max(seen) < 500, seen  # changes made, and both refusals
