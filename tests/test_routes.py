"""Routes and pools: the table's matching rules, and real requests through the proxy to pools of
real backends, with header rules, prefix strip, redirects and Python filters (tests/route_filters.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from load_balancing_module import LoadBalancingModule
from load_balancing_module.config import LoadBalancingModuleConfig
from load_balancing_module.exceptions import ConfigurationError
from load_balancing_module.server.config import ServerConfig, load_config
from load_balancing_module.server.http import RequestInfo
from load_balancing_module.server.pools import PoolModules
from load_balancing_module.server.proxy import ProxyServer
from load_balancing_module.server.route_config import RouteConfig
from load_balancing_module.server.routing import RouteTable, normalize_path
from proxy_helpers import HOST, AccessRecords, AioBackend, Response, get


def info(
    target: bytes = b"/", host: bytes | None = b"example.com", method: bytes = b"GET", **headers: str
) -> RequestInfo:
    request = RequestInfo(method, target, True, True)
    request.host = host
    request.headers = [(b"Host", host or b"")] + [
        (k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()
    ]
    return request


def table(*routes: dict[str, Any]) -> RouteTable:
    return RouteTable([RouteConfig.model_validate(r) for r in routes])


# -- the table ---------------------------------------------------------------------------------


def test_first_match_wins_and_no_match_is_the_default_pool() -> None:
    routes = table(
        {"name": "v1", "match": {"host": "api.example.com", "path_prefix": "/v1/"}, "pool": "api"},
        {"name": "api-any", "match": {"host": "api.example.com"}, "pool": "other"},
        {"name": "all-v1", "match": {"path_prefix": "/v1/"}, "pool": "third"},
    )
    assert routes.match(info(b"/v1/users", b"api.example.com")).name == "v1"
    assert routes.match(info(b"/v2/users", b"api.example.com")).name == "api-any"
    assert routes.match(info(b"/v1/users", b"www.example.com")).name == "all-v1"
    fallback = routes.match(info(b"/v2", b"www.example.com"))
    assert fallback is routes.fallback and fallback.pool == "default"


def test_order_is_kept_across_hosts() -> None:
    """A route without a host that comes first beats a later route for the exact host."""
    routes = table(
        {"name": "maintenance", "match": {"path_prefix": "/"}, "pool": "a"},
        {"name": "api", "match": {"host": "api.example.com"}, "pool": "b"},
    )
    assert routes.match(info(b"/x", b"api.example.com")).name == "maintenance"


def test_host_is_matched_without_port_case_or_final_dot() -> None:
    routes = table({"name": "api", "match": {"host": "API.Example.com"}, "pool": "api"})
    for host in (b"api.example.com", b"API.EXAMPLE.COM:8443", b"api.example.com."):
        assert routes.match(info(b"/", host)).name == "api", host
    assert routes.match(info(b"/", b"xapi.example.com")).name == "default"
    assert routes.match(info(b"/", None)).name == "default"


def test_wildcard_host_matches_names_under_it_only() -> None:
    routes = table({"name": "w", "match": {"host": "*.example.com"}, "pool": "a"})
    assert routes.match(info(b"/", b"a.example.com")).name == "w"
    assert routes.match(info(b"/", b"a.b.example.com:80")).name == "w"
    assert routes.match(info(b"/", b"example.com")).name == "default"
    assert routes.match(info(b"/", b"badexample.com")).name == "default"


def test_exact_host_before_wildcard_when_listed_first_and_after_when_not() -> None:
    first = table(
        {"name": "exact", "match": {"host": "api.example.com"}, "pool": "a"},
        {"name": "wild", "match": {"host": "*.example.com"}, "pool": "b"},
    )
    assert first.match(info(b"/", b"api.example.com")).name == "exact"
    assert first.match(info(b"/", b"www.example.com")).name == "wild"
    second = table(
        {"name": "wild", "match": {"host": "*.example.com"}, "pool": "b"},
        {"name": "exact", "match": {"host": "api.example.com"}, "pool": "a"},
    )
    assert second.match(info(b"/", b"api.example.com")).name == "wild"


def test_path_regex_methods_and_headers() -> None:
    routes = table(
        {"name": "items", "match": {"path_regex": r"/items/[0-9]+", "methods": ["GET", "HEAD"]}, "pool": "a"},
        {"name": "canary", "match": {"headers": {"X-Canary": "1"}}, "pool": "b"},
    )
    assert routes.match(info(b"/items/42?full=1")).name == "items"
    assert routes.match(info(b"/items/42/more")).name == "default"  # the whole path must match
    assert routes.match(info(b"/items/42", method=b"POST")).name == "default"
    assert routes.match(info(b"/x", x_canary="1")).name == "canary"
    assert routes.match(info(b"/x", X_CANARY="1")).name == "canary"  # names in any case
    assert routes.match(info(b"/x", x_canary="2")).name == "default"  # values exactly


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        (b"/a/b", b"/a/b"),
        (b"/public/../admin", b"/admin"),
        (b"//admin", b"/admin"),
        (b"/%61dmin", b"/admin"),
        (b"/%2e%2e/admin", b"/admin"),
        (b"/../../etc", b"/etc"),
        (b"/a/./b/", b"/a/b/"),
        (b"/a/b/..", b"/a/"),
        (b"/a%2Fb", b"/a%2Fb"),  # an encoded slash is not a separator
        (b"/a%2fb", b"/a%2Fb"),
        (b"/%zz", b"/%zz"),
        (b"/", b"/"),
    ],
)
def test_paths_are_normalized_before_matching(path: bytes, normal: bytes) -> None:
    assert normalize_path(path) == normal


def test_a_protected_prefix_cannot_be_walked_around() -> None:
    routes = table({"name": "admin", "match": {"path_prefix": "/admin"}, "pool": "a"})
    for target in (b"/public/../admin/x", b"//admin/x", b"/%61dmin/x", b"/./admin"):
        request = info(target)
        assert routes.match(request).name == "admin", target
        assert request.target.startswith(b"/admin"), request.target  # and the backend sees that path


def test_strip_prefix_and_header_rules_rewrite_the_request() -> None:
    routes = table(
        {
            "match": {"path_prefix": "/v1/"},
            "pool": "api",
            "strip_prefix": "/v1",
            "request_headers": {"set": {"X-Tenant": "a"}, "add": {"X-Extra": "1"}, "remove": ["X-Debug"]},
        }
    )
    request = info(b"/v1/users?x=1", x_debug="on", x_tenant="forged")
    request.raw_head = b"GET /v1/users?x=1 HTTP/1.1\r\n..."
    routes.match(request)
    assert request.target == b"/users?x=1"
    assert request.raw_head is None
    names = [(n.lower(), v) for n, v in request.headers]
    assert (b"x-tenant", b"a") in names and (b"x-tenant", b"forged") not in names
    assert (b"x-extra", b"1") in names and all(n != b"x-debug" for n, _ in names)


# -- config rules -------------------------------------------------------------------------------


def config(**fields: Any) -> ServerConfig:
    fields.setdefault("listen", f"{HOST}:0")
    fields.setdefault("health_check", {"enabled": False})
    return ServerConfig.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"routes": [{"pool": "api"}]}, "routes[0].pool: no pool named 'api'"),
        ({"pools": {"default": {}}}, "'default' is the top-level backends"),
        ({"pools": {"Bad Name": {}}}, "is not a pool name"),
        ({"routes": [{"redirect": {"to": "https://x.test"}, "pool": "default"}]}, "drop pool"),
        ({"routes": [{"redirect": {"to": "ftp://x.test"}}]}, "http:// or https:// URL"),
        ({"routes": [{"redirect": {"to": "//x.test"}}]}, "must not start with //"),
        ({"routes": [{"request_headers": {"set": {"Content-Length": "1"}}}]}, "content-length"),
        ({"routes": [{"request_headers": {"set": {"X-Forwarded-For": "1.2.3.4"}}}]}, "x-forwarded-for"),
        ({"routes": [{"response_headers": {"remove": ["Transfer-Encoding"]}}]}, "transfer-encoding"),
        ({"routes": [{"request_headers": {"set": {"Bad Name": "1"}}}]}, "is not a header name"),
        ({"routes": [{"request_headers": {"set": {"X-A": "one\r\ntwo"}}}]}, "one line"),
        ({"routes": [{"match": {"host": "*.com"}}]}, "whole top-level domain"),
        ({"routes": [{"match": {"host": "a.example.com:80"}}]}, "no port"),
        ({"routes": [{"match": {"path_prefix": "v1"}}]}, "must start with /"),
        ({"routes": [{"match": {"path_regex": "(unclosed"}}]}, "not a regular expression"),
        ({"routes": [{"match": {"path_prefix": "/a", "path_regex": "/a"}}]}, "cannot both"),
        ({"routes": [{"match": {"methods": ["get"]}}]}, "in capitals"),
        ({"routes": [{"filters": ["no colon"]}]}, "is not module:function"),
        ({"routes": [{"name": "a"}, {"name": "a"}]}, "names an earlier route"),
        ({"routes": [{"strip_prefix": "/"}]}, "more than /"),
    ],
)
def test_bad_routes_and_pools_are_refused_with_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        config(**fields)
    assert message in str(caught.value)


def test_a_pool_takes_the_top_level_settings_it_does_not_set() -> None:
    cfg = config(
        request_timeout=7,
        max_retries=1,
        pools={"api": {"algorithm": "least_connections", "max_retries": 5, "backends": [{"host": HOST, "port": 1}]}},
    )
    modules = cfg.pool_configs()
    assert list(modules) == ["default", "api"]
    assert modules["api"].request_timeout == 7 and modules["api"].max_retries == 5
    assert modules["api"].algorithm.algorithm_type.value == "least_connections"
    assert modules["default"].max_retries == 1


def test_filters_that_cannot_be_imported_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        "routes:\n"
        "  - filters: ['route_filters:require_api_key', 'no_such_module_xyz:f']\n"
        "  - filters: ['route_filters:missing', 'route_filters:not_callable', 'route_filters:async_response']\n"
    )
    with pytest.raises(ConfigurationError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("routes[0].filters[1]: cannot import no_such_module_xyz")
    assert lines[1] == "routes[1].filters[0]: route_filters has no attribute missing"
    assert lines[2].startswith("routes[1].filters[1]: route_filters:not_callable is neither callable")
    assert "cannot await" in lines[3]


# -- through the proxy ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def routed(cfg: ServerConfig) -> AsyncIterator[tuple[ProxyServer, PoolModules, AccessRecords]]:
    """The proxy in front of ``cfg``'s pools, made as ``serve`` makes them."""

    def make(name: str, module_config: LoadBalancingModuleConfig) -> LoadBalancingModule:
        return LoadBalancingModule(module_config)

    logger = logging.getLogger(f"test.routes.access.{id(cfg)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    records = AccessRecords()
    logger.addHandler(records)
    pools = PoolModules(cfg, make)
    proxy = ProxyServer(pools.default, cfg, access_log=logger, pools=pools.modules)
    await pools.start(cfg)
    await proxy.start()
    try:
        yield proxy, pools, records
    finally:
        await proxy.close()
        await pools.shutdown()
        logger.removeHandler(records)


async def ask(proxy: ProxyServer, request: bytes) -> Response:
    from proxy_helpers import RawClient

    async with RawClient(proxy.port) as client:
        return await client.request(request)


def seen_headers(response: Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.json()["headers"]}


async def test_hosts_and_paths_reach_their_pools_with_their_rewrites() -> None:
    async with AioBackend("web") as web, AioBackend("api") as api:
        cfg = config(
            backends=[{"host": HOST, "port": web.port}],
            pools={"api": {"algorithm": "least_latency", "backends": [{"host": HOST, "port": api.port}]}},
            routes=[
                {
                    "name": "api-v1",
                    "match": {"host": "api.example.com", "path_prefix": "/v1/", "methods": ["GET", "POST"]},
                    "pool": "api",
                    "strip_prefix": "/v1",
                    "request_headers": {"set": {"X-Tenant": "a"}, "remove": ["X-Debug"]},
                    "response_headers": {
                        "set": {"Strict-Transport-Security": "max-age=63072000"},
                        "remove": ["Server"],
                    },
                },
                {"match": {"host": "*.example.com"}, "redirect": {"to": "https://www.example.com", "status": 301}},
            ],
        )
        async with routed(cfg) as (proxy, pools, records):
            answer = await ask(proxy, get("/v1/users?page=2", "X-Debug: 1", "X-Tenant: forged", host="api.example.com"))
            assert answer.status == 200
            body = answer.json()
            assert body["backend"] == "api" and body["path"] == "/users?page=2"
            headers = seen_headers(answer)
            assert headers["x-tenant"] == "a" and "x-debug" not in headers
            assert headers["x-forwarded-host"] == "api.example.com"
            assert answer.header("Strict-Transport-Security") == "max-age=63072000"
            assert answer.header("Server") is None

            # another method, another host, no route: the default pool, as the request came
            assert (await ask(proxy, get("/v1/users", method="DELETE", host="api.example.com"))).status == 301
            plain = await ask(proxy, get("/v1/users", host="other.test"))
            assert plain.json()["backend"] == "web" and plain.json()["path"] == "/v1/users"
            assert plain.header("Strict-Transport-Security") is None

            redirect = await ask(proxy, get("/a/b?c=1", host="shop.example.com"))
            assert redirect.status == 301
            assert redirect.header("Location") == "https://www.example.com/a/b?c=1"
            assert redirect.header("X-Request-ID")
            assert [r[0] for r in api.requests] == ["GET"] and len(web.requests) == 1  # the redirect proxied nothing
            assert pools["api"].backends[f"{HOST}:{api.port}"].total == 1
            statuses = [f.get("status") for f in records.fields]
            assert statuses.count(301) == 2


async def test_request_filters_answer_tag_and_choose_pools() -> None:
    async with AioBackend("main") as main, AioBackend("canary") as canary:
        cfg = config(
            backends=[{"host": HOST, "port": main.port}],
            pools={"canary": {"backends": [{"host": HOST, "port": canary.port}]}},
            routes=[
                {
                    "match": {"path_prefix": "/private/"},
                    "filters": ["route_filters:require_api_key", "route_filters:to_canary"],
                },
                {"name": "stamped", "match": {"path_prefix": "/stamp/"}, "filters": ["route_filters:stamp"]},
                {"match": {"path_prefix": "/slow/"}, "filters": ["route_filters:slow_lookup"]},
            ],
        )
        async with routed(cfg) as (proxy, _, _records):
            refused = await ask(proxy, get("/private/x"))
            assert refused.status == 401 and refused.body == b"missing or wrong API key\n"
            assert refused.header("WWW-Authenticate") == 'ApiKey realm="test"'
            assert refused.header("X-Request-ID") and not main.requests  # answered by the filter alone

            allowed = await ask(proxy, get("/private/x", "X-Api-Key: secret"))
            assert allowed.status == 200 and allowed.json()["backend"] == "main"
            headers = seen_headers(allowed)
            assert headers["x-authenticated"] == "yes" and "x-api-key" not in headers

            moved = await ask(proxy, get("/private/x", "X-Api-Key: secret", "X-Canary: 1"))
            assert moved.json()["backend"] == "canary"

            stamped = await ask(proxy, get("/stamp/y"))
            assert seen_headers(stamped)["x-stamp"] == "stamped"
            assert stamped.header("X-Stamped") == "200 default"

            looked = await ask(proxy, get("/slow/z"))
            assert seen_headers(looked)["x-looked-up"] == "/slow/z"


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("route_filters:broken", "RuntimeError"),
        ("route_filters:forges_framing", "Content-Length is written by the proxy"),
        ("route_filters:returns_junk", "not an Answer or None"),
        ("route_filters:to_nowhere", "not a pool"),
        ("route_filters:broken_response", "cannot read the answer"),
    ],
)
async def test_a_failing_filter_is_a_500_logged_and_counted_never_a_backend_failure(
    spec: str, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with AioBackend("main") as main:
        cfg = config(backends=[{"host": HOST, "port": main.port}], routes=[{"filters": [spec]}])
        async with routed(cfg) as (proxy, pools, _):
            with caplog.at_level(logging.ERROR):
                answer = await ask(proxy, get("/x"))
                again = await ask(proxy, get("/x"))  # the proxy goes on serving
            assert answer.status == again.status == 500
            assert answer.json()["request_id"] == answer.header("X-Request-ID")
            assert "filter" in answer.json()["error"]
            logged = [
                r
                for r in caplog.records
                if getattr(r, "event", None) == "filter_failed" or "filter_failed" in r.getMessage()
            ]
            assert logged and error in logged[0].getMessage()
            name = "(pool)" if spec.endswith("to_nowhere") else spec
            assert proxy.ctx.filter_errors[name] == 2
            backend = next(iter(pools.default.backends.values()))
            assert backend.breaker.failures == 0 and backend.health.state.value == "healthy"


async def test_reload_switches_routes_and_pools_at_once() -> None:
    async with AioBackend("one") as one, AioBackend("two") as two:
        old = config(backends=[{"host": HOST, "port": one.port}])
        new = config(
            backends=[{"host": HOST, "port": one.port}],
            pools={"two": {"backends": [{"host": HOST, "port": two.port}]}},
            routes=[{"match": {"path_prefix": "/two/"}, "pool": "two"}],
        )
        async with routed(old) as (proxy, pools, _):
            from load_balancing_module.server.reload import apply_config

            assert (await ask(proxy, get("/two/x"))).json()["backend"] == "one"
            await apply_config(pools, old, new, proxy.configure)
            assert (await ask(proxy, get("/two/x"))).json()["backend"] == "two"
            assert (await ask(proxy, get("/x"))).json()["backend"] == "one"
            await apply_config(pools, new, old, proxy.configure)  # the pool goes: its module is shut down
            assert "two" not in pools.modules and "two" not in proxy.ctx.pools
            assert (await ask(proxy, get("/two/x"))).json()["backend"] == "one"


async def test_each_pool_has_its_own_affinity_cookie() -> None:
    """A client that uses two sticky pools stays bound in each: the pools' cookies differ."""
    async with AioBackend("w1") as w1, AioBackend("w2") as w2, AioBackend("a1") as a1, AioBackend("a2") as a2:
        cfg = config(
            session_affinity=True,
            algorithm="round_robin",
            backends=[{"host": HOST, "port": w1.port}, {"host": HOST, "port": w2.port}],
            pools={"api": {"backends": [{"host": HOST, "port": a1.port}, {"host": HOST, "port": a2.port}]}},
            routes=[{"match": {"path_prefix": "/api/"}, "pool": "api"}],
        )
        async with routed(cfg) as (proxy, _, _records):
            first_web = await ask(proxy, get("/"))
            first_api = await ask(proxy, get("/api/x"))
            web_cookie = (first_web.header("Set-Cookie") or "").split(";")[0]
            api_cookie = (first_api.header("Set-Cookie") or "").split(";")[0]
            assert web_cookie.startswith("OMNIXAN_AFFINITY=")
            assert api_cookie.startswith("OMNIXAN_AFFINITY_api=")
            both = f"Cookie: {web_cookie}; {api_cookie}"
            for _ in range(4):  # round robin would alternate: the cookies keep each pool's backend
                web_again = await ask(proxy, get("/", both))
                api_again = await ask(proxy, get("/api/x", both))
                assert web_again.json()["backend"] == first_web.json()["backend"]
                assert api_again.json()["backend"] == first_api.json()["backend"]
                assert web_again.header("Set-Cookie") is None and api_again.header("Set-Cookie") is None


async def test_pool_views_of_one_store_keep_their_sessions_and_buckets_apart() -> None:
    from load_balancing_module import FakeClock
    from load_balancing_module.state.memory import MemoryStore
    from load_balancing_module.state.prefixed import PrefixedStore

    store = MemoryStore(FakeClock())
    api, web = PrefixedStore(store, "pool:api:"), PrefixedStore(store, "pool:web:")
    await api.bind_session("s", "api-1", 60)
    await web.bind_session("s", "web-1", 60)
    assert await api.get_session("s", 60) == "api-1"
    assert await web.get_session("s", 60) == "web-1"
    assert await store.get_session("s", 60) is None  # the default pool's own key space
    assert await api.session_count() == 2  # the store's count
    assert await api.take_token("1.2.3.4", 1.0, 1) == 0.0
    assert await api.take_token("1.2.3.4", 1.0, 1) > 0.0  # the api bucket is empty
    assert await web.take_token("1.2.3.4", 1.0, 1) == 0.0  # the web bucket is not
    assert await api.purge_expired() == 0  # the owner sweeps


def test_check_counts_pools_and_routes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from load_balancing_module.cli import check

    path = tmp_path / "lb.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\nbackends: [{host: 127.0.0.1, port: 9001}]\n"
        "pools: {api: {backends: [{host: 127.0.0.1, port: 9002}]}}\n"
        "routes: [{match: {path_prefix: /api/}, pool: api}, {redirect: {to: /}}]\n"
    )
    assert check(str(path)) == 0
    assert "1 backends, algorithm round_robin; 1 more pools, 2 routes" in capsys.readouterr().out


def test_the_segment_index_keeps_the_table_order() -> None:
    routes = table(
        {"name": "generic-first", "match": {"path_prefix": "/a", "methods": ["POST"]}, "pool": "p"},
        {"name": "svc", "match": {"path_prefix": "/svc/"}, "pool": "p"},
        {"name": "regex", "match": {"path_regex": "/svc/special"}, "pool": "p"},
        {"name": "svc-deep", "match": {"path_prefix": "/svc/special"}, "pool": "p"},
        {"name": "svc10", "match": {"path_prefix": "/svc10/"}, "pool": "p"},
        {"name": "any", "match": {"path_prefix": "/"}, "pool": "p"},
    )
    assert routes.match(info(b"/svc/special")).name == "svc"
    assert routes.match(info(b"/svc10/x")).name == "svc10"
    assert routes.match(info(b"/svc")).name == "any"  # "/svc/" needs the slash
    assert routes.match(info(b"/a/x", method=b"POST")).name == "generic-first"
    assert routes.match(info(b"/svc/x", method=b"POST")).name == "svc"
    assert routes.match(info(b"/other")).name == "any"
    late = table(
        {"name": "regex", "match": {"path_regex": "/svc/.*"}, "pool": "p"},
        {"name": "svc", "match": {"path_prefix": "/svc/"}, "pool": "p"},
    )
    assert late.match(info(b"/svc/x")).name == "regex"  # a route that fixes no segment, listed first, wins


async def test_each_pool_keeps_its_own_request_timeout_and_max_retries() -> None:
    """A pool's request_timeout and max_retries are the proxy's for requests to that pool."""

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.Response(text="late")

    async def busy(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text="busy")

    async with AioBackend("slow", slow) as late, AioBackend("b1", busy) as b1, AioBackend("b2", busy) as b2:
        cfg = config(
            request_timeout=30,
            max_retries=3,
            backends=[{"host": HOST, "port": b1.port}, {"host": HOST, "port": b2.port}],
            pools={
                "quick": {"request_timeout": 0.05, "backends": [{"host": HOST, "port": late.port}]},
                "once": {
                    "max_retries": 0,
                    "backends": [{"host": HOST, "port": b1.port}, {"host": HOST, "port": b2.port}],
                },
            },
            routes=[
                {"match": {"path_prefix": "/quick/"}, "pool": "quick"},
                {"match": {"path_prefix": "/once/"}, "pool": "once"},
            ],
        )
        async with routed(cfg) as (proxy, _, _):
            started = asyncio.get_running_loop().time()
            assert (await ask(proxy, get("/quick/x"))).status == 504
            assert asyncio.get_running_loop().time() - started < 1.5  # the pool's 0.05 s, not the top's 30 s

            assert (await ask(proxy, get("/once/x"))).status == 503
            assert len(b1.requests) + len(b2.requests) == 1  # max_retries 0: the 503 is not retried
            assert (await ask(proxy, get("/any"))).status == 503
            assert len(b1.requests) + len(b2.requests) == 3  # the top level retries it on the other backend
