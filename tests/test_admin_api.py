"""The admin API on a live server: auth, backends, drain under load, algorithm, execute, bad input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from admin_helpers import TOKEN_ENV, SlowBackend, Traffic, live_server, until
from load_balancing_module import ConfigurationError
from load_balancing_module.server.app import Server
from load_balancing_module.server.config import load_config

Fixture = tuple[Path, pytest.MonkeyPatch]
PUBLIC_FILES = ("/dashboard/dashboard.js", "/dashboard/dashboard.css")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fixture:
    return tmp_path, monkeypatch


async def status_of(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def test_token_is_required_except_for_health_metrics_openapi_and_dashboard(env: Fixture) -> None:
    async with live_server(*env, [SlowBackend("a")]) as live:
        guarded = [
            ("GET", "/backends"),
            ("GET", "/distribution"),
            ("PUT", "/algorithm"),
            ("POST", "/execute"),
            ("POST", "/backends"),
            ("GET", "/backends/x"),
            ("DELETE", "/backends/x"),
            ("POST", "/backends/x/drain"),
            ("GET", "/algorithm"),
            ("GET", "/pools"),
            ("GET", "/routes"),
            ("GET", "/backends?pool=nope"),  # 401 first: no pool name is told without the token
            ("POST", "/backends?pool=api"),
        ]
        for method, path in guarded:
            for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}):
                if method in ("POST", "PUT"):  # the Content-Type a change needs first (415 otherwise)
                    headers = {**(headers or {}), "Content-Type": "application/json"}
                status, got, body = await status_of(method, live.admin + path, headers)
                assert status == 401, (method, path, headers)
                assert got["WWW-Authenticate"].startswith("Bearer")
                assert b'"field": "Authorization"' in body
        for path in (
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/",
            "/dashboard/dashboard.js",
            "/dashboard/dashboard.css",
        ):
            status, got, _ = await status_of("GET", live.admin + path)
            assert status == 200, path
        assert (await status_of("GET", live.admin + "/dashboard/secret.txt"))[0] == 404
        status, _, body = await status_of("GET", live.admin + "/", {"Authorization": "Bearer wrong"})
        assert status == 200 and b"<title>OMNIXAN LB</title>" in body
        assert (await live.api("GET", "/backends"))[0] == 200  # the right token


async def test_non_loopback_admin_without_token_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = tmp_path / "lb.yaml"
    path.write_text(f'admin: {{listen: "0.0.0.0:0", token_env: {TOKEN_ENV}}}\nbackends: []\n')
    with pytest.raises(ConfigurationError, match=r"admin\.listen"):
        Server(path, load_config(path))


async def test_backends_added_and_removed_through_the_api_take_effect_at_once(env: Fixture) -> None:
    a, b = SlowBackend("a"), SlowBackend("b")
    await b.start()
    try:
        async with live_server(*env, [a]) as live:
            status, listed = await live.api("GET", "/backends")
            assert status == 200 and [(x["backend_id"], x["host"], x["port"]) for x in listed] == [
                (live.backend_id(a), "127.0.0.1", a.port)
            ]
            async with live.session.post(
                live.admin + "/backends", json={"host": "127.0.0.1", "port": b.port, "weight": 3}
            ) as response:
                assert response.status == 201
                added = await response.json()
                assert response.headers["Location"] == f"/backends/127.0.0.1%3A{b.port}"
            assert added["backend_id"] == f"127.0.0.1:{b.port}" and added["weight"] == 3
            assert added["health_status"] == "healthy" and added["draining"] is False
            status, one = await live.api("GET", f"/backends/127.0.0.1%3A{b.port}")
            assert status == 200 and one["port"] == b.port
            _, distribution = await live.api("GET", "/distribution")
            assert set(distribution["backends"]) == {live.backend_id(a), added["backend_id"]}
            async with aiohttp.ClientSession() as client:
                for _ in range(8):
                    async with client.get(live.proxy + "/") as response:
                        assert response.status == 200
            assert a.hits > 0 and b.hits > 0  # the new backend took traffic at once
            status, removed = await live.api("DELETE", f"/backends/{added['backend_id']}")
            assert status == 200 and removed == {"backend_id": added["backend_id"], "removed": True, "in_flight": 0}
            hits = b.hits
            async with aiohttp.ClientSession() as client:
                for _ in range(6):
                    async with client.get(live.proxy + "/") as response:
                        assert response.status == 200
            assert b.hits == hits
            _, distribution = await live.api("GET", "/distribution")
            assert set(distribution["backends"]) == {live.backend_id(a)}
            for method in ("GET", "DELETE"):
                status, error = await live.api(method, f"/backends/{added['backend_id']}")
                assert status == 404 and error["field"] == "backend_id" and added["backend_id"] in error["error"]
    finally:
        await b.stop()


async def test_bad_input_names_the_field_and_changes_nothing(env: Fixture) -> None:
    async with live_server(*env, [SlowBackend("a")]) as live:
        before = await live.api("GET", "/distribution")
        async with live.session.post(
            live.admin + "/backends", data=b"{not json", headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400
            assert (await response.json())["field"] == "body"
        cases: list[tuple[str, str, object, str]] = [
            ("POST", "/backends", {"host": "127.0.0.1", "port": 70000}, "port"),
            ("POST", "/backends", {"host": "127.0.0.1"}, "port"),
            ("POST", "/backends", {"host": "a b", "port": 80}, "host"),
            ("POST", "/backends", {"host": "h", "port": 80, "colour": "red"}, "colour"),
            ("POST", "/backends", {"host": "h", "port": 80, "weight": True}, "weight"),
            ("POST", "/backends", [1, 2], "body"),
            ("PUT", "/algorithm", {"algorithm_type": "fastest"}, "algorithm_type"),
            ("PUT", "/algorithm", {}, "algorithm_type"),
            ("PUT", "/algorithm", {"algorithm_type": "ip_hash", "config": {"points": -4}}, "config"),
            ("POST", f"/backends/{live.backend_id(live.backends[0])}/drain", {"timeout": -1}, "timeout"),
            ("POST", f"/backends/{live.backend_id(live.backends[0])}/drain", {"wait": 1}, "wait"),
            ("POST", "/execute", "remove_backend", "body"),
        ]
        for method, path, body, field in cases:
            status, error = await live.api(method, path, body)
            assert status == 422, (path, body, status, error)
            assert error["field"] == field and error["error"].startswith(field), (body, error)
        status, error = await live.api("PUT", "/algorithm", {"algorithm_type": "ip_hash", "config": {"points": -4}})
        assert "points" in error["error"]
        after = await live.api("GET", "/distribution")
        assert after[1]["algorithm"] == before[1]["algorithm"] == "round_robin"
        assert after[1]["backends"].keys() == before[1]["backends"].keys()
        assert not any(b["draining"] for b in after[1]["backends"].values())


async def test_algorithm_switch_and_execute(env: Fixture) -> None:
    async with live_server(*env, [SlowBackend("a"), SlowBackend("b")]) as live:
        status, algorithm = await live.api("GET", "/algorithm")
        assert status == 200 and algorithm["algorithm"] == "round_robin" and "ip_hash" in algorithm["available"]
        status, switched = await live.api(
            "PUT", "/algorithm", {"algorithm_type": "least_connections", "config": {"choice_count": 2}}
        )
        assert status == 200 and switched["algorithm"] == "least_connections"
        assert switched["config"] == {"choice_count": 2}
        assert (await live.api("GET", "/distribution"))[1]["algorithm"] == "least_connections"
        assert live.server.lb.router.kind.value == "least_connections"  # the data plane uses it now

        status, result = await live.api("POST", "/execute", {"operation": "get_load_distribution"})
        assert status == 200 and result["status"] == "success"
        assert result["result"]["algorithm"] == "least_connections"
        status, result = await live.api(
            "POST", "/execute", {"operation": "add_backend", "backend": {"host": "127.0.0.1", "port": 9}}
        )
        assert status == 200 and result["result"] == {"backend_id": "127.0.0.1:9"}
        assert "127.0.0.1:9" in (await live.api("GET", "/distribution"))[1]["backends"]
        status, result = await live.api("POST", "/execute", {"operation": "remove_backend", "backend_id": "nope"})
        assert status == 404 and result["status"] == "error" and result["error_type"] == "BackendNotFoundError"
        status, result = await live.api("POST", "/execute", {"operation": "fly"})
        assert status == 422 and result["status"] == "error" and "unknown operation" in result["error"]
        status, result = await live.api("POST", "/execute", {"operation": "health_check"})
        assert status == 422 and "backend_id" in result["error"]


async def test_drain_under_load_loses_no_request(env: Fixture) -> None:
    """Drain a backend while clients keep sending through the proxy: every request gets 200."""
    slow = SlowBackend("slow", delay=0.05)  # its requests are surely in flight when the drain starts
    async with live_server(*env, [SlowBackend("a", delay=0.005), slow, SlowBackend("c", delay=0.005)]) as live:
        slow_id = live.backend_id(slow)
        async with Traffic(live.proxy, clients=8) as traffic:
            await until(
                lambda: live.server.lb.backends[slow_id].in_flight > 0 and traffic.answered > 30,
                what="load on every backend",
            )
            status, drained = await live.api("POST", f"/backends/{slow_id}/drain", {"timeout": 10})
            hits_at_drain = slow.hits
            answered_at_drain = traffic.answered
            await until(lambda: traffic.answered > answered_at_drain + 50, what="traffic after the drain")
        assert status == 200
        assert drained["backend_id"] == slow_id and drained["in_flight"] >= 1
        assert drained["completed"] is True and drained["in_flight_left"] == 0
        assert drained["finished_at"] >= drained["started_at"] and 0 < drained["waited_seconds"] < 10
        assert traffic.failed == 0, (traffic.statuses, traffic.errors[:3])
        assert traffic.statuses[200] == traffic.answered > 80
        assert slow.hits == hits_at_drain  # nothing reached it after the drain
        _, listed = await live.api("GET", "/backends")
        assert slow_id not in {b["backend_id"] for b in listed}
        assert (await live.api("GET", f"/backends/{slow_id}/drain".replace("/drain", "")))[0] == 404


async def test_a_second_drain_request_shares_the_first(env: Fixture) -> None:
    slow = SlowBackend("slow", delay=0.2)
    async with live_server(*env, [SlowBackend("a"), slow]) as live:
        slow_id = live.backend_id(slow)
        async with aiohttp.ClientSession() as client:

            async def one() -> int:
                async with client.get(live.proxy + "/") as response:
                    return response.status

            load = [asyncio.create_task(one()) for _ in range(4)]
            await until(lambda: live.server.lb.backends[slow_id].in_flight > 0, what="a request on the slow backend")
            path = f"/backends/{slow_id}/drain"
            first, second = await asyncio.gather(live.api("POST", path), live.api("POST", path, {"timeout": 5}))
            assert first == second and first[0] == 200 and first[1]["completed"]
            assert await asyncio.gather(*load) == [200] * 4
