"""``retry_on`` and ``failure_statuses``: which answers the proxy retries elsewhere, and which
count against a backend. Real backends and a real proxy on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from load_balancing_module import CircuitBreakerConfig, ConfigurationError
from load_balancing_module.cli import main
from load_balancing_module.enums import CircuitState
from load_balancing_module.server.config import ServerConfig, load_config
from proxy_helpers import HOST, AioBackend, RawBackend, get, server_config, start_proxy
from servers import closed_port

POST = b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"


def answering(status: int) -> AioBackend:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, text=f"from {status}")

    return AioBackend(str(status), handler)


async def test_a_listed_status_is_retried_on_another_backend_and_counts_against_the_first() -> None:
    async with (
        answering(500) as failing,
        AioBackend("ok") as ok,
        start_proxy([failing.port, ok.port], retry_on={"statuses": [500]}) as proxy,
        proxy.client() as client,
    ):
        response = await client.request(get())  # round robin tries the 500 first
        assert response.status == 200 and response.json()["backend"] == "ok"
        first = proxy.lb.backends[proxy.backend_ids[0]]
        assert len(failing.requests) == 1 and first.failed == 1 and first.successful == 0
        assert proxy.lb.counters["retries"] == 1  # omnixan_lb_retries_total counts it
        assert proxy.access.fields[-1]["attempts"] == 2


async def test_an_unlisted_status_is_passed_through() -> None:
    # The default list is 502, 503, 504: a 500 goes to the client as the backend sent it.
    async with (
        answering(500) as failing,
        AioBackend("ok") as ok,
        start_proxy([failing.port, ok.port]) as proxy,
        proxy.client() as client,
    ):
        response = await client.request(get())
        assert response.status == 500 and response.body == b"from 500"
        assert ok.requests == [] and proxy.lb.counters["retries"] == 0
        assert proxy.lb.backends[proxy.backend_ids[0]].failed == 1  # still the backend's failure (5xx)


async def test_no_status_is_retried_with_an_empty_list() -> None:
    async with (
        answering(503) as busy,
        AioBackend("ok") as ok,
        start_proxy([busy.port, ok.port], retry_on={"statuses": []}) as proxy,
        proxy.client() as client,
    ):
        response = await client.request(get())
        assert response.status == 503 and response.body == b"from 503"
        assert ok.requests == [] and len(busy.requests) == 1
        assert proxy.lb.backends[proxy.backend_ids[0]].failed == 1


async def test_a_post_answered_with_a_listed_status_is_not_retried() -> None:
    async with (
        answering(503) as busy,
        AioBackend("ok") as ok,
        start_proxy([busy.port, ok.port], retry_on={"statuses": [503]}) as proxy,
        proxy.client() as client,
    ):
        response = await client.request(POST)  # the backend had it: it may have acted on it
        assert response.status == 503 and response.body == b"from 503"
        assert ok.requests == [] and busy.requests == [("POST", "/p")]
        assert proxy.lb.backends[proxy.backend_ids[0]].failed == 1  # the same outcome as for a GET
        assert proxy.lb.counters["retries"] == 0


async def test_a_dropped_response_closes_its_connection() -> None:
    # The backend keeps its connections alive: the proxy must not reuse one whose response it left unread.
    busy = RawBackend(reply=b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
    async with (
        busy,
        AioBackend("ok") as ok,
        start_proxy([busy.port, ok.port]) as proxy,
        proxy.client() as client,
    ):
        for _ in range(3):
            response = await client.request(get())
            assert response.status == 200 and response.json()["backend"] == "ok"
        assert busy.connections == 3 and len(ok.requests) == 3


async def test_a_retried_status_outside_failure_statuses_is_no_failure() -> None:
    async with (
        answering(429) as limited,
        AioBackend("ok") as ok,
        start_proxy([limited.port, ok.port], retry_on={"statuses": ["4xx"]}) as proxy,
        proxy.client() as client,
    ):
        response = await client.request(get())
        assert response.status == 200 and response.json()["backend"] == "ok"
        first = proxy.lb.backends[proxy.backend_ids[0]]
        assert first.failed == 0 and first.successful == 1  # it answered; the operator wants another's answer


async def test_failure_statuses_decide_what_the_breaker_hears() -> None:
    breaker = CircuitBreakerConfig(failure_threshold=1, timeout=60)
    async with (
        answering(500) as failing,
        start_proxy([failing.port], circuit_breaker=breaker, failure_statuses=[503]) as proxy,
        proxy.client() as client,
    ):
        for _ in range(3):  # a 500 is not a failure here: the circuit stays closed
            assert (await client.request(get())).status == 500
        backend = proxy.lb.backends[proxy.backend_ids[0]]
        assert backend.failed == 0 and backend.successful == 3 and backend.breaker.state is CircuitState.CLOSED
        assert len(failing.requests) == 3


async def test_a_listed_4xx_opens_the_circuit() -> None:
    breaker = CircuitBreakerConfig(failure_threshold=1, timeout=60)
    async with (
        answering(404) as missing,
        start_proxy([missing.port], circuit_breaker=breaker, failure_statuses=["5xx", 404]) as proxy,
        proxy.client() as client,
    ):
        assert (await client.request(get())).status == 404
        assert (await client.request(get())).status == 503  # the proxy's: the circuit is open
        assert len(missing.requests) == 1


async def test_connect_failures_are_not_retried_when_switched_off() -> None:
    async with (
        AioBackend("ok") as ok,
        start_proxy([closed_port(), ok.port], retry_on={"connect_failure": False}) as proxy,
        proxy.client() as client,
    ):
        response = await client.request(get())  # round robin tries the closed port first
        assert response.status == 502 and "connecting to backend" in response.json()["error"]
        assert ok.requests == [] and proxy.lb.backends[proxy.backend_ids[0]].failed == 1


class Resetter(RawBackend):
    """Reads a request head, then resets the connection without an answer."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.received += await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()


JUNK = {
    "unparsable": b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    "ambiguous": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
}


@pytest.mark.parametrize(
    ("key", "backend"), [("empty_response", "reset"), ("junk_response", "unparsable"), ("junk_response", "ambiguous")]
)
async def test_empty_and_junk_responses_are_retried_unless_switched_off(key: str, backend: str) -> None:
    bad = Resetter() if backend == "reset" else RawBackend(reply=JUNK[backend])
    other = "junk_response" if key == "empty_response" else "empty_response"
    async with bad, AioBackend("ok") as ok:
        async with start_proxy([bad.port, ok.port], retry_on={other: False}) as proxy, proxy.client() as client:
            assert (await client.request(get())).json()["backend"] == "ok"  # the other switch changes nothing
        async with start_proxy([bad.port, ok.port], retry_on={key: False}) as proxy, proxy.client() as client:
            response = await client.request(get())
            assert response.status == 502 and proxy.lb.backends[proxy.backend_ids[0]].failed == 1
        assert len(ok.requests) == 1


async def test_a_pool_sets_its_own_retry_on_and_failure_statuses() -> None:
    async with answering(503) as busy, AioBackend("ok") as ok:
        pool_backends = [{"host": HOST, "port": busy.port}, {"host": HOST, "port": ok.port}]
        config = server_config(
            failure_statuses=[500],  # the top level's: the default pool's
            pools={"api": {"backends": pool_backends, "retry_on": {"statuses": []}, "failure_statuses": ["5xx"]}},
            routes=[{"match": {"path_prefix": "/api/"}, "pool": "api"}],
        )
        async with start_proxy([busy.port, ok.port], config=config) as proxy, proxy.client() as client:
            for spec in pool_backends:
                await proxy.pools.modules["api"].add_backend(spec)
            default = await client.request(get("/"))
            assert default.status == 200 and default.json()["backend"] == "ok"  # the top level's retry_on
            assert proxy.lb.backends[proxy.backend_ids[0]].failed == 0  # 503 is not in the top level's list
            api = await client.request(get("/api/x"))
            assert api.status == 503 and api.body == b"from 503"  # the pool retries on no status
            busy_in_api = proxy.pools.modules["api"].backends[f"{HOST}:{busy.port}"]
            assert busy_in_api.failed == 1  # and counts every 5xx


async def test_a_reload_applies_retry_on_to_new_requests() -> None:
    async with (
        answering(503) as busy,
        AioBackend("ok") as ok,
        start_proxy([busy.port, ok.port], retry_on={"statuses": []}) as proxy,
        proxy.client() as client,
    ):
        assert (await client.request(get())).status == 503
        proxy.proxy.configure(server_config(retry_on={"statuses": [503]}))
        for _ in range(2):
            assert (await client.request(get())).json()["backend"] == "ok"


# -- the config -------------------------------------------------------------------------------------


def test_defaults_keep_the_proxys_behaviour() -> None:
    config = ServerConfig()
    assert config.failure_statuses == ["5xx"]
    assert config.retry_on.statuses == [502, 503, 504]
    assert config.retry_on.connect_failure and config.retry_on.empty_response and config.retry_on.junk_response
    retry_on, failures = config.pool_outcomes()["default"]
    assert failures == frozenset(range(500, 600)) and retry_on.status_set() == {502, 503, 504}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("retry_on: {statuses: [200]}", "retry_on.statuses[0]: 200 is not an error status"),
        ("retry_on: {statuses: [503, 5xy]}", "retry_on.statuses[1]: '5xy' is not a status"),
        ("retry_on: {statuses: [true]}", "retry_on.statuses[0]: True is not a status"),
        ("retry_on: {statuses: 503}", "retry_on.statuses: Input should be a valid list"),
        ("retry_on: {conect_failure: true}", "retry_on.conect_failure: unknown key"),
        ("retry_on: {timeout: true}", "retry_on: timeout: not supported"),
        ("retry_on: [503]", "retry_on: Input should be a valid dictionary"),
        ("failure_statuses: [600]", "failure_statuses[0]: 600 is not an HTTP status (100..599)"),
        ("failure_statuses: [99]", "failure_statuses[0]: 99 is not an HTTP status (100..599)"),
        ("pools: {api: {retry_on: {statuses: [2xx]}}}", "pools.api.retry_on.statuses[0]: 2xx is not an error status"),
        ("pools: {api: {failure_statuses: [x]}}", "pools.api.failure_statuses[0]: 'x' is not a status"),
    ],
)
def test_bad_values_are_refused_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigurationError) as caught:
        load_config(path, {})
    assert message in str(caught.value)


def test_statuses_take_numbers_digits_and_classes(tmp_path: Path) -> None:
    path = tmp_path / "lb.toml"
    path.write_text('failure_statuses = ["${CODE}", "4XX", 599]\n[retry_on]\nstatuses = [" 503 ", "5xx"]\n')
    config = load_config(path, {"CODE": "502"})
    assert config.failure_statuses == [502, "4xx", 599]
    retry_on, failures = config.pool_outcomes()["default"]
    assert failures == {502, 599, *range(400, 500)} and retry_on.status_set() == set(range(500, 600))


def test_check_accepts_and_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "backends: [{host: 127.0.0.1, port: 9001}]\n"
        "retry_on: {statuses: [502, 503, 504, 429], connect_failure: true, empty_response: false}\n"
        "failure_statuses: [5xx, 429]\n"
        "pools: {api: {backends: [{host: 127.0.0.1, port: 9002}], retry_on: {statuses: []}}}\n"
    )
    assert main(["check", "--config", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("retry_on: {statuses: [302]}\nfailure_statuses: [1000]\n")
    assert main(["check", "--config", str(bad)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "retry_on.statuses[0]: 302 is not an error status: only 4xx and 5xx answers can be retried",
        "failure_statuses[0]: 1000 is not an HTTP status (100..599)",
    ]
