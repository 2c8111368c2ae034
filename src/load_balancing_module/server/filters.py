"""Python filters: the operator's own code, run on a route's request and response heads.

A route's ``filters: ["myfilters:require_api_key"]`` names importable objects. A plain callable
is a *request filter*; an object with an ``on_request`` and/or an ``on_response`` method is
either or both. A request filter gets a :class:`FilterRequest` and may change its headers,
set ``request.pool`` to send the request to another pool, or return an :class:`Answer` that
the proxy sends instead of proxying. It may be a coroutine function: the request then waits
for it (within its ``request_timeout``) while the connection serves nothing else. A response
filter gets a :class:`FilterResponse` and may change the headers of the answer; it may not
await (it runs as the backend's head is read).

A filter that raises, returns something else, or makes a header change the proxy refuses, ends
the request with a 500 naming the request id; the error is logged (``filter_failed``) and counted
(``omnixan_lb_filter_errors_total{filter}``). It never ends the process, and no backend hears of it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from typing import Final, Protocol

from . import route_config
from .http import RequestInfo
from .response import REASONS
from .route_config import check_header_name, check_header_value

# Headers a filter may not change (a route's header rules may not either), as bytes.
REQUEST_OWN: Final = frozenset(name.encode() for name in route_config.REQUEST_OWN)
RESPONSE_OWN: Final = frozenset(name.encode() for name in route_config.RESPONSE_OWN)
MAX_ANSWER_BODY: Final = 1024 * 1024


class FilterError(Exception):
    """A filter that cannot be loaded, or that did something the proxy refuses."""


class Headers:
    """A head's headers, in order, with names matched case-insensitively (``str`` in, ``str`` out,
    as Latin-1). Changes are checked: a bad name or value, or a header the proxy owns, raises
    :class:`FilterError`."""

    __slots__ = ("_items", "_own", "changed")

    def __init__(self, items: list[tuple[bytes, bytes]], own: frozenset[bytes]) -> None:
        self._items = items
        self._own = own
        self.changed = False

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        for n, v in self._items:
            if n.lower() == key:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for n, v in self._items if n.lower() == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._items)

    def lines(self) -> list[tuple[bytes, bytes]]:
        """The headers as they are now, as bytes (for the proxy)."""
        return self._items

    def items(self) -> list[tuple[str, str]]:
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._items]

    def set(self, name: str, value: str) -> None:
        """Replace every header ``name`` with one line (added at the end if there was none)."""
        raw = self._checked(name, value)
        self._drop(raw[0].lower())
        self._items.append(raw)

    def add(self, name: str, value: str) -> None:
        self._items.append(self._checked(name, value))

    def remove(self, name: str) -> None:
        self._drop(self._checked_name(name).lower())

    def _drop(self, key: bytes) -> None:
        kept = [(n, v) for n, v in self._items if n.lower() != key]
        if len(kept) != len(self._items):
            self._items[:] = kept
        self.changed = True

    def _checked_name(self, name: str) -> bytes:
        try:
            check_header_name(name)
        except ValueError as exc:
            raise FilterError(str(exc)) from None
        raw = name.encode("latin-1")
        if raw.lower() in self._own:
            raise FilterError(f"{name} is written by the proxy itself: a filter cannot change it")
        return raw

    def _checked(self, name: str, value: str) -> tuple[bytes, bytes]:
        raw = self._checked_name(name)
        if not isinstance(value, str):
            raise FilterError(f"the value of {name} must be a str, not {type(value).__name__}")
        try:
            check_header_value(name, value)
        except ValueError as exc:
            raise FilterError(str(exc)) from None
        self.changed = True
        return raw, value.encode("latin-1")


class FilterRequest:
    """What a request filter sees of a request, and may change (``headers``, ``pool``)."""

    __slots__ = ("method", "path", "query", "host", "client_ip", "request_id", "route", "pool", "headers")

    def __init__(
        self,
        *,
        method: str,
        path: str,
        query: str,
        host: str | None,
        client_ip: str,
        request_id: str,
        route: str,
        pool: str,
        headers: Headers,
    ) -> None:
        self.method = method
        self.path = path  # as it goes to the backend (after strip_prefix), without the query
        self.query = query  # without its "?"; "" when there is none
        self.host = host  # the Host header as the client sent it (None for an HTTP/1.0 request without one)
        self.client_ip = client_ip
        self.request_id = request_id
        self.route = route
        self.pool = pool  # set it to another pool's name to send the request there
        self.headers = headers


class FilterResponse:
    """What a response filter sees of an answer: its status, its headers (which it may change),
    and the request it answers."""

    __slots__ = ("status", "headers", "request")

    def __init__(self, status: int, headers: Headers, request: FilterRequest) -> None:
        self.status = status
        self.headers = headers
        self.request = request


class Answer:
    """A request filter's own answer, sent instead of proxying: ``status``, ``headers``, ``body``
    (``str`` is sent as UTF-8). The proxy adds Content-Length and X-Request-ID."""

    __slots__ = ("status", "headers", "body")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes | str = b"",
    ) -> None:
        self.status = status
        self.headers = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        self.body = body.encode() if isinstance(body, str) else body

    def encode(self, request_id: str, *, close: bool) -> bytes:
        """The answer as it goes to the client; :class:`FilterError` if it cannot be sent."""
        if not isinstance(self.status, int) or not 200 <= self.status <= 599:
            raise FilterError(f"an Answer's status must be a number in 200..599, not {self.status!r}")
        if not isinstance(self.body, bytes) or len(self.body) > MAX_ANSWER_BODY:
            raise FilterError(f"an Answer's body must be bytes or str of at most {MAX_ANSWER_BODY} bytes")
        lines = Headers([], RESPONSE_OWN)
        for name, value in self.headers:
            lines.add(name, value)
        parts = [b"HTTP/1.1 %d %s\r\n" % (self.status, REASONS.get(self.status, b"Status"))]
        parts += [b"%s: %s\r\n" % item for item in lines.lines()]
        parts.append(b"Content-Length: %d\r\nX-Request-ID: %s\r\n" % (len(self.body), request_id.encode()))
        if close:
            parts.append(b"Connection: close\r\n")
        parts += (b"\r\n", self.body)
        return b"".join(parts)


RequestResult = Answer | Awaitable[Answer | None] | None


class RequestFilter(Protocol):
    """``def require_api_key(request: FilterRequest) -> Answer | None`` (or ``async def``)."""

    def __call__(self, request: FilterRequest, /) -> RequestResult: ...


class ResponseFilter(Protocol):
    """``def on_response(response: FilterResponse) -> None``."""

    def __call__(self, response: FilterResponse, /) -> None: ...


class LoadedFilter:
    """One filter of a route: its name (the ``module:function`` of the config) and its hooks."""

    __slots__ = ("name", "on_request", "on_response")

    def __init__(self, name: str, on_request: RequestFilter | None, on_response: ResponseFilter | None) -> None:
        self.name = name
        self.on_request = on_request
        self.on_response = on_response


def load_filter(spec: str) -> LoadedFilter:
    """Import ``module:attribute`` (the operator's own code); :class:`FilterError` saying why not."""
    module_name, _, attribute = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # the operator's module may raise anything as it loads
        raise FilterError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise FilterError(f"{module_name} has no attribute {attribute}") from None
    on_request = getattr(target, "on_request", None)
    on_response = getattr(target, "on_response", None)
    if on_request is None and on_response is None:
        if not callable(target):
            raise FilterError(f"{spec} is neither callable nor has on_request/on_response methods")
        on_request = target
    for hook, name in ((on_request, "on_request"), (on_response, "on_response")):
        if hook is not None and not callable(hook):
            raise FilterError(f"{spec}.{name} is not callable")
    if on_response is not None and inspect.iscoroutinefunction(on_response):
        raise FilterError(f"{spec}.on_response is async: a response filter runs as the head is read and cannot await")
    return LoadedFilter(spec, on_request, on_response)


def filter_request(info: RequestInfo, client_ip: str, request_id: str, route: str, pool: str) -> FilterRequest:
    """What request filters see of ``info``; its ``headers`` are ``info.headers`` itself, so what
    the filters change is what goes to the backend."""
    path, _, query = info.target.partition(b"?")
    return FilterRequest(
        method=info.method.decode("latin-1"),
        path=path.decode("latin-1"),
        query=query.decode("latin-1"),
        host=None if info.host is None else info.host.decode("latin-1"),
        client_ip=client_ip,
        request_id=request_id,
        route=route,
        pool=pool,
        headers=Headers(info.headers, REQUEST_OWN),
    )


def response_headers(parts: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The ``(name, value)`` pairs of a response head's parts (see :class:`~.response.ResponseInfo`)."""
    headers = []
    for line in parts[3:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    return headers
