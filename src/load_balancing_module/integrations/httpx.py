"""httpx: ``httpx.AsyncClient(transport=LoadBalancedTransport(lb))`` is the whole setup.

Each request is routed by ``lb`` (what it routes by: :mod:`.request_info`) and sent through an
inner transport (``httpx.AsyncHTTPTransport()`` unless given; closed with this one) to the
chosen backend's host and port. The scheme, path, query and ``Host`` header stay as the caller
wrote them, so the backend sees the name the caller used; over https the TLS server name
(``sni_hostname``) is that name too, so the certificate is checked against it, not against the
backend's address.

Tries run under ``lb.call_held``: judged by ``is_failure``, retried on another backend per
``retry_on`` (both default to the module's; see :mod:`load_balancing_module.outcome`). GET,
HEAD, OPTIONS, TRACE, PUT and DELETE are idempotent (RFC 9110) and retried within the retry
budget; other methods only when no connection was made. A body that cannot be read twice (an
async iterator, not bytes) is never sent again once its first try began to read it.

With ``LoadBalancingModule(..., tracer=OpenTelemetryTracer())`` (:mod:`load_balancing_module.tracing`),
each try is a span whose context goes to the backend as ``traceparent``, with the status it answered.

The response comes back with its body unread; the backend's slot is held until the body is
closed (httpx closes it after reading it, or ``await response.aclose()``, or the end of
``client.stream(...)``). A read error while the body streams completes the try as
``is_failure`` judges the error (a failure, by default); closing early is not held against the
backend. Responses that a retry replaced are closed.

Errors are httpx's, so ``except httpx.TransportError`` keeps working:

- every try failed: the last try's error, as httpx raised it (``httpx.ConnectError``,
  ``httpx.ReadTimeout``...), with a note (Python 3.11+) saying how many tries failed; a try that
  ran past the module's ``request_timeout``: ``httpx.TimeoutException``, caused by the module's
  ``RequestTimeoutError``;
- no backend could take the request (none, all down or busy past ``request_timeout``, or the
  client rate limited): :class:`NoBackendError`, an ``httpx.ConnectError`` (nothing was sent)
  whose ``__cause__`` is the library's error (``BackendUnavailableError``,
  ``RateLimitExceededError`` with its ``retry_after``...);
- a malformed ``X-Workload-Type`` or ``omnixan`` extension: :class:`RequestInfoError` (a
  ``ValueError``), before any backend is picked;
- an error that ``is_failure`` does not count (your own): as it was raised, after one try.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import TracebackType

from .._extras import missing_extra

try:
    import httpx
except ModuleNotFoundError as exc:  # the [httpx] extra is not installed: say so
    if exc.name != "httpx":
        raise
    raise missing_extra("load_balancing_module.integrations.httpx", "httpx", "httpx") from exc

from ..exceptions import RoutingError
from ..module import LoadBalancingModule
from ..outcome import IsFailure, Outcome, RetryOn, failure_predicate, retry_predicate
from ..route import RouteResult
from .release import HeldTry, last_error
from .request_info import EXTENSION, IDEMPOTENT_METHODS, RequestInfoError, routing_request

__all__ = ["LoadBalancedTransport", "NoBackendError", "RequestInfoError"]


class NoBackendError(httpx.ConnectError):
    """No backend could take the request, so nothing was sent; ``__cause__`` says why."""


class LoadBalancedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request to a backend ``lb`` picks.

    ``retry_on`` and ``is_failure`` replace the module's for this transport's requests.
    """

    def __init__(
        self,
        lb: LoadBalancingModule,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        retry_on: RetryOn | None = None,
        is_failure: IsFailure | None = None,
    ) -> None:
        self.lb = lb
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._retry_on = retry_predicate(retry_on) if retry_on is not None else None
        self._is_failure = failure_predicate(is_failure) if is_failure is not None else None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        routing = routing_request(request.extensions.get(EXTENSION), request.headers)
        body = None if isinstance(request.stream, httpx.ByteStream) else _Body(request.stream)
        is_failure = self._is_failure or self.lb.is_failure
        tries = 0

        async def send(route: RouteResult) -> httpx.Response:
            nonlocal tries
            tries += 1
            outgoing = to_backend(request, route, body)
            tracer = self.lb.tracer
            if tracer is None:
                return await self.transport.handle_async_request(outgoing)
            tracer.inject(outgoing.headers)  # the try's span is current: the backend's parent
            response = await self.transport.handle_async_request(outgoing)
            tracer.note_status(response.status_code)
            return response

        try:
            held = await self.lb.call_held(
                routing,
                send,
                retry_on=self._retry_predicate(body),
                is_failure=is_failure,
                idempotent=request.method in IDEMPOTENT_METHODS,
                discard=_close,
            )
        except RoutingError as exc:
            failed = exc
        else:
            response = held.value
            if held.open:
                response.stream = _HeldBody(response.stream, HeldTry(self.lb, held, is_failure))
            return response
        # Raised outside the except block, so that the last try's error keeps its own context.
        raise client_error(failed, request, tries)

    def _retry_predicate(self, body: _Body | None) -> Callable[[Outcome], bool]:
        retry_on = self._retry_on or self.lb.retry_on
        if body is None:
            return retry_on
        return lambda outcome: not body.started and retry_on(outcome)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> LoadBalancedTransport:
        await self.transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.transport.__aexit__(exc_type, exc_value, traceback)


def to_backend(request: httpx.Request, route: RouteResult, body: httpx.AsyncByteStream | None) -> httpx.Request:
    """``request`` addressed to the routed backend's host and port, with the caller's Host header
    and, over https, the caller's host as the TLS server name."""
    url = request.url.copy_with(host=route.host, port=route.port)  # an IPv6 host gets its brackets
    headers = request.headers.copy()
    if "host" not in headers:
        headers["Host"] = request.url.netloc.decode("ascii")
    extensions = {k: v for k, v in request.extensions.items() if k != EXTENSION}
    if request.url.scheme == "https" and "sni_hostname" not in extensions:
        extensions["sni_hostname"] = request.url.raw_host.decode("ascii")
    return httpx.Request(
        request.method,
        url,
        headers=headers,
        stream=body if body is not None else request.stream,
        extensions=extensions,
    )


def client_error(error: RoutingError, request: httpx.Request, tries: int) -> BaseException:
    """The error an httpx user expects for ``error`` from ``call_held`` (see the module's doc)."""
    if tries == 0:
        no_backend = NoBackendError(f"no backend can take the request: {error}", request=request)
        no_backend.__cause__ = error
        return no_backend
    cause = last_error(error)
    if isinstance(cause, httpx.TransportError):
        return cause
    if isinstance(cause, TimeoutError):  # the module's request_timeout ended the try
        timeout = httpx.TimeoutException(str(error), request=request)
        timeout.__cause__ = cause
        return timeout
    return error  # an error of the inner transport that httpx does not raise: the library's


async def _close(response: httpx.Response) -> None:
    await response.aclose()


class _Body(httpx.AsyncByteStream):
    """A request body that cannot be read twice, noting whether a try began to read it."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> None:
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError("LoadBalancedTransport is an async transport: the request body must be async")
        self.stream = stream
        self.started = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        async for chunk in self.stream:
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


class _HeldBody(httpx.AsyncByteStream):
    """A response body whose end (closed, or broken by a read error) completes the backend's try."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, held: HeldTry) -> None:
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError("the inner transport returned a response with a sync body")
        self.stream = stream
        self.held = held

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.stream:
                yield chunk
        except Exception as exc:
            self.held.end(exc)
            raise

    async def aclose(self) -> None:
        self.held.end()  # closed early or not, the answer's verdict stands
        await self.stream.aclose()
