"""The admin listener's guards on a live server, with requests written byte for byte on real sockets.

Host (421, DNS rebinding), Origin (403), Content-Type of a change (415), preflights (never granted, no CORS
header ever), and bearer tokens of any bytes (401, never 500). Most run without a token, the default
setup on loopback, where these guards are all that stands between a web page and the API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from admin_helpers import TOKEN, TOKEN_ENV, Header, Live, RawResponse, SlowBackend, live_server, raw_request

Fixture = tuple[Path, pytest.MonkeyPatch]
ALLOWED = f'{{listen: "127.0.0.1:0", token_env: {TOKEN_ENV}, allowed_hosts: [admin.example.com, "*.lb.example.net"]}}'
JSON = ("Content-Type", "application/json")
NEW_BACKEND = b'{"host": "127.0.0.1", "port": 9}'


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fixture:
    return tmp_path, monkeypatch


async def send(
    live: Live,
    method: str,
    path: str,
    headers: list[Header] | tuple[Header, ...] = (),
    body: bytes = b"",
    **kwargs: Any,
) -> RawResponse:
    response = await asyncio.to_thread(raw_request, live.server.admin.port, method, path, headers, body, **kwargs)
    assert response.cors_headers == [], response.headers  # never, to anyone
    assert response.status < 500, (method, path, response)
    return response


def refused(response: RawResponse, status: int, field: str) -> None:
    assert response.status == status, response
    assert response.headers["content-type"].startswith("application/json"), response
    error = response.json()
    assert error["field"] == field and error["error"].startswith(field + ": "), error


def routes(live: Live) -> list[tuple[str, str]]:
    backend = live.backend_id(live.backends[0])
    return [
        ("GET", "/"),
        ("GET", "/dashboard/dashboard.js"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/backends"),
        ("POST", "/backends"),
        ("GET", f"/backends/{backend}"),
        ("DELETE", f"/backends/{backend}"),
        ("POST", f"/backends/{backend}/drain"),
        ("GET", "/distribution"),
        ("GET", "/pools"),
        ("GET", "/routes"),
        ("POST", "/backends?pool=default"),
        ("GET", "/algorithm"),
        ("PUT", "/algorithm"),
        ("POST", "/execute"),
        ("GET", "/nope"),
    ]


async def backend_ids(live: Live) -> list[str]:
    response = await send(live, "GET", "/backends")
    assert response.status == 200
    return [b["backend_id"] for b in response.json()]


async def test_only_the_listeners_own_names_are_served_on_every_route(env: Fixture) -> None:
    """DNS rebinding: a page on evil.example rebound to 127.0.0.1 sends Host: evil.example."""
    async with live_server(*env, [SlowBackend("a")], token=False, admin=ALLOWED) as live:
        before = await backend_ids(live)
        for method, path in routes(live):
            for host in (
                "evil.example:{port}",
                "evil.example",
                "127.0.0.1.evil.example",
                "lb.example.net",
                "admin.example.com.evil.example:{port}",
            ):
                body = NEW_BACKEND if method == "POST" else b""
                refused(await send(live, method, path, [JSON], body, host=host), 421, "Host")
        refused(await send(live, "GET", "/metrics", host=None, version="1.0"), 421, "Host")
        assert (await send(live, "GET", "/metrics", host=None)).status == 400  # aiohttp's parser: 1.1 needs one
        repeated = await send(live, "GET", "/metrics", [("Host", "127.0.0.1")])
        assert repeated.status in (400, 421), repeated  # the parser's refusal, or the guard's
        for host in (
            "127.0.0.1:{port}",
            "127.0.0.1",
            "[::1]:{port}",
            "localhost:{port}",
            "LOCALHOST",
            "localhost.",
            "admin.example.com",
            "Admin.Example.Com:{port}",
            "x.lb.example.net:{port}",
            "a.b.lb.example.net",
        ):
            for path in ("/metrics", "/distribution", "/backends"):
                assert (await send(live, "GET", path, host=host)).status == 200, (host, path)
        assert await backend_ids(live) == before
        response = await send(live, "POST", "/backends", [JSON], NEW_BACKEND, host="admin.example.com")
        assert response.status == 201  # an allowed name may change things


async def test_a_foreign_origin_is_refused_but_for_the_dashboard_page(env: Fixture) -> None:
    async with live_server(*env, [SlowBackend("a")], token=False) as live:
        before = await backend_ids(live)
        own_by_tls = f"https://127.0.0.1:{live.server.admin.port}"  # the listener has no TLS: not its origin
        for origin in ("http://evil.example", "null", "http://127.0.0.1:1", "https://evil.example", own_by_tls):
            for method, path in routes(live):
                if (method, path) == ("GET", "/"):
                    continue
                body = NEW_BACKEND if method == "POST" else b""
                refused(await send(live, method, path, [("Origin", origin), JSON], body), 403, "Origin")
            page = await send(live, "GET", "/", [("Origin", origin)])
            assert page.status == 200 and b"<title>OMNIXAN LB</title>" in page.body
        assert await backend_ids(live) == before
        own = f"http://127.0.0.1:{live.server.admin.port}"
        assert (await send(live, "POST", "/backends", [("Origin", own), JSON], NEW_BACKEND)).status == 201
        assert (await send(live, "GET", "/distribution", [("Origin", own)])).status == 200


async def test_changes_are_taken_only_as_json(env: Fixture) -> None:
    """The cross-site form and no-cors fetch of the review: text/plain JSON, urlencoded, multipart, none."""
    async with live_server(*env, [SlowBackend("a"), SlowBackend("b")], token=False) as live:
        a, b = (live.backend_id(x) for x in live.backends)
        before = await backend_ids(live)
        for content_type in (
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/plain; application/json",
            None,
        ):
            headers = [] if content_type is None else [("Content-Type", content_type)]
            refused(await send(live, "POST", "/backends", headers, NEW_BACKEND), 415, "Content-Type")
            refused(await send(live, "POST", f"/backends/{a}/drain", headers), 415, "Content-Type")
            refused(await send(live, "POST", f"/backends/{a}/drain", headers, b'{"timeout": 0}'), 415, "Content-Type")
            refused(
                await send(live, "PUT", "/algorithm", headers, b'{"algorithm_type": "ip_hash"}'), 415, "Content-Type"
            )
            refused(
                await send(
                    live,
                    "POST",
                    "/execute",
                    headers,
                    b'{"operation": "remove_backend", "backend_id": "%s"}' % a.encode(),
                ),
                415,
                "Content-Type",
            )
        assert await backend_ids(live) == before
        assert (await send(live, "GET", "/algorithm")).json()["algorithm"] == "round_robin"

        response = await send(
            live, "POST", "/backends", [("Content-Type", "application/json; charset=utf-8")], NEW_BACKEND
        )
        assert response.status == 201 and response.json()["backend_id"] == "127.0.0.1:9"
        drained = await send(live, "POST", f"/backends/{a}/drain", [JSON])  # an empty body, as JSON
        assert drained.status == 200 and drained.json()["completed"] is True
        assert (await send(live, "DELETE", f"/backends/{b}")).status == 200  # no body, no type needed
        assert await backend_ids(live) == ["127.0.0.1:9"]
        assert (await send(live, "POST", "/nope", [("Content-Type", "text/plain")])).status == 404


async def test_preflights_are_never_granted(env: Fixture) -> None:
    async with live_server(*env, [SlowBackend("a")], token=False) as live:
        preflight = [
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ]
        for path in ("/backends", "/algorithm", "/"):
            refused(await send(live, "OPTIONS", path, preflight), 403, "Origin")
        own = await send(live, "OPTIONS", "/backends", [("Origin", f"http://127.0.0.1:{live.server.admin.port}")])
        assert own.status == 405 and "POST" in own.headers["allow"]


BAD_TOKENS: list[str | bytes] = [
    b"Bearer \xff\xfe",
    b"Bearer t\xc3\xa9",
    b"Bearer \x80",
    b"Bearer \xc3",
    b"Bearer " + TOKEN.encode() + b"\xff",
    b"Bearer",
    b"",
    b"Basic \xff",
    "Bearer " + "a" * 8000,
    "Bearer  ",
    b"\xff " + TOKEN.encode(),
    b"Bearer " + TOKEN.encode()[:-1],
    "Token " + TOKEN,
]


async def test_any_token_bytes_get_401(env: Fixture) -> None:
    """aiohttp hands header bytes over surrogate-escaped: the comparison must take any of them."""
    async with live_server(*env, [SlowBackend("a")]) as live:
        for authorization in BAD_TOKENS:
            for method, path in (("GET", "/backends"), ("POST", "/backends")):
                response = await send(live, method, path, [("Authorization", authorization), JSON], NEW_BACKEND)
                refused(response, 401, "Authorization")
                assert response.headers["www-authenticate"].startswith("Bearer")
        for right in ("Bearer " + TOKEN, "bearer " + TOKEN, "Bearer   " + TOKEN + "  "):
            assert (await send(live, "GET", "/backends", [("Authorization", right)])).status == 200
        assert len(live.server.lb.backends) == 1  # nothing was added
