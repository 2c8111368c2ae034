"""Pools and routes through the admin API: a real server (proxy, admin listener, one module per pool)
over real backends on 127.0.0.1; and ``workers: 2`` (real processes) adding a backend to a named pool.

Each backend route takes ``?pool=<name>``; ``GET /pools``, ``GET /routes``, ``/distribution``'s
``pools`` and the ``pool`` label of ``/metrics`` show every pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import test_workers
from admin_helpers import HOST, Live, SlowBackend, live_server
from load_balancing_module.server.admin.openapi import openapi_document
from proxy_helpers import AioBackend

serve = test_workers.serve  # the fixtures of the workers' tests: a supervisor and two workers


def pools_config(api: list[SlowBackend]) -> list[str]:
    """A pool ``api`` (least connections) over ``api``, a route to it, a redirect, a broken filter."""
    return [
        "pools:",
        "  api:",
        "    algorithm: {algorithm_type: least_connections}",
        "    backends:",
        *(f"      - {{host: {HOST}, port: {b.port}}}" for b in api),
        "routes:",
        "  - {name: api, match: {path_prefix: /api/}, pool: api, strip_prefix: /api,"
        " request_headers: {set: {X-Pool: api}}}",
        "  - {name: old, match: {host: old.example.test}, redirect: {to: 'https://new.example.test', status: 301}}",
        "  - {match: {path_prefix: /broken/, methods: [GET]}, filters: ['route_filters:broken']}",
    ]


@contextlib.asynccontextmanager
async def with_pools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_count: int = 1
) -> AsyncIterator[tuple[Live, list[SlowBackend]]]:
    """A server whose default pool is backend ``a`` and whose pool ``api`` has ``api_count`` backends."""
    api = [SlowBackend(f"api{i}") for i in range(api_count)]
    async with contextlib.AsyncExitStack() as stack:
        for backend in api:
            await backend.start()
            stack.push_async_callback(backend.stop)
        live = await stack.enter_async_context(
            live_server(tmp_path, monkeypatch, [SlowBackend("a")], pools_config(api))
        )
        yield live, api


async def proxied(live: Live, path: str, count: int = 1) -> list[tuple[int, str]]:
    async with aiohttp.ClientSession() as http:
        out = []
        for _ in range(count):
            async with http.get(live.proxy + path, allow_redirects=False) as response:
                out.append((response.status, await response.text()))
        return out


def bid(backend: SlowBackend | AioBackend) -> str:
    return f"{HOST}:{backend.port}"


async def test_backends_of_a_named_pool_are_listed_added_drained_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with with_pools(tmp_path, monkeypatch) as (live, api), SlowBackend("late") as late:
        a = live.backends[0]
        status, listed = await live.api("GET", "/backends?pool=api")
        assert status == 200 and [b["backend_id"] for b in listed] == [bid(api[0])]
        status, listed = await live.api("GET", "/backends")  # no pool: the default one, as before
        assert status == 200 and [b["backend_id"] for b in listed] == [bid(a)]

        # Added to pool api at run time: it takes the requests routed there, and only those.
        async with live.session.post(
            live.admin + "/backends?pool=api", json={"host": HOST, "port": late.port, "weight": 100}
        ) as response:
            assert response.status == 201, await response.text()
            assert response.headers["Location"] == f"/backends/{quote(bid(late), safe='')}?pool=api"
            assert (await response.json())["backend_id"] == bid(late)
        assert (await live.api("GET", f"/backends/{quote(bid(late), safe='')}?pool=api"))[0] == 200
        status, body = await live.api("GET", f"/backends/{quote(bid(late), safe='')}")
        assert status == 404 and body["field"] == "backend_id"  # not in the default pool
        answers = await proxied(live, "/api/x", 20)
        assert {status for status, _ in answers} == {200}
        assert late.hits > 0 and {text for _, text in answers} <= {"late", "api0"}
        hits_a = a.hits
        assert {text for _, text in await proxied(live, "/other", 5)} == {"a"}  # no route: default
        assert a.hits == hits_a + 5

        # Drained and removed in pool api; the default pool is untouched.
        status, drained = await live.api("POST", f"/backends/{quote(bid(api[0]), safe='')}/drain?pool=api", {})
        assert status == 200 and drained["completed"] is True and drained["backend_id"] == bid(api[0])
        status, removed = await live.api("DELETE", f"/backends/{quote(bid(late), safe='')}?pool=api")
        assert status == 200 and removed["removed"] is True
        assert (await live.api("GET", "/backends?pool=api")) == (200, [])
        assert [status for status, _ in await proxied(live, "/api/x", 2)] == [503, 503]  # nothing left there
        assert [b["backend_id"] for b in (await live.api("GET", "/backends"))[1]] == [bid(a)]


async def test_an_unknown_pool_is_a_404_naming_the_pools_there_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with with_pools(tmp_path, monkeypatch) as (live, _):
        backend = quote(bid(live.backends[0]), safe="")
        calls: list[tuple[str, str, Any]] = [
            ("GET", "/backends", None),
            ("POST", "/backends", {"host": HOST, "port": 9}),
            ("GET", f"/backends/{backend}", None),
            ("DELETE", f"/backends/{backend}", None),
            ("POST", f"/backends/{backend}/drain", {}),
            ("GET", "/algorithm", None),
            ("PUT", "/algorithm", {"algorithm_type": "ip_hash"}),
            ("POST", "/execute", {"operation": "get_load_distribution"}),
        ]
        for method, path, body in calls:
            status, answer = await live.api(method, path + "?pool=nope%22%0a", body)
            assert status == 404, (method, path, answer)
            assert answer == {"error": "pool: no pool named 'nope\"\\n' (pools: default, api)", "field": "pool"}
        status, answer = await live.api("GET", "/backends?pool=api&pool=default")
        assert status == 422 and answer["field"] == "pool"
        for hostile in ("", "%ff%fe", "x" * 4000, "%00", "api%20"):
            status, answer = await live.api("GET", f"/backends?pool={hostile}")
            assert status == 404 and answer["field"] == "pool" and len(answer["error"]) < 200, hostile
        # nothing changed anywhere
        assert len((await live.api("GET", "/backends"))[1]) == 1
        assert (await live.api("GET", "/algorithm"))[1]["algorithm"] == "round_robin"


async def test_algorithm_and_execute_act_on_the_named_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with with_pools(tmp_path, monkeypatch) as (live, _), SlowBackend("late") as late:
        assert (await live.api("GET", "/algorithm?pool=api"))[1]["algorithm"] == "least_connections"
        status, answer = await live.api("PUT", "/algorithm?pool=api", {"algorithm_type": "ip_hash"})
        assert status == 200 and answer["algorithm"] == "ip_hash"
        assert (await live.api("GET", "/algorithm?pool=api"))[1]["algorithm"] == "ip_hash"
        assert (await live.api("GET", "/algorithm"))[1]["algorithm"] == "round_robin"

        body = {"operation": "add_backend", "backend": {"host": HOST, "port": late.port}}
        status, answer = await live.api("POST", "/execute?pool=api", body)
        assert status == 200, answer and answer["result"] == {"backend_id": bid(late)}
        assert bid(late) in live.server.pools["api"].backends
        assert bid(late) not in live.server.lb.backends


async def test_pools_routes_and_distribution_show_every_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with with_pools(tmp_path, monkeypatch, api_count=2) as (live, api):
        assert {status for status, _ in await proxied(live, "/api/x", 6)} == {200}
        assert {status for status, _ in await proxied(live, "/", 3)} == {200}
        assert [status for status, _ in await proxied(live, "/broken/x")] == [500]

        status, pools = await live.api("GET", "/pools")
        assert status == 200
        assert [p["name"] for p in pools] == ["default", "api"]
        default, pool = pools
        assert (default["algorithm"], default["backends"], default["healthy_backends"]) == (
            "round_robin",
            1,
            1,
        )
        assert (pool["algorithm"], pool["backends"], pool["healthy_backends"]) == ("least_connections", 2, 2)
        assert (default["total_requests"], pool["total_requests"]) == (3, 6)
        assert pool["routes"] == ["api"] and default["routes"] == ["route-2"]
        assert pool["active_connections"] == 0 and pool["queued_requests"] == 0

        status, routes = await live.api("GET", "/routes")
        assert status == 200
        first, redirect, broken = routes["routes"]
        assert (first["index"], first["name"], first["pool"], first["strip_prefix"]) == (0, "api", "api", "/api")
        assert first["match"]["path_prefix"] == "/api/" and first["request_headers"]["set"] == {"X-Pool": "api"}
        assert redirect["pool"] is None
        assert redirect["redirect"] == {"to": "https://new.example.test", "status": 301, "keep_path": True}
        assert redirect["match"]["host"] == "old.example.test"
        assert broken["name"] == "route-2" and broken["filters"] == ["route_filters:broken"]
        assert broken["match"]["methods"] == ["GET"]
        assert routes["filter_errors"] == {"route_filters:broken": 1}

        status, distribution = await live.api("GET", "/distribution")
        assert status == 200 and set(distribution["pools"]) == {"default", "api"}
        assert distribution["backends"] == distribution["pools"]["default"]["backends"]  # the top: default's
        assert distribution["total_requests"] == 3
        api_view = distribution["pools"]["api"]
        assert set(api_view["backends"]) == {bid(b) for b in api}
        assert api_view["total_requests"] == 6 and api_view["algorithm"] == "least_connections"
        assert "workers" not in api_view and "pools" not in api_view


async def test_metrics_carry_the_pool_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with with_pools(tmp_path, monkeypatch) as (live, api):
        await proxied(live, "/api/x", 4)
        await proxied(live, "/x", 2)
        await proxied(live, "/broken/")
        async with aiohttp.ClientSession() as http, http.get(live.admin + "/metrics") as response:  # public
            text = await response.text()
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        unlabelled = []
        proxy_own = {
            "omnixan_lb_resource_exhaustion",
            "omnixan_lb_upstream_stale_connections",
            "omnixan_lb_filter_errors",
            "omnixan_lb_route_requests",
        }
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[s.name, frozenset(s.labels.items())] = s.value
                if "pool" not in s.labels and family.name not in proxy_own | {"omnixan_lb_build_info"}:
                    unlabelled.append(s.name)
        assert unlabelled == []  # every module family says which pool

        def value(name: str, **labels: str) -> float:
            return samples[name, frozenset(labels.items())]

        a, api0 = bid(live.backends[0]), bid(api[0])
        assert value("omnixan_lb_requests_total", pool="api", backend=api0, code_class="2xx") == 4
        assert value("omnixan_lb_requests_total", pool="default", backend=a, code_class="2xx") == 2
        assert value("omnixan_lb_routed_requests_total", pool="api", backend=api0) == 4
        assert value("omnixan_lb_backend_up", pool="api", backend=api0) == 1
        assert value("omnixan_lb_backends", pool="api") == 1
        assert value("omnixan_lb_retries_total", pool="default") == 0
        assert value("omnixan_lb_filter_errors_total", filter="route_filters:broken") == 1
        assert ("omnixan_lb_routed_requests_total", frozenset({("pool", "default"), ("backend", api0)})) not in samples
        routed = {"api": 4, "old": 0, "route-2": 1, "(none)": 2}
        assert {r: value("omnixan_lb_route_requests_total", route=r) for r in routed} == routed

        assert await live.server.reload()  # a new table: the counts of the routes it keeps go on
        await proxied(live, "/api/y")
        async with aiohttp.ClientSession() as http, http.get(live.admin + "/metrics") as response:
            text = await response.text()
        assert 'omnixan_lb_route_requests_total{route="api"} 5.0' in text
        assert 'omnixan_lb_route_requests_total{route="(none)"} 2.0' in text


async def test_healthz_counts_every_pool_and_the_document_names_the_pool_parameter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        with_pools(tmp_path, monkeypatch, api_count=2) as (live, _),
        aiohttp.ClientSession() as http,
        http.get(live.admin + "/healthz") as response,
    ):
        assert response.status == 200
        assert await response.json() == {"status": "ok", "healthy_backends": 3, "backends": 3}
    paths = openapi_document()["paths"]
    for path, method in [
        ("/backends", "get"),
        ("/backends", "post"),
        ("/backends/{backend_id}", "get"),
        ("/backends/{backend_id}", "delete"),
        ("/backends/{backend_id}/drain", "post"),
        ("/algorithm", "get"),
        ("/algorithm", "put"),
        ("/execute", "post"),
    ]:
        operation = paths[path][method]
        query = [p for p in operation["parameters"] if p["in"] == "query"]
        assert query == [
            {
                "name": "pool",
                "in": "query",
                "required": False,
                "schema": {"default": "default", "type": "string"},
                "description": query[0]["description"],
            }
        ], path
        assert "404" in operation["responses"], (path, method)
    assert "401" in paths["/pools"]["get"]["responses"] and "401" in paths["/routes"]["get"]["responses"]


# -- workers: 2 ---------------------------------------------------------------------------------


async def fetch_from(port: int, path: str, count: int) -> list[tuple[int, str]]:
    """``count`` GETs of ``path``, each on a connection of its own (the kernel spreads them over
    the workers): (status, the backend's name or '')."""
    out = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(count):
            async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                body = await response.json() if response.status == 200 else {}
                out.append((response.status, body.get("backend", "")))
    return out


async def test_workers_a_backend_added_to_a_named_pool_reaches_every_worker(
    serve: test_workers.Serve, tmp_path: Path
) -> None:
    async with AioBackend("a") as a, AioBackend("late") as late:
        running = await serve(
            [a],
            "pools:",
            "  api: {backends: []}",
            "routes:",
            "  - {name: api, match: {path_prefix: /api/}, pool: api}",
        )
        # Before: the pool is empty in every worker.
        assert {status for status, _ in await fetch_from(running.port, "/api/x", 10)} == {503}
        status, added = await running.send("POST", "/backends?pool=api", {"host": HOST, "port": late.port})
        assert status == 201 and added["backend_id"] == bid(late)
        before = {row["index"]: row["total_requests"] for row in await running.workers()}
        # After: every request to /api/, whichever worker takes it, reaches the new backend.
        answers = await fetch_from(running.port, "/api/x", 60)
        assert answers == [(200, "late")] * 60
        rows = await running.workers()
        assert all(row["total_requests"] > before[row["index"]] for row in rows), rows  # both workers routed there
        distribution = await running.get("/distribution")
        assert distribution["pools"]["api"]["backends"][bid(late)]["total_requests"] == 60
        assert distribution["pools"]["api"]["total_requests"] == 60
        assert distribution["total_requests"] == 0  # the default pool's: nothing went there
        pools = await running.get("/pools")
        assert [(p["name"], p["backends"], p["total_requests"]) for p in pools] == [("default", 1, 0), ("api", 1, 60)]
        assert await running.metric(f'omnixan_lb_routed_requests_total{{backend="{bid(late)}",pool="api"}}') == 60
        status, removed = await running.send("DELETE", f"/backends/{quote(bid(late), safe='')}?pool=api")
        assert status == 200 and removed["removed"] is True
        assert {status for status, _ in await fetch_from(running.port, "/api/x", 10)} == {503}


async def test_routes_and_pools_follow_a_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with with_pools(tmp_path, monkeypatch) as (live, _):
        assert [r["name"] for r in (await live.api("GET", "/routes"))[1]["routes"]] == ["api", "old", "route-2"]
        path = live.server.path
        text = path.read_text()
        assert "name: api, match: {path_prefix: /api/}" in text
        path.write_text(
            text.replace("name: api, match: {path_prefix: /api/}", "name: v2, match: {path_prefix: /v2/}").replace(
                "  - {name: old", "  - {name: gone"
            )
        )
        assert await live.server.reload()
        status, routes = await live.api("GET", "/routes")
        assert status == 200 and [r["name"] for r in routes["routes"]] == ["v2", "gone", "route-2"]
        assert [p["routes"] for p in (await live.api("GET", "/pools"))[1]] == [["route-2"], ["v2"]]
        assert [text for _, text in await proxied(live, "/v2/x", 2)] == ["api0", "api0"]
