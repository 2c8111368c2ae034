"""The routes table: which route takes a request, and what the route changes on the way.

:class:`RouteTable` is built once per config (at start and on each reload, never per request)
from ``routes``. A request is matched on its Host (lowercased, without the port), its path
(without the query, normalized: see :func:`normalize_path`), its method and its headers; the
first route whose conditions all hold takes it, and a request that matches none goes to the
``default`` pool unchanged. Routes are indexed by their exact host and by the first path
segment their prefix fixes (``/v1/`` fixes ``v1``), so a table of many hosts or services costs
two dictionary lookups and a walk over the few routes that could apply, still in table order.

A route's rewrites (the normalized path, ``strip_prefix``, ``request_headers``) are applied to
the request's :class:`~.http.RequestInfo` before anything reads it for the backend; its
``response_headers`` to the backend's answer (:meth:`Route.edit_response`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from .filters import LoadedFilter, load_filter
from .headers import Header
from .http import RequestInfo
from .response import REASONS
from .route_config import DEFAULT_POOL, HeaderRules, Redirect, RouteConfig

MAX_HOSTS_CACHED: Final = 1024
# bytes.partition, held (the compiled build would look its name up on every call): it takes its
# one argument directly, where find's optional ones go through a tuple and a format string (some
# 800 instructions a call against 200).
_partition: Final = bytes.partition
_UNRESERVED: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def normalize_path(path: bytes) -> bytes:
    """``path`` as routes see it and as it goes on (RFC 3986 6.2.2): percent-encoded unreserved
    characters decoded (``%61`` is ``a``), runs of ``/`` merged, ``.`` and ``..`` segments
    resolved (never above the root). So ``/public/../admin``, ``//admin`` and ``/%61dmin`` all
    reach a route for ``/admin``, not around it. ``%2F`` stays encoded: it is not a separator."""
    # find, not `in`: bytes' `in` first tries its argument as an integer, formatting a TypeError
    # that it then drops (some two thousand instructions each time).
    percent = _partition(path, b"%")[1]
    if not percent and not _partition(path, b"/.")[1] and not _partition(path, b"//")[1]:
        return path  # the usual case: nothing to do
    if percent:
        path = _decode_unreserved(path)
    out: list[bytes] = []
    segments = path.split(b"/")
    for segment in segments[1:]:
        if segment == b"" or segment == b".":
            continue
        if segment == b"..":
            if out:
                out.pop()
            continue
        out.append(segment)
    last = segments[-1]
    trailing = len(segments) > 1 and (last == b"" or last == b"." or last == b"..")
    result = b"/" + b"/".join(out)
    if trailing and out:
        result += b"/"
    return result


def _decode_unreserved(path: bytes) -> bytes:
    parts = path.split(b"%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) >= 2 and part[0] in _HEX and part[1] in _HEX:
            char = int(part[:2], 16)
            if char in _UNRESERVED:
                out.append(bytes((char,)) + part[2:])
                continue
            out.append(b"%" + part[:2].upper() + part[2:])
            continue
        out.append(b"%" + part)
    return b"".join(out)


class HeaderEdit:
    """A route's header rules, ready to apply: the names to drop (``remove`` and ``set``), then
    the lines to add (``set``'s, then ``add``'s)."""

    __slots__ = ("drop", "lines", "response_lines")

    def __init__(self, rules: HeaderRules) -> None:
        self.drop = frozenset(n.lower().encode("latin-1") for n in [*rules.remove, *rules.set])
        self.lines: list[Header] = [
            (n.encode("latin-1"), v.encode("latin-1")) for n, v in [*rules.set.items(), *rules.add.items()]
        ]
        self.response_lines = [b"%s: %s\r\n" % line for line in self.lines]

    def apply(self, headers: list[Header]) -> list[Header]:
        drop = self.drop
        kept = [h for h in headers if h[0].lower() not in drop] if drop else list(headers)
        kept += self.lines
        return kept

    def apply_lines(self, parts: list[bytes]) -> list[bytes]:
        """A response head's parts (:class:`~.response.ResponseInfo`: three of the status line,
        then one ``name: value\\r\\n`` per header), edited."""
        drop = self.drop
        kept = parts[:3]
        for line in parts[3:]:
            if not drop or line[: line.index(b":")].lower() not in drop:
                kept.append(line)
        kept += self.response_lines
        return kept


class Route:
    """One compiled route: its conditions, its pool, and what it changes."""

    __slots__ = (
        "name",
        "segment",
        "pool",
        "host",
        "wildcard",
        "prefix",
        "regex",
        "methods",
        "headers",
        "strip",
        "request_edit",
        "response_edit",
        "filters",
        "request_filters",
        "response_filters",
        "redirect",
        "requests",
    )

    def __init__(self, name: str, config: RouteConfig | None = None) -> None:
        self.name = name
        config = config if config is not None else RouteConfig()
        match = config.match
        self.pool = config.pool
        host = match.host
        self.host = host.encode() if host is not None and not host.startswith("*.") else None
        self.wildcard = host[1:].encode() if host is not None and host.startswith("*.") else None  # ".example.com"
        self.prefix = match.path_prefix.encode() if match.path_prefix is not None else None
        # The first path segment every path this route matches begins with, when its prefix holds
        # a whole one ("/v1/users" -> b"v1"; not "/v1", which "/v10" matches too): for the index.
        prefix = self.prefix
        cut = -1 if prefix is None else prefix.find(b"/", 1)
        self.segment = prefix[1:cut] if prefix is not None and cut > 0 else None
        self.regex = re.compile(match.path_regex.encode()) if match.path_regex is not None else None
        self.methods = frozenset(m.encode() for m in match.methods) if match.methods else None
        self.headers = tuple((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in match.headers.items())
        self.strip = config.strip_prefix.encode() if config.strip_prefix is not None else None
        self.request_edit = None if config.request_headers.empty else HeaderEdit(config.request_headers)
        self.response_edit = None if config.response_headers.empty else HeaderEdit(config.response_headers)
        self.filters: list[LoadedFilter] = [load_filter(spec) for spec in config.filters]
        self.request_filters = [f for f in self.filters if f.on_request is not None]
        self.response_filters = [f for f in self.filters if f.on_response is not None]
        self.redirect = config.redirect
        self.requests = 0  # requests it took (omnixan_lb_route_requests_total), kept across reloads by name

    @property
    def rewrites_request(self) -> bool:
        return self.strip is not None or self.request_edit is not None

    def matches(self, host: bytes, path: bytes, info: RequestInfo) -> bool:
        # Slices compared, not startswith/endswith: those parse optional arguments through a tuple
        # and a format string, several times the cost of the comparison itself.
        if self.host is not None and host != self.host:
            return False
        wildcard = self.wildcard
        if wildcard is not None and (len(host) <= len(wildcard) or host[-len(wildcard) :] != wildcard):
            return False
        prefix = self.prefix
        if prefix is not None and path[: len(prefix)] != prefix:
            return False
        if self.regex is not None and self.regex.fullmatch(path) is None:
            return False
        if self.methods is not None and info.method not in self.methods:
            return False
        if not self.headers:
            return True  # no generator made for the usual route
        return all(any(n.lower() == name and v == value for n, v in info.headers) for name, value in self.headers)

    def rewrite(self, info: RequestInfo, path: bytes, query: bytes) -> None:
        """Apply the path (normalized, then ``strip_prefix``) and the request header rules to ``info``."""
        strip = self.strip
        if strip is not None and path[: len(strip)] == strip:
            rest = path[len(strip) :]
            path = rest if rest[:1] == b"/" else b"/" + rest
        target = path + query
        if target != info.target:
            info.target = target
            info.raw_head = None  # the request line changes: the head is written anew
        edit = self.request_edit
        if edit is not None:
            info.headers = edit.apply(info.headers)
            info.raw_head = None

    def edit_response(self, parts: list[bytes]) -> list[bytes]:
        edit = self.response_edit
        return parts if edit is None else edit.apply_lines(parts)


def request_host(host: bytes | None) -> bytes:
    """A Host value as routes compare it: lowercased, without its port or a final dot."""
    if not host:
        return b""
    if host[0] == 0x5B:  # "[v6]:port"
        end = host.find(b"]")
        return host[: end + 1].lower() if end >= 0 else host.lower()
    name = host.partition(b":")[0].lower()
    return name[:-1] if name.endswith(b".") else name


class _Candidates:
    """Routes in table order, indexed by the first path segment their prefix fixes: the routes a
    path may match are those of its segment and those that fix none, still in table order."""

    __slots__ = ("by_segment", "generic")

    def __init__(self, routes: list[Route]) -> None:
        fixed: dict[bytes, list[int]] = {}
        generic: list[int] = []
        for i, route in enumerate(routes):
            if route.segment is not None:
                fixed.setdefault(route.segment, []).append(i)
            else:
                generic.append(i)
        self.generic = [routes[i] for i in generic]
        self.by_segment = {seg: [routes[i] for i in sorted(own + generic)] for seg, own in fixed.items()}

    def of(self, path: bytes) -> list[Route]:
        by_segment = self.by_segment
        if not by_segment:
            return self.generic
        return by_segment.get(_partition(path[1:], b"/")[0], self.generic)


class RouteTable:
    """The compiled ``routes`` of one config (see the module docstring)."""

    __slots__ = ("routes", "fallback", "_by_host", "_others", "_hosts")

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self.routes = [Route(r.name or f"route-{i}", r) for i, r in enumerate(routes)]
        self.fallback = Route(DEFAULT_POOL)  # no route matched: the default pool, nothing changed
        exact: dict[bytes, list[int]] = {}
        others: list[int] = []
        for i, route in enumerate(self.routes):
            if route.host is not None:
                exact.setdefault(route.host, []).append(i)
            else:
                others.append(i)
        self._others = _Candidates([self.routes[i] for i in others])
        # For each exact host: its own routes and the others, in the table's order.
        self._by_host = {
            host: _Candidates([self.routes[i] for i in sorted(own + others)]) for host, own in exact.items()
        }
        self._hosts: dict[bytes | None, bytes] = {}  # Host values seen -> request_host of each

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, info: RequestInfo) -> Route:
        """The route that takes ``info`` (the fallback when none does), with its rewrites applied."""
        raw_host = info.host
        host = self._hosts.get(raw_host)
        if host is None:
            host = request_host(raw_host)
            if len(self._hosts) >= MAX_HOSTS_CACHED:
                self._hosts.clear()
            self._hosts[raw_host] = host
        target = info.target
        path, mark, query = _partition(target, b"?")
        if mark:
            query = mark + query
        if target != b"*":
            path = normalize_path(path)
        candidates = self._by_host.get(host, self._others).of(path)
        for route in candidates:
            if route.matches(host, path, info):
                route.requests += 1
                route.rewrite(info, path, query)
                return route
        self.fallback.requests += 1
        self.fallback.rewrite(info, path, query)
        return self.fallback

    def keep_counts(self, old: RouteTable) -> None:
        """Carry ``old``'s request counts over to the routes of this table of the same name (a reload)."""
        counts = {route.name: route.requests for route in old.routes}
        for route in self.routes:
            route.requests = counts.get(route.name, 0)
        self.fallback.requests = old.fallback.requests


def redirect_answer(redirect: Redirect, info: RequestInfo, request_id: str, *, close: bool) -> bytes:
    """A redirect route's answer: ``Location`` is ``to``, with the request's path and query after
    it when ``keep_path`` (``to``'s own final ``/`` then dropped)."""
    location = redirect.to.encode("latin-1")
    if redirect.keep_path and info.target != b"*":
        location = location.rstrip(b"/") + info.target
    status = redirect.status
    return b"HTTP/1.1 %d %s\r\nLocation: %s\r\nContent-Length: 0\r\nX-Request-ID: %s\r\n%s\r\n" % (
        status,
        REASONS[status],
        location,
        request_id.encode(),
        b"Connection: close\r\n" if close else b"",
    )
