"""Filters the routes tests name in their configs (``route_filters:...``): the operator's own code."""

from __future__ import annotations

import asyncio

from load_balancing_module.server.filters import Answer, FilterRequest, FilterResponse

calls: list[str] = []


def require_api_key(request: FilterRequest) -> Answer | None:
    """Answers 401 itself unless the request carries ``X-Api-Key: secret``; passes it on without it."""
    if request.headers.get("x-api-key") != "secret":
        return Answer(401, {"WWW-Authenticate": 'ApiKey realm="test"'}, "missing or wrong API key\n")
    request.headers.remove("X-Api-Key")
    request.headers.set("X-Authenticated", "yes")
    return None


def to_canary(request: FilterRequest) -> None:
    """Sends requests with ``X-Canary: 1`` to the ``canary`` pool."""
    if request.headers.get("X-Canary") == "1":
        request.pool = "canary"


def to_nowhere(request: FilterRequest) -> None:
    request.pool = "no-such-pool"


def broken(request: FilterRequest) -> None:
    raise RuntimeError("the filter's own bug")


def forges_framing(request: FilterRequest) -> None:
    request.headers.set("Content-Length", "5")


def returns_junk(request: FilterRequest) -> object:
    return 42


async def slow_lookup(request: FilterRequest) -> Answer | None:
    """An awaiting filter: a lookup that takes a moment, then tags the request."""
    await asyncio.sleep(0.01)
    calls.append(request.path)
    request.headers.add("X-Looked-Up", request.path)
    return None


class Stamp:
    """A filter object with both hooks: tags the request, and the answer."""

    def on_request(self, request: FilterRequest) -> None:
        request.headers.set("X-Stamp", request.route)

    def on_response(self, response: FilterResponse) -> None:
        response.headers.set("X-Stamped", f"{response.status} {response.request.pool}")
        response.headers.remove("X-Backend-Secret")


stamp = Stamp()


class BrokenResponse:
    def on_response(self, response: FilterResponse) -> None:
        raise ValueError("cannot read the answer")


broken_response = BrokenResponse()


class AsyncResponse:
    async def on_response(self, response: FilterResponse) -> None:
        return None


async_response = AsyncResponse()
not_callable = 3
