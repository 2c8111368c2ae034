"""The aiohttp integration: real aiohttp sessions against real aiohttp backends on 127.0.0.1, through
the client middleware and through the fallback for aiohttp without middlewares (forced here: the
installed aiohttp has them)."""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from integration_helpers import URL, BrokenBody, backend, certificates, http_servers, in_flight, make_lb
from load_balancing_module import BackendUnavailableError, LoadBalancingModule, Request, RouteResult
from load_balancing_module.integrations import aiohttp as integration
from load_balancing_module.integrations.aiohttp import (
    HeldResponse,
    LoadBalancedMiddleware,
    LoadBalancedSession,
    NoBackendError,
    RequestInfoError,
    load_balanced_session,
    route_as,
)
from servers import TcpListener, closed_port

Session = aiohttp.ClientSession | LoadBalancedSession
MakeSession = Callable[..., Session]


@pytest.fixture(params=["middleware", "fallback"])
def session(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeSession]:
    """``load_balanced_session`` as this aiohttp builds it, and as an aiohttp without client
    middlewares would (the wrapper)."""
    monkeypatch.setattr(integration, "HAS_MIDDLEWARES", request.param == "middleware")
    kind = aiohttp.ClientSession if request.param == "middleware" else LoadBalancedSession

    def make(lb: LoadBalancingModule, **kwargs: Any) -> Session:
        made = load_balanced_session(lb, **kwargs)
        assert type(made) is kind
        return made

    yield make


def fallback() -> bool:
    return not integration.HAS_MIDDLEWARES


async def text(session: Session, url: str, method: str = "GET", **kwargs: Any) -> str:
    async with session.request(method, url, **kwargs) as response:
        return await response.text()


async def test_requests_spread_over_the_backends_with_the_callers_url_and_host(session: MakeSession) -> None:
    async with http_servers(3) as servers:
        lb = await make_lb([s.port for s in servers])
        async with session(lb) as http:
            answers = [await text(http, f"{URL}/?q=1") for _ in range(9)]
            async with http.get(f"{URL}/?q=1") as response:
                # The caller's URL; the fallback's responses carry the backend's.
                assert (response.url.host == "api.test") is not fallback()
        assert sorted(answers) == ["b0"] * 3 + ["b1"] * 3 + ["b2"] * 3
        for server in servers:
            assert {(m, p, h["Host"]) for m, p, h in server.heads} == {("GET", "/?q=1", "api.test")}
        assert in_flight(lb) == 0


async def test_a_backend_killed_mid_run_fails_no_idempotent_request(session: MakeSession) -> None:
    async with http_servers(3) as servers:
        lb = await make_lb([s.port for s in servers])
        done = 0

        async def loop(http: Session) -> list[int]:
            nonlocal done
            statuses = []
            for _ in range(30):
                async with http.get(f"{URL}/") as response:
                    await response.read()
                    statuses.append(response.status)
                done += 1
            return statuses

        async def kill() -> None:
            while done < 20:
                await asyncio.sleep(0.001)
            await servers[0].stop()

        async with session(lb) as http:
            results = await asyncio.gather(loop(http), loop(http), loop(http), kill())
        assert [s for statuses in results[:3] for s in statuses] == [200] * 90
        assert backend(lb, servers[0].port).failed >= 1
        assert in_flight(lb) == 0


async def test_a_post_is_retried_only_when_the_connection_was_refused(session: MakeSession) -> None:
    async with http_servers(1) as (live,):
        refused = closed_port()
        lb = await make_lb([refused, live.port])
        async with session(lb) as http:
            answers = [await text(http, f"{URL}/", "POST", data=b"order") for _ in range(4)]
        assert answers == ["b0"] * 4  # round robin tries the refusing backend first each time, then the live one
        assert backend(lb, refused).failed == 4 and live.hits("/") == 4

        async with TcpListener() as hangs_up:  # accepts, then closes: the POST may have arrived
            lb = await make_lb([hangs_up.port, live.port])
            async with session(lb) as http:
                with pytest.raises(aiohttp.ClientConnectionError):
                    await text(http, f"{URL}/", "POST", data=b"order")
                assert hangs_up.accepted == 1 and live.hits("/") == 4  # not sent again
                assert await text(http, f"{URL}/") == "b0"  # a GET, on the other hand, is retried
                assert await text(http, f"{URL}/") == "b0"
            # Under the fallback, aiohttp's own retry of an idempotent request on a fresh connection
            # runs inside the try, on the same backend.
            assert hangs_up.accepted == (3 if fallback() else 2)


async def test_a_body_that_cannot_be_replayed_is_not_sent_twice(session: MakeSession) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"part one;"
        yield b"part two"

    async with http_servers(1) as (live,), TcpListener() as hangs_up:
        lb = await make_lb([hangs_up.port, live.port])
        async with session(lb) as http:
            with pytest.raises(aiohttp.ClientConnectionError):
                await text(http, f"{URL}/", "PUT", data=body())  # idempotent, but its body is gone
            assert live.hits("/") == 0
            for _ in range(2):  # the second is routed to the hang-up first, then retried
                assert await text(http, f"{URL}/", "PUT", data=b"bytes replay") == "b0"
        assert hangs_up.accepted == (3 if fallback() else 2) and live.hits("/") == 2


async def test_a_404_is_an_answer_not_a_failure(session: MakeSession) -> None:
    async with http_servers(2) as servers:
        lb = await make_lb([s.port for s in servers])
        async with session(lb) as http, http.get(f"{URL}/missing") as response:
            assert response.status == 404
        assert sum(s.hits("/missing") for s in servers) == 1
        assert all(backend(lb, s.port).failed == 0 for s in servers)


async def test_a_503_is_retried_on_another_backend_and_counted_against_the_first(session: MakeSession) -> None:
    async with http_servers(2) as (unavailable, healthy):
        unavailable.answer("/", 503, body=b"busy")
        lb = await make_lb([unavailable.port, healthy.port])
        async with session(lb) as http:
            answers = [await text(http, f"{URL}/") for _ in range(4)]
        assert answers == ["b1"] * 4
        assert backend(lb, unavailable.port).failed == unavailable.hits("/") == 4
        assert backend(lb, healthy.port).failed == 0
        assert in_flight(lb) == 0  # the replaced 503s were closed


async def test_a_500_is_kept_unless_retry_on_names_it(session: MakeSession) -> None:
    async with http_servers(2) as (broken, healthy):
        broken.answer("/", 500, body=b"bug")
        lb = await make_lb([broken.port, healthy.port])
        async with session(lb) as http:
            assert [await text(http, f"{URL}/") for _ in range(2)] == ["bug", "b1"]
        assert backend(lb, broken.port).failed == 1
        async with session(lb, retry_on=[500]) as http:
            assert [await text(http, f"{URL}/") for _ in range(2)] == ["b1", "b1"]
        assert backend(lb, broken.port).failed == broken.hits("/") == 3


async def test_a_value_error_in_user_code_around_an_aiohttp_request_is_not_retried() -> None:
    async with http_servers(3) as servers:
        lb = await make_lb([s.port for s in servers])
        async with aiohttp.ClientSession() as http:

            async def parse(route: RouteResult) -> str:
                async with http.get(f"http://{route.host}:{route.port}/") as response:
                    raise ValueError(f"cannot parse {await response.text()!r}")

            with pytest.raises(ValueError, match="cannot parse"):
                await lb.call(Request(), parse)
        assert sum(s.hits("/") for s in servers) == 1
        assert sum(backend(lb, s.port).failed for s in servers) == 0


async def test_the_slot_is_held_until_the_response_is_released(session: MakeSession) -> None:
    async with http_servers(1) as (server,):
        lb = await make_lb([server.port])
        b = backend(lb, server.port)
        async with session(lb) as http:
            async with http.get(f"{URL}/stream") as response:
                assert await response.content.readexactly(12) == b"first chunk;"
                assert b.in_flight == 1 and b.successful == 0
                server.release.set()  # the backend ends the body
                assert await response.read() == b""  # the rest of the body: nothing more
                assert b.in_flight == 0 and b.successful == 1  # released at the end of the body

            server.release.clear()
            async with http.get(f"{URL}/stream") as response:
                assert b.in_flight == 1
            # Released without reading the body: the backend is not blamed.
            assert b.in_flight == 0 and b.successful == 2 and b.failed == 0

            response = await http.get(f"{URL}/stream")  # awaited, not entered: closed by hand
            assert b.in_flight == 1
            response.close()
            assert b.in_flight == 0 and b.failed == 0


async def test_a_body_broken_while_it_is_read_fails_the_backend(session: MakeSession) -> None:
    async with BrokenBody() as broken:
        lb = await make_lb([broken.port])
        async with session(lb) as http:
            with pytest.raises(aiohttp.ClientPayloadError):
                await text(http, f"{URL}/")
        b = backend(lb, broken.port)
        assert broken.served == 1
        assert b.failed == 1 and b.in_flight == 0


async def test_sticky_sessions_follow_x_session_id_and_route_as_wins(session: MakeSession) -> None:
    async with http_servers(3) as servers:
        lb = await make_lb([s.port for s in servers], session_affinity=True)
        async with session(lb) as http:
            for name in ("alice", "bob", "carol"):
                answers = {await text(http, f"{URL}/", headers={"X-Session-ID": name}) for _ in range(4)}
                assert len(answers) == 1
            assert sorted(s.hits("/") for s in servers) == [4, 4, 4]
            with route_as({"session_id": "pinned"}):
                first = await text(http, f"{URL}/")
                for name in ("x", "y", "z"):
                    assert await text(http, f"{URL}/", headers={"X-Session-ID": name}) == first
            with route_as(Request(session_id="pinned")):
                assert await text(http, f"{URL}/") == first


async def test_default_headers_of_the_session_route_too(session: MakeSession) -> None:
    async with http_servers(3) as servers:
        lb = await make_lb([s.port for s in servers], session_affinity=True)
        async with session(lb, headers={"X-Session-ID": "everyone"}) as http:
            assert len({await text(http, f"{URL}/") for _ in range(4)}) == 1


@pytest.mark.parametrize(
    ("headers", "given", "message"),
    [
        ({"X-Workload-Type": "quantum_magic"}, None, "X-Workload-Type 'quantum_magic' is not one of: classical"),
        ({"X-Session-ID": "\u00e9t\u00e9"}, None, "X-Session-ID '\u00e9t\u00e9' is not 1 to 512 visible ASCII"),
        ({}, {"client_ip": "not-an-ip"}, "'omnixan' extension is not a valid Request: client_ip"),
    ],
)
async def test_bad_routing_information_is_refused_before_any_backend_is_picked(
    session: MakeSession, headers: dict[str, str], given: dict[str, Any] | None, message: str
) -> None:
    async with http_servers(1) as (server,):
        lb = await make_lb([server.port])
        async with session(lb) as http:
            with pytest.raises(RequestInfoError, match=message):
                if given is None:
                    await text(http, f"{URL}/", headers=headers)
                else:
                    with route_as(given):
                        await text(http, f"{URL}/")
        assert lb.total_requests == 0 and server.hits("/") == 0


async def test_no_backend_at_all_is_a_client_connection_error(session: MakeSession) -> None:
    lb = await make_lb([])
    async with session(lb) as http:
        with pytest.raises(NoBackendError, match="no backend can take the request") as caught:
            await text(http, f"{URL}/")
    assert isinstance(caught.value, aiohttp.ClientConnectionError)
    assert isinstance(caught.value.__cause__, BackendUnavailableError)


async def test_when_every_try_fails_the_last_aiohttp_error_is_raised(session: MakeSession) -> None:
    ports = [closed_port(), closed_port()]
    lb = await make_lb(ports)
    async with session(lb) as http:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await text(http, f"{URL}/")
    if sys.version_info >= (3, 11):
        assert any("2 tries failed" in note for note in caught.value.__notes__)
    assert all(backend(lb, port).failed == 1 for port in ports)


async def test_a_try_past_request_timeout_is_a_server_timeout(session: MakeSession) -> None:
    async with http_servers(1) as (server,):
        server.answer("/slow", delay=30.0)
        lb = await make_lb([server.port], request_timeout=0.05)
        async with session(lb) as http:
            with pytest.raises(aiohttp.ServerTimeoutError, match=r"did not answer within 0\.05 s"):
                await text(http, f"{URL}/slow")
        assert backend(lb, server.port).failed == 1


async def test_https_checks_the_certificate_against_the_callers_name(session: MakeSession) -> None:
    context, ca = certificates("api.test")
    async with http_servers(2, ssl_context=context) as servers:
        lb = await make_lb([s.port for s in servers])
        trusting = ssl.create_default_context()  # the client trusts the test's CA only
        ca.configure_trust(trusting)
        connector = aiohttp.TCPConnector(ssl=trusting)
        async with session(lb, connector=connector) as http:
            assert sorted([await text(http, "https://api.test/") for _ in range(2)]) == ["b0", "b1"]
        assert servers[0].heads[0][2]["Host"] == "api.test"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as direct:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await text(direct, f"https://127.0.0.1:{servers[0].port}/")


class Tagged(aiohttp.ClientResponse):
    """A session's own response class: the middleware keeps it."""

    tag = "mine"


async def test_a_sessions_own_response_class_is_kept() -> None:
    async with http_servers(1) as (server,):
        lb = await make_lb([server.port])
        async with (
            aiohttp.ClientSession(response_class=Tagged, middlewares=[LoadBalancedMiddleware(lb)]) as http,
            http.get(f"{URL}/stream") as response,
        ):
            assert isinstance(response, Tagged) and isinstance(response, HeldResponse)
            assert backend(lb, server.port).in_flight == 1
        assert backend(lb, server.port).in_flight == 0


async def test_the_middleware_goes_after_the_sessions_own() -> None:
    seen: list[str] = []

    async def record(request: aiohttp.ClientRequest, handler: Callable[..., Awaitable[Any]]) -> Any:
        seen.append(str(request.url))  # still the caller's URL: the balancer is inside
        return await handler(request)

    async with http_servers(1) as (server,):
        lb = await make_lb([server.port])
        async with load_balanced_session(lb, middlewares=(record,)) as http:
            assert await text(http, f"{URL}/") == "b0"
        assert seen == [f"{URL}/"]


async def test_the_fallback_needs_an_absolute_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(integration, "HAS_MIDDLEWARES", False)
    lb = await make_lb([closed_port()])
    async with load_balanced_session(lb) as http:
        with pytest.raises(ValueError, match="needs an absolute URL"):
            await http.get("/relative")
