"""The httpx integration: a real ``httpx.AsyncClient`` over ``LoadBalancedTransport`` against real
aiohttp backends on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from integration_helpers import URL, BrokenBody, backend, certificates, http_servers, in_flight, make_lb
from load_balancing_module import (
    BackendConfig,
    BackendUnavailableError,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    RouteResult,
)
from load_balancing_module.integrations.httpx import (
    LoadBalancedTransport,
    NoBackendError,
    RequestInfoError,
    to_backend,
)
from servers import HOST, TcpListener, closed_port


def client(lb: LoadBalancingModule, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=LoadBalancedTransport(lb, **kwargs))


async def test_requests_spread_over_the_backends_with_the_callers_url_and_host() -> None:
    async with http_servers(3) as servers:
        lb = await make_lb([s.port for s in servers])
        async with client(lb) as http:
            answers = [(await http.get(f"{URL}/?q=1")).text for _ in range(9)]
        assert sorted(answers) == ["b0"] * 3 + ["b1"] * 3 + ["b2"] * 3
        for server in servers:
            assert {(m, p, h["Host"]) for m, p, h in server.heads} == {("GET", "/?q=1", "api.test")}
        assert all(backend(lb, s.port).successful == 3 for s in servers)
        assert in_flight(lb) == 0


async def test_a_backend_killed_mid_run_fails_no_idempotent_request() -> None:
    async with http_servers(3) as servers:
        lb = await make_lb([s.port for s in servers])
        done = 0

        async def loop(http: httpx.AsyncClient) -> list[int]:
            nonlocal done
            statuses = []
            for _ in range(30):
                statuses.append((await http.get(f"{URL}/")).status_code)
                done += 1
            return statuses

        async def kill() -> None:
            while done < 20:
                await asyncio.sleep(0.001)
            await servers[0].stop()

        async with client(lb) as http:
            results = await asyncio.gather(loop(http), loop(http), loop(http), kill())
        assert [s for statuses in results[:3] for s in statuses] == [200] * 90
        assert backend(lb, servers[0].port).failed >= 1  # it was tried after it died, and retried
        assert in_flight(lb) == 0


async def test_a_post_is_retried_only_when_the_connection_was_refused() -> None:
    async with http_servers(1) as (live,):
        refused = closed_port()
        lb = await make_lb([refused, live.port])
        async with client(lb) as http:
            answers = [(await http.post(f"{URL}/", content=b"order")).text for _ in range(4)]
        assert answers == ["b0"] * 4  # round robin tries the refusing backend first each time, then the live one
        assert backend(lb, refused).failed == 4
        assert live.hits("/") == 4

        async with TcpListener() as hangs_up:  # accepts, then closes: the POST may have arrived
            lb = await make_lb([hangs_up.port, live.port])
            async with client(lb) as http:
                with pytest.raises(httpx.TransportError):
                    await http.post(f"{URL}/", content=b"order")
                assert hangs_up.accepted == 1 and live.hits("/") == 4  # not sent again
                assert (await http.get(f"{URL}/")).text == "b0"  # a GET, on the other hand, is retried
                assert (await http.get(f"{URL}/")).text == "b0"
            assert hangs_up.accepted == 2


async def test_a_body_that_cannot_be_replayed_is_not_sent_twice() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"part one;"
        yield b"part two"

    async with http_servers(1) as (live,), TcpListener() as hangs_up:
        lb = await make_lb([hangs_up.port, live.port])
        async with client(lb) as http:
            with pytest.raises(httpx.TransportError):
                await http.put(f"{URL}/", content=body())  # idempotent, but its body is gone
            assert live.hits("/") == 0
            for _ in range(2):  # the second is routed to the hang-up first, then retried
                assert (await http.put(f"{URL}/", content=b"bytes replay")).text == "b0"
        assert hangs_up.accepted == 2 and live.hits("/") == 2


async def test_a_404_is_an_answer_not_a_failure() -> None:
    async with http_servers(2) as servers:
        lb = await make_lb([s.port for s in servers])
        async with client(lb) as http:
            response = await http.get(f"{URL}/missing")
        assert response.status_code == 404
        assert sum(s.hits("/missing") for s in servers) == 1  # not retried
        assert all(backend(lb, s.port).failed == 0 for s in servers)


async def test_a_503_is_retried_on_another_backend_and_counted_against_the_first() -> None:
    async with http_servers(2) as (unavailable, healthy):
        unavailable.answer("/", 503, body=b"busy")
        lb = await make_lb([unavailable.port, healthy.port])
        async with client(lb) as http:
            answers = [(await http.get(f"{URL}/")).text for _ in range(4)]
        assert answers == ["b1"] * 4  # round robin: the 503 first each time, then the other
        assert backend(lb, unavailable.port).failed == unavailable.hits("/") == 4
        assert backend(lb, healthy.port).failed == 0
        assert in_flight(lb) == 0  # the replaced 503s were closed


async def test_a_500_is_kept_unless_retry_on_names_it() -> None:
    async with http_servers(2) as (broken, healthy):
        broken.answer("/", 500, body=b"bug")
        lb = await make_lb([broken.port, healthy.port])
        async with client(lb) as http:
            assert [(await http.get(f"{URL}/")).status_code for _ in range(2)] == [500, 200]
        assert backend(lb, broken.port).failed == 1  # a failure, but not worth another backend
        async with client(lb, retry_on=[500]) as http:
            assert [(await http.get(f"{URL}/")).status_code for _ in range(2)] == [200, 200]
        assert backend(lb, broken.port).failed == broken.hits("/") == 3


async def test_is_failure_decides_what_counts_against_a_backend() -> None:
    async with http_servers(2) as servers:
        for server in servers:
            server.answer("/", 429, body=b"slow down")
        lb = await make_lb([s.port for s in servers])
        async with client(lb, is_failure=lambda outcome: outcome.status == 429) as http:
            assert (await http.get(f"{URL}/")).status_code == 429
        assert sum(backend(lb, s.port).failed for s in servers) == 1


async def test_a_value_error_in_user_code_around_an_httpx_request_is_not_retried() -> None:
    async with http_servers(3) as servers:
        lb = await make_lb([s.port for s in servers])
        async with httpx.AsyncClient() as http:

            async def parse(route: RouteResult) -> str:
                response = await http.get(f"http://{route.host}:{route.port}/")
                raise ValueError(f"cannot parse {response.text!r}")

            with pytest.raises(ValueError, match="cannot parse"):
                await lb.call(Request(), parse)
        assert sum(s.hits("/") for s in servers) == 1
        assert sum(backend(lb, s.port).failed for s in servers) == 0


async def test_the_slot_is_held_while_the_body_streams_and_released_when_it_is_closed() -> None:
    async with http_servers(1) as (server,):
        lb = await make_lb([server.port])
        b = backend(lb, server.port)
        async with client(lb) as http:
            async with http.stream("GET", f"{URL}/stream") as response:
                chunks = response.aiter_bytes()
                assert await anext(chunks) == b"first chunk;"
                assert b.in_flight == 1 and b.successful == 0
                server.release.set()  # the backend ends the body
                assert [chunk async for chunk in chunks] == []
            assert b.in_flight == 0 and b.successful == 1

            server.release.clear()
            async with http.stream("GET", f"{URL}/stream") as response:
                assert b.in_flight == 1
            # Closed without reading: the backend is not blamed.
            assert b.in_flight == 0 and b.successful == 2 and b.failed == 0


async def test_a_body_broken_while_it_streams_fails_the_backend() -> None:
    async with BrokenBody() as broken:
        lb = await make_lb([broken.port])
        async with client(lb) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(f"{URL}/")
        b = backend(lb, broken.port)
        assert broken.served == 1  # the head had come: not retried, the body broke in the caller's hands
        assert b.failed == 1 and b.in_flight == 0


async def test_sticky_sessions_follow_x_session_id() -> None:
    async with http_servers(3) as servers:
        lb = await make_lb([s.port for s in servers], session_affinity=True)
        async with client(lb) as http:
            for session in ("alice", "bob", "carol"):
                answers = {(await http.get(f"{URL}/", headers={"X-Session-ID": session})).text for _ in range(4)}
                assert len(answers) == 1
            assert sorted(s.hits("/") for s in servers) == [4, 4, 4]


async def test_the_extension_wins_over_the_headers() -> None:
    async with http_servers(3) as servers:
        lb = await make_lb([s.port for s in servers], session_affinity=True)
        async with client(lb) as http:
            pinned = {"omnixan": {"session_id": "from-extension"}}
            first = (await http.get(f"{URL}/", extensions=pinned)).text
            for session in ("x", "y", "z"):
                headers = {"X-Session-ID": session}
                assert (await http.get(f"{URL}/", headers=headers, extensions=pinned)).text == first
            request = {"omnixan": Request(session_id="from-extension")}
            assert (await http.get(f"{URL}/", extensions=request)).text == first


@pytest.mark.parametrize(
    ("headers", "extensions", "message"),
    [
        ({"X-Workload-Type": "quantum_magic"}, {}, "X-Workload-Type 'quantum_magic' is not one of: classical"),
        ({"X-Session-ID": "has space"}, {}, "X-Session-ID 'has space' is not 1 to 512 visible ASCII"),
        ({}, {"omnixan": {"client_ip": "not-an-ip"}}, "'omnixan' extension is not a valid Request: client_ip"),
        ({}, {"omnixan": {"colour": "red"}}, "colour: Extra inputs are not permitted"),
        ({}, {"omnixan": "alice"}, "must be a Request or a dict of its fields, not str"),
    ],
)
async def test_bad_routing_information_is_refused_before_any_backend_is_picked(
    headers: dict[str, str], extensions: dict[str, Any], message: str
) -> None:
    async with http_servers(1) as (server,):
        lb = await make_lb([server.port])
        async with client(lb) as http:
            with pytest.raises(RequestInfoError, match=message):
                await http.get(f"{URL}/", headers=headers, extensions=extensions)
        assert lb.total_requests == 0 and server.hits("/") == 0


async def test_a_request_httpx_refuses_to_send_blames_no_backend() -> None:
    async with http_servers(2) as servers:
        lb = await make_lb([s.port for s in servers])
        async with client(lb) as http:
            with pytest.raises(httpx.LocalProtocolError):
                await http.get(f"{URL}/", headers={"X-Note": " padded "})  # h11 refuses the value
        assert lb.total_requests == 1  # one try: every backend would have been sent the same
        assert all(backend(lb, s.port).failed == 0 for s in servers)


async def test_workload_types_are_read_in_any_case() -> None:
    async with http_servers(2) as (classical, quantum):
        lb = await make_lb([classical.port], algorithm="quantum_aware")
        await lb.add_backend(BackendConfig(host=HOST, port=quantum.port, quantum_capable=True))
        async with client(lb) as http:
            for value in ("quantum_simulation", "QUANTUM_ML", "Hybrid"):
                assert (await http.get(f"{URL}/", headers={"X-Workload-Type": value})).text == "b1"


async def test_no_backend_at_all_is_an_httpx_connect_error() -> None:
    lb = await make_lb([])
    async with client(lb) as http:
        with pytest.raises(NoBackendError, match="no backend can take the request") as caught:
            await http.get(f"{URL}/")
    assert isinstance(caught.value, httpx.ConnectError)
    assert isinstance(caught.value.__cause__, BackendUnavailableError)


async def test_when_every_try_fails_the_last_httpx_error_is_raised() -> None:
    ports = [closed_port(), closed_port()]
    lb = await make_lb(ports)
    async with client(lb) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get(f"{URL}/")
    assert not isinstance(caught.value, NoBackendError)
    assert caught.value.request.url == httpx.URL(f"{URL}/")
    if sys.version_info >= (3, 11):
        assert any("2 tries failed" in note for note in caught.value.__notes__)
    assert all(backend(lb, port).failed == 1 for port in ports)


async def test_a_try_past_request_timeout_is_an_httpx_timeout() -> None:
    async with http_servers(1) as (server,):
        server.answer("/slow", delay=30.0)
        lb = await make_lb([server.port], request_timeout=0.05)
        async with client(lb) as http:
            with pytest.raises(httpx.TimeoutException, match=r"did not answer within 0\.05 s"):
                await http.get(f"{URL}/slow")
        assert backend(lb, server.port).failed == 1


async def test_https_checks_the_certificate_against_the_callers_name() -> None:
    context, ca = certificates("api.test")
    async with http_servers(2, ssl_context=context) as servers:
        lb = await make_lb([s.port for s in servers])
        trusting = ssl.create_default_context()  # the client trusts the test's CA only
        ca.configure_trust(trusting)
        inner = httpx.AsyncHTTPTransport(verify=trusting)
        async with httpx.AsyncClient(transport=LoadBalancedTransport(lb, inner)) as http:
            assert sorted([(await http.get("https://api.test/")).text for _ in range(2)]) == ["b0", "b1"]
        assert servers[0].heads[0][2]["Host"] == "api.test"
        async with httpx.AsyncClient(verify=trusting) as direct:  # the certificate is not the address's
            with pytest.raises(httpx.ConnectError, match="certificate"):
                await direct.get(f"https://127.0.0.1:{servers[0].port}/")


async def test_the_backend_url_keeps_scheme_path_query_and_host() -> None:
    lb = LoadBalancingModule(LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False)))
    await lb.add_backend(BackendConfig(host="::1", port=8443))
    route = await lb.route_request(Request())
    request = httpx.Request("GET", "https://api.test:9000/a/b?c=d", extensions={"omnixan": {}, "timeout": {}})
    sent = to_backend(request, route, None)
    assert str(sent.url) == "https://[::1]:8443/a/b?c=d"
    assert sent.headers["Host"] == "api.test:9000"
    assert sent.extensions == {"timeout": {}, "sni_hostname": "api.test"}
    lb.abandon_request(route)


class Recording(httpx.AsyncBaseTransport):
    """An inner transport that answers 503 then 200, and records what was closed."""

    def __init__(self) -> None:
        self.closed_bodies: list[int] = []
        self.closed = False
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        number = self.sent
        owner = self

        class Body(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                yield b"body"

            async def aclose(self) -> None:
                owner.closed_bodies.append(number)

        return httpx.Response(503 if number == 1 else 200, stream=Body())

    async def aclose(self) -> None:
        self.closed = True


async def test_a_replaced_answer_is_closed_and_the_inner_transport_closes_with_the_client() -> None:
    lb = await make_lb([closed_port(), closed_port()])  # never dialled: the inner transport answers
    inner = Recording()
    async with httpx.AsyncClient(transport=LoadBalancedTransport(lb, inner)) as http:
        async with http.stream("GET", f"{URL}/") as response:
            assert response.status_code == 200
            assert inner.closed_bodies == [1]  # the 503, when its retry was routed
        assert inner.closed_bodies == [1, 2]
    assert inner.closed
