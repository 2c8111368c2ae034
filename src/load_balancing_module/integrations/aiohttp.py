"""aiohttp: ``aiohttp.ClientSession(middlewares=[LoadBalancedMiddleware(lb)])`` (aiohttp >= 3.12),
or ``load_balanced_session(lb)`` on any aiohttp.

Each request is routed by ``lb`` (what it routes by: :mod:`.request_info`; a per-request
:class:`~load_balancing_module.Request` is given with ``with route_as(...)`` around the call) and
sent to the chosen backend's host and port. The path, query and ``Host`` header stay as the
caller wrote them, so the backend sees the name the caller used; over https the TLS server
name (``server_hostname``) is that name too, so the certificate is checked against it.

Tries run under ``lb.call_held``: judged by ``is_failure``, retried on another backend per
``retry_on`` (both default to the module's; see :mod:`load_balancing_module.outcome`). GET,
HEAD, OPTIONS, TRACE, PUT and DELETE are idempotent (RFC 9110) and retried within the retry
budget; other methods only when no connection was made. A body aiohttp cannot send twice (an
async iterator, an unseekable file) is never sent again once a try began to send it.

The backend's slot is held until the response is released: its body read to the end (aiohttp
then releases the connection), ``release()``, ``close()`` or the end of ``async with``. A body
broken while it is read (the connection lost, a read timeout) completes the try as
``is_failure`` judges that error (a failure, by default); releasing early is not held against
the backend. Responses that a retry replaced are closed.

Errors are aiohttp's, so ``except aiohttp.ClientError`` keeps working:

- every try failed: the last try's error, as aiohttp raised it (``ClientConnectorError``,
  ``ServerDisconnectedError``...), with a note (Python 3.11+) saying how many tries failed; a try
  that ran past the module's ``request_timeout``: ``aiohttp.ServerTimeoutError``;
- no backend could take the request: :class:`NoBackendError`, an
  ``aiohttp.ClientConnectionError`` whose ``__cause__`` is the library's error;
- a malformed ``X-Workload-Type`` or ``route_as`` value: :class:`RequestInfoError` (a
  ``ValueError``), before any backend is picked;
- an error that ``is_failure`` does not count: as it was raised, after one try.

Older aiohttp (no client middlewares): :func:`load_balanced_session` returns a
:class:`LoadBalancedSession`, whose ``request``, ``get``, ``post``... do the same; it needs
absolute URLs, follows a redirect on the backend that answered it, and sends a body other than
bytes, text or a form ``dict`` once only (no retry).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, cast

from .._extras import missing_extra

try:
    import aiohttp
except ModuleNotFoundError as exc:  # the [aiohttp] extra is not installed: say so
    if exc.name != "aiohttp":
        raise
    raise missing_extra("load_balancing_module.integrations.aiohttp", "aiohttp", "aiohttp") from exc
from aiohttp import ClientRequest, ClientResponse
from multidict import CIMultiDict
from yarl import URL

from ..config import Request
from ..exceptions import RoutingError
from ..module import LoadBalancingModule
from ..outcome import IsFailure, Outcome, RetryOn, failure_predicate, retry_predicate
from ..route import RouteResult
from .release import HeldTry, last_error
from .request_info import IDEMPOTENT_METHODS, RequestInfoError, routing_request

__all__ = [
    "HAS_MIDDLEWARES",
    "HeldResponse",
    "LoadBalancedMiddleware",
    "LoadBalancedSession",
    "NoBackendError",
    "RequestInfoError",
    "load_balanced_session",
    "route_as",
]

#: Whether this aiohttp has client middlewares (3.12+); :func:`load_balanced_session` reads it.
HAS_MIDDLEWARES = "middlewares" in inspect.signature(aiohttp.ClientSession.__init__).parameters

Handler = Callable[[ClientRequest], Awaitable[ClientResponse]]

_ROUTE_AS: ContextVar[Request | Mapping[str, Any] | None] = ContextVar("omnixan_route_as", default=None)


class NoBackendError(aiohttp.ClientConnectionError):
    """No backend could take the request, so nothing was sent; ``__cause__`` says why."""


@contextlib.contextmanager
def route_as(request: Request | Mapping[str, Any]) -> Iterator[None]:
    """Route the requests made inside the block by ``request`` (a :class:`Request` or a dict of
    its fields) instead of their headers: ``with route_as({"client_ip": ip}): await s.get(url)``."""
    token = _ROUTE_AS.set(request)
    try:
        yield
    finally:
        _ROUTE_AS.reset(token)


class HeldResponse(ClientResponse):
    """A response that completes the backend's try when it is released: read to its end,
    ``release()``d or ``close()``d, whichever comes first."""

    _omnixan_held: HeldTry | None = None

    def _omnixan_hold(self, held: HeldTry) -> None:
        self._omnixan_held = held
        connection = self.connection
        if connection is None:  # the whole body came with the head: already released
            self._omnixan_end()
        else:  # aiohttp releases the connection once the body has been read to its end
            connection.add_callback(self._omnixan_end)

    def _omnixan_end(self) -> None:
        held = self._omnixan_held
        if held is None:
            return
        self._omnixan_held = None
        # Read before release()/close() mark the content closed: an error here broke the body.
        content = self.content
        held.end(content.exception() if content is not None else None)

    def close(self) -> None:
        self._omnixan_end()
        super().close()

    def release(self) -> Any:
        self._omnixan_end()
        return super().release()


_HELD_CLASSES: dict[type[ClientResponse], type[HeldResponse]] = {}


def held_response_class(base: type[ClientResponse]) -> type[HeldResponse]:
    """``base`` (a session's ``response_class``) with :class:`HeldResponse`'s release hooks."""
    if issubclass(base, HeldResponse):
        return base
    if base is ClientResponse:
        return HeldResponse
    made = _HELD_CLASSES.get(base)
    if made is None:
        made = cast("type[HeldResponse]", type(f"Held{base.__name__}", (HeldResponse, base), {}))
        _HELD_CLASSES[base] = made
    return made


class LoadBalancedMiddleware:
    """An aiohttp client middleware (3.12+) that sends each request to a backend ``lb`` picks.

    ``retry_on`` and ``is_failure`` replace the module's for the requests it handles.
    """

    def __init__(
        self, lb: LoadBalancingModule, *, retry_on: RetryOn | None = None, is_failure: IsFailure | None = None
    ) -> None:
        self.lb = lb
        self._retry_on = retry_predicate(retry_on) if retry_on is not None else None
        self._is_failure = failure_predicate(is_failure) if is_failure is not None else None

    async def __call__(self, request: ClientRequest, handler: Handler) -> ClientResponse:
        routing = routing_request(_ROUTE_AS.get(), request.headers)
        logical = request.url
        server_hostname = request.server_hostname
        sni = server_hostname if server_hostname is not None or not request.is_ssl() else logical.raw_host
        request.response_class = held_response_class(request.response_class)
        is_failure = self._is_failure or self.lb.is_failure
        retry_on = self._retry_on or self.lb.retry_on
        tries = 0

        async def send(route: RouteResult) -> ClientResponse:
            nonlocal tries
            tries += 1
            request.url = logical.with_host(route.host).with_port(route.port)  # IPv6 gets brackets
            request.server_hostname = sni
            return await handler(request)

        def retries(outcome: Outcome) -> bool:
            return not getattr(request.body, "consumed", False) and retry_on(outcome)

        try:
            held = await self.lb.call_held(
                routing,
                send,
                retry_on=retries,
                is_failure=is_failure,
                idempotent=request.method in IDEMPOTENT_METHODS,
                discard=_close,
            )
        except RoutingError as exc:
            failed = exc
        else:
            return _hold(held.value, held.open, HeldTry(self.lb, held, is_failure))
        finally:
            # A later middleware call for the same request (aiohttp's own retry, a redirect) starts
            # from the caller's URL again.
            request.url = logical
            request.server_hostname = server_hostname
        raise client_error(failed, tries)  # outside the except block: the error keeps its context


def _hold(response: ClientResponse, open: bool, held: HeldTry) -> ClientResponse:
    if open:
        if not isinstance(response, HeldResponse):  # a middleware below replaced the response
            held.end()
        else:
            response._omnixan_hold(held)
    return response


def client_error(error: RoutingError, tries: int) -> BaseException:
    """The error an aiohttp user expects for ``error`` from ``call_held`` (see the module's doc)."""
    if tries == 0:
        no_backend = NoBackendError(f"no backend can take the request: {error}")
        no_backend.__cause__ = error
        return no_backend
    cause = last_error(error)
    if isinstance(cause, aiohttp.ClientError):
        return cause
    if isinstance(cause, TimeoutError) and not isinstance(cause, aiohttp.ServerTimeoutError):
        timeout = aiohttp.ServerTimeoutError(str(error))
        timeout.__cause__ = cause
        return timeout
    return cause if cause is not None else error


async def _close(response: ClientResponse) -> None:
    response.close()


def load_balanced_session(
    lb: LoadBalancingModule,
    *,
    retry_on: RetryOn | None = None,
    is_failure: IsFailure | None = None,
    **session_kwargs: Any,
) -> aiohttp.ClientSession | LoadBalancedSession:
    """A session whose requests go through ``lb``: an ``aiohttp.ClientSession`` with
    :class:`LoadBalancedMiddleware` last in its ``middlewares`` (aiohttp >= 3.12), else a
    :class:`LoadBalancedSession`. ``session_kwargs`` go to ``ClientSession``."""
    if HAS_MIDDLEWARES:
        middleware = LoadBalancedMiddleware(lb, retry_on=retry_on, is_failure=is_failure)
        middlewares = (*session_kwargs.pop("middlewares", ()), middleware)
        return aiohttp.ClientSession(middlewares=middlewares, **session_kwargs)
    return LoadBalancedSession(lb, retry_on=retry_on, is_failure=is_failure, **session_kwargs)


class PendingResponse:
    """What :class:`LoadBalancedSession`'s methods return: await it, or ``async with`` it (the
    response is released at the end of the block), as aiohttp's own."""

    __slots__ = ("_coro", "_response")

    def __init__(self, coro: Coroutine[Any, Any, ClientResponse]) -> None:
        self._coro = coro
        self._response: ClientResponse | None = None

    def __await__(self) -> Generator[Any, None, ClientResponse]:
        return self._coro.__await__()

    async def __aenter__(self) -> ClientResponse:
        self._response = await self._coro
        return self._response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            self._response.release()


_REPLAYABLE = (bytes, bytearray, str, Mapping)


class LoadBalancedSession:
    """For aiohttp without client middlewares (< 3.12): a ``ClientSession`` (``session``, made
    with ``session_kwargs``) whose ``request``, ``get``, ``post``... go through ``lb``."""

    def __init__(
        self,
        lb: LoadBalancingModule,
        *,
        retry_on: RetryOn | None = None,
        is_failure: IsFailure | None = None,
        **session_kwargs: Any,
    ) -> None:
        self.lb = lb
        self._retry_on = retry_predicate(retry_on) if retry_on is not None else None
        self._is_failure = failure_predicate(is_failure) if is_failure is not None else None
        response_class = held_response_class(session_kwargs.pop("response_class", ClientResponse))
        self.session = aiohttp.ClientSession(response_class=response_class, **session_kwargs)

    def request(self, method: str, url: str | URL, **kwargs: Any) -> PendingResponse:
        return PendingResponse(self._request(method.upper(), URL(url), kwargs))

    def get(self, url: str | URL, **kwargs: Any) -> PendingResponse:
        return self.request("GET", url, **kwargs)

    def head(self, url: str | URL, **kwargs: Any) -> PendingResponse:
        return self.request("HEAD", url, **kwargs)

    def options(self, url: str | URL, **kwargs: Any) -> PendingResponse:
        return self.request("OPTIONS", url, **kwargs)

    def post(self, url: str | URL, **kwargs: Any) -> PendingResponse:
        return self.request("POST", url, **kwargs)

    def put(self, url: str | URL, **kwargs: Any) -> PendingResponse:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str | URL, **kwargs: Any) -> PendingResponse:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str | URL, **kwargs: Any) -> PendingResponse:
        return self.request("DELETE", url, **kwargs)

    @property
    def closed(self) -> bool:
        return self.session.closed

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> LoadBalancedSession:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _request(self, method: str, logical: URL, kwargs: dict[str, Any]) -> ClientResponse:
        if not logical.is_absolute() or logical.raw_host is None:
            raise ValueError(f"{logical}: LoadBalancedSession needs an absolute URL")
        headers: CIMultiDict[str] = CIMultiDict(kwargs.pop("headers", None) or {})
        seen: CIMultiDict[str] = CIMultiDict(self.session.headers)  # the session's defaults count too
        seen.update(headers)
        routing = routing_request(_ROUTE_AS.get(), seen)
        if "Host" not in headers:
            headers["Host"] = _authority(logical)
        if logical.scheme in ("https", "wss") and kwargs.get("server_hostname") is None:
            kwargs["server_hostname"] = logical.raw_host
        data = kwargs.get("data")
        replayable = data is None or isinstance(data, _REPLAYABLE)
        is_failure = self._is_failure or self.lb.is_failure
        retry_on = self._retry_on or self.lb.retry_on
        tries = 0

        async def send(route: RouteResult) -> ClientResponse:
            nonlocal tries
            tries += 1
            target = logical.with_host(route.host).with_port(route.port)
            return await self.session.request(method, target, headers=headers, **kwargs)

        try:
            held = await self.lb.call_held(
                routing,
                send,
                retry_on=retry_on if replayable else _never,
                is_failure=is_failure,
                idempotent=method in IDEMPOTENT_METHODS,
                discard=_close,
            )
        except RoutingError as exc:
            failed = exc
        else:
            return _hold(held.value, held.open, HeldTry(self.lb, held, is_failure))
        raise client_error(failed, tries)


def _authority(url: URL) -> str:
    """The Host header aiohttp would have sent for ``url``."""
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    return host if url.is_default_port() else f"{host}:{url.port}"


def _never(outcome: Outcome) -> bool:
    return False
