"""The access log's line formats: one request's facts (:class:`Entry`) into one line.

``access_log: {format: ...}`` names ``json`` (the default: :class:`JsonFormat`),
``combined`` (the Apache/NGINX combined log format) or a template of
NGINX-like ``$variables`` (:data:`VARIABLES`, plus ``$http_<name>`` for any
request header). :func:`build` compiles a format once per config: a template
becomes a list of (getter, literal) parts, so a line costs one call per
variable and no parsing; :func:`check` is the config's validation (an unknown
variable is an error naming it). Values that are missing are ``null`` in JSON
and ``-`` in a template, as NGINX writes them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from .headers import Header

_quote: Final = encode_basestring_ascii  # the C escaper of json.dumps

# Apache's and NGINX's "combined" (NGINX has $remote_user where this has its usual "-").
COMBINED: Final = (
    '$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"'
)

# Each variable of a template, and what it is (docs/config.md lists the same).
VARIABLES: Final[dict[str, str]] = {
    "remote_addr": "the client's IP (a trusted proxy's X-Forwarded-For or PROXY header applied)",
    "client_ip": "the same as remote_addr",
    "time_local": "the time in the common log format, local time: 04/Dec/2026:14:39:57 +0000",
    "time_iso8601": "UTC, ISO 8601 with milliseconds (the JSON's time)",
    "msec": "seconds since the epoch, with milliseconds",
    "request": 'the request line: "GET /a?b=1 HTTP/1.1"',
    "request_method": "the method",
    "method": "the same as request_method",
    "request_uri": "the request target, query included",
    "uri": "the path: the request target without its query",
    "path": "the same as uri",
    "args": "the query (after ?)",
    "server_protocol": "HTTP/1.1 or HTTP/1.0",
    "status": "the status the client got (499: it went away first)",
    "host": "the Host header as the client sent it",
    "http_user_agent": "the User-Agent header",
    "user_agent": "the same as http_user_agent",
    "http_referer": "the Referer header",
    "request_id": "the X-Request-ID, the client's or the proxy's",
    "ssl_protocol": "the TLS version of the client's connection (TLSv1.3), - on a plain listener",
    "tls_version": "the same as ssl_protocol",
    "request_bytes": "bytes of the request body received from the client",
    "bytes_sent": "bytes sent to the client: head and body",
    "response_bytes": "the same as bytes_sent",
    "body_bytes_sent": "bytes of the response body sent to the client (without chunked framing)",
    "response_body_bytes": "the same as body_bytes_sent",
    "route": "the name of the route that took the request",
    "pool": "the pool the request went to",
    "upstream_addr": "the backend of the last try (its id, host:port)",
    "backend_id": "the same as upstream_addr",
    "attempts": "tries on backends",
    "upstream_connect_time": "seconds the last try took to connect (0 for a pooled connection), to the microsecond",
    "upstream_connect_ms": "the same in milliseconds",
    "upstream_header_time": "seconds from the last try's start to its response head, to the microsecond",
    "upstream_header_ms": "the same in milliseconds",
    "upstream_response_time": "seconds from the first try to the end of the backend's response",
    "upstream_ms": "the same in milliseconds",
    "request_time": "seconds from the complete request head to the end of the answer",
    "total_ms": "the same in milliseconds",
}
HEADER_PREFIX: Final = "http_"  # $http_x_forwarded_for: the request header X-Forwarded-For
_VARIABLE: Final = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+)|(\$))")
_SAFE: Final = re.compile(r"[ !#-\[\]-~]*")  # printable ASCII but " and \: as it is in a template's line


class Entry:
    """What the access log says of one request; made only when the log is on."""

    __slots__ = (
        "time",
        "request_id",
        "client_ip",
        "method",
        "target",
        "http11",
        "status",
        "backend_id",
        "attempts",
        "upstream_ms",
        "total_ms",
        "connect_ms",
        "header_ms",
        "request_bytes",
        "response_bytes",
        "body_bytes",
        "host",
        "headers",
        "tls_version",
        "route",
        "pool",
    )

    def __init__(
        self, request_id: str | None, client_ip: str | None, method: bytes | None, target: bytes | None, status: int
    ) -> None:
        self.time = 0.0  # wall-clock seconds, set by the log
        self.request_id = request_id
        self.client_ip = client_ip
        self.method = method  # None: refused before its request line was read
        self.target = target
        self.http11 = True
        self.status = status
        self.backend_id: str | None = None
        self.attempts = 0
        self.upstream_ms: float | None = None
        self.total_ms = 0.0
        self.connect_ms: float | None = None
        self.header_ms: float | None = None
        self.request_bytes = 0
        self.response_bytes = 0  # head and body
        self.body_bytes = 0
        self.host: bytes | None = None
        self.headers: list[Header] = []  # the request's, for $http_<name>, user agent and referer
        self.tls_version: str | None = None
        self.route: str | None = None
        self.pool: str | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first request header called ``name`` (lower case), or None."""
        size = len(name)
        for key, value in self.headers:
            if len(key) == size and key.lower() == name:
                return value
        return None

    def path(self) -> str | None:
        target = self.target
        return None if target is None else target.partition(b"?")[0].decode("latin-1")

    def protocol(self) -> str | None:
        return None if self.method is None else "HTTP/1.1" if self.http11 else "HTTP/1.0"


# -- values as text ------------------------------------------------------------------------------------


def _thousandths(value: int) -> str:
    """``value`` / 1000 with three decimals (integer arithmetic: a float's repr or round costs more)."""
    return str(value // 1000) + "." + str(value % 1000 + 1000)[1:]


def millis(value: float | None) -> str:
    """A duration in milliseconds, to the microsecond; null for None."""
    return "null" if value is None else _thousandths(int(value * 1000.0 + 0.5))


def _seconds(value: float | None) -> str:
    """A duration given in milliseconds, as seconds to the microsecond (NGINX's unit, finer); - for None."""
    if value is None:
        return "-"
    micros = int(value * 1000.0 + 0.5)
    return str(micros // 1000000) + "." + str(micros % 1000000 + 1000000)[1:]


def _json_text(value: bytes | None) -> str:
    """Header bytes as a JSON string (each byte one character, as latin-1), or null."""
    return "null" if value is None else _quote(value.decode("latin-1"))


def _text(value: str | None) -> str:
    """A value in a template's line: - when missing; ``"``, ``\\`` and bytes outside printable ASCII
    as ``\\xHH``, as NGINX escapes them, so that a value cannot break the line's quoting."""
    if value is None or value == "":
        return "-"
    if _SAFE.fullmatch(value):
        return value
    return "".join(c if " " <= c <= "~" and c != '"' and c != "\\" else f"\\x{ord(c) & 0xFF:02X}" for c in value)


def _bytes_text(value: bytes | None) -> str:
    return "-" if value is None else _text(value.decode("latin-1"))


class Stamps:
    """The time as text, the part that changes once a second made once a second."""

    def __init__(self) -> None:
        self._utc_second = -1
        self._utc = ""
        self._local_second = -1
        self._local = ""

    def iso(self, now: float) -> str:
        """UTC, ISO 8601 with milliseconds: 2026-12-04T14:39:57.123Z."""
        second = int(now)
        if second != self._utc_second:
            self._utc_second = second
            self._utc = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        return self._utc + "." + str(int((now - second) * 1000.0) + 1000)[1:] + "Z"

    def local(self, now: float) -> str:
        """The common log format's time, in the local time zone: 04/Dec/2026:14:39:57 +0000."""
        second = int(now)
        if second != self._local_second:
            self._local_second = second
            # %b is the C locale's month: the process does not change its locale.
            self._local = datetime.fromtimestamp(second).astimezone().strftime("%d/%b/%Y:%H:%M:%S %z")
        return self._local


# -- the formats -----------------------------------------------------------------------------------------


class Format:
    """A line format, built once per config."""

    def __init__(self) -> None:
        self.stamps = Stamps()

    def line(self, entry: Entry) -> str:
        raise NotImplementedError

    def fields(self, entry: Entry) -> dict[str, Any]:
        """The JSON's fields as a dict (a LogRecord's ``access`` attribute), whatever the format."""
        upstream_ms = entry.upstream_ms
        connect_ms = entry.connect_ms
        header_ms = entry.header_ms
        user_agent = entry.header(b"user-agent")
        host = entry.host
        return {
            "time": self.stamps.iso(entry.time),
            "request_id": entry.request_id,
            "client_ip": entry.client_ip,
            "method": None if entry.method is None else entry.method.decode("latin-1"),
            "path": entry.path(),
            "protocol": entry.protocol(),
            "status": entry.status,
            "host": None if host is None else host.decode("latin-1"),
            "user_agent": None if user_agent is None else user_agent.decode("latin-1"),
            "tls_version": entry.tls_version,
            "route": entry.route,
            "pool": entry.pool,
            "backend_id": entry.backend_id,
            "attempts": entry.attempts,
            "request_bytes": entry.request_bytes,
            "response_bytes": entry.response_bytes,
            "response_body_bytes": entry.body_bytes,
            "upstream_connect_ms": None if connect_ms is None else round(connect_ms, 3),
            "upstream_header_ms": None if header_ms is None else round(header_ms, 3),
            "upstream_ms": None if upstream_ms is None else round(upstream_ms, 3),
            "total_ms": round(entry.total_ms, 3),
        }


def _string(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _plain(value: str | None) -> str:
    """A string that needs no escaping, in quotes."""
    return "null" if value is None else '"' + value + '"'


class JsonFormat(Format):
    """One JSON object per line, its keys those of :meth:`Format.fields`, in that order."""

    def line(self, entry: Entry) -> str:
        method = entry.method
        path = entry.path()
        # Formatted by hand (the same JSON as json.dumps gives, a fraction of the cost); strings escaped.
        # The method (an HTTP token), the client IP (an address) and the TLS version have nothing to escape.
        return (
            f'{{"time":"{self.stamps.iso(entry.time)}","request_id":{_string(entry.request_id)},'
            f'"client_ip":{_plain(entry.client_ip)},"method":{_plain(None if method is None else method.decode())},'
            f'"path":{_string(path)},"protocol":{_plain(entry.protocol())},"status":{entry.status},'
            f'"host":{_json_text(entry.host)},"user_agent":{_json_text(entry.header(b"user-agent"))},'
            f'"tls_version":{_plain(entry.tls_version)},"route":{_string(entry.route)},"pool":{_string(entry.pool)},'
            f'"backend_id":{_string(entry.backend_id)},"attempts":{entry.attempts},'
            f'"request_bytes":{entry.request_bytes},"response_bytes":{entry.response_bytes},'
            f'"response_body_bytes":{entry.body_bytes},"upstream_connect_ms":{millis(entry.connect_ms)},'
            f'"upstream_header_ms":{millis(entry.header_ms)},"upstream_ms":{millis(entry.upstream_ms)},'
            f'"total_ms":{millis(entry.total_ms)}}}'
        )


Getter = Callable[[Entry], str]


def _request_line(entry: Entry) -> str:
    method, target = entry.method, entry.target
    if method is None or target is None:
        return "-"
    return _text(f"{method.decode('latin-1')} {target.decode('latin-1')} {entry.protocol()}")


def _args(entry: Entry) -> str:
    target = entry.target
    return "-" if target is None else _bytes_text(target.partition(b"?")[2])


def _number(value: int) -> str:
    return str(value)


_GETTERS: Final[dict[str, Getter]] = {
    "remote_addr": lambda e: _text(e.client_ip),
    "request": _request_line,
    "request_method": lambda e: _bytes_text(e.method),
    "request_uri": lambda e: _bytes_text(e.target),
    "uri": lambda e: _text(e.path()),
    "args": _args,
    "server_protocol": lambda e: _text(e.protocol()),
    "status": lambda e: _number(e.status),
    "host": lambda e: _bytes_text(e.host),
    "http_user_agent": lambda e: _bytes_text(e.header(b"user-agent")),
    "http_referer": lambda e: _bytes_text(e.header(b"referer")),
    "request_id": lambda e: _text(e.request_id),
    "ssl_protocol": lambda e: _text(e.tls_version),
    "request_bytes": lambda e: _number(e.request_bytes),
    "bytes_sent": lambda e: _number(e.response_bytes),
    "body_bytes_sent": lambda e: _number(e.body_bytes),
    "route": lambda e: _text(e.route),
    "pool": lambda e: _text(e.pool),
    "upstream_addr": lambda e: _text(e.backend_id),
    "attempts": lambda e: _number(e.attempts),
    "upstream_connect_time": lambda e: _seconds(e.connect_ms),
    "upstream_connect_ms": lambda e: _dash(millis(e.connect_ms)),
    "upstream_header_time": lambda e: _seconds(e.header_ms),
    "upstream_header_ms": lambda e: _dash(millis(e.header_ms)),
    "upstream_response_time": lambda e: _seconds(e.upstream_ms),
    "upstream_ms": lambda e: _dash(millis(e.upstream_ms)),
    "request_time": lambda e: _seconds(e.total_ms),
    "total_ms": lambda e: millis(e.total_ms),
}
_ALIASES: Final = {
    "client_ip": "remote_addr",
    "method": "request_method",
    "path": "uri",
    "user_agent": "http_user_agent",
    "tls_version": "ssl_protocol",
    "response_bytes": "bytes_sent",
    "response_body_bytes": "body_bytes_sent",
    "backend_id": "upstream_addr",
}


def _dash(value: str) -> str:
    return "-" if value == "null" else value


class _Header:
    """``$http_<name>``: a request header, bound to its name."""

    def __init__(self, name: bytes) -> None:
        self.name = name

    def get(self, entry: Entry) -> str:
        return _bytes_text(entry.header(self.name))


def parse(template: str) -> list[tuple[str, str]]:
    """``template`` as pairs (the text before a variable, the variable's name), then the text after
    the last variable with the name "". ValueError names an unknown variable or a stray ``$``."""
    parts: list[tuple[str, str]] = []
    literal = ""
    at = 0
    for match in _VARIABLE.finditer(template):
        literal += _literal(template, at, match.start())
        at = match.end()
        if match.group(3) is not None:  # $$: a dollar sign
            literal += "$"
            continue
        name = match.group(1) or match.group(2)
        if name not in VARIABLES and not (name.startswith(HEADER_PREFIX) and len(name) > len(HEADER_PREFIX)):
            raise ValueError(
                f"unknown variable ${name} (the variables are listed in docs/config.md; $http_<name> is a header)"
            )
        parts.append((literal, name))
        literal = ""
    parts.append((literal + _literal(template, at, len(template)), ""))
    return parts


def _literal(template: str, start: int, end: int) -> str:
    """The text between two variables; a ``$`` there starts no variable name."""
    text = template[start:end]
    stray = text.find("$")
    if stray >= 0:
        raise ValueError(f"the $ at character {start + stray} starts no variable name (write $$ for a dollar sign)")
    return text


def template_of(format: str) -> str | None:
    """The template a format names: None for json, the combined format's, or the format itself."""
    if format == "json":
        return None
    return COMBINED if format == "combined" else format


def check(format: str) -> str:
    """``format`` if it is json, combined or a valid template; else ValueError saying what is wrong."""
    template = template_of(format)
    if template is not None:
        if "$" not in template:
            raise ValueError(f"{format!r} is not json, combined, or a template with $variables")
        parse(template)
    return format


class TemplateFormat(Format):
    """A template compiled into parts: the text before the first variable, then (getter, text after)."""

    def __init__(self, template: str) -> None:
        super().__init__()
        pairs = parse(template)
        self.head = pairs[0][0]
        self.parts: list[tuple[Getter, str]] = []
        for i in range(len(pairs) - 1):
            self.parts.append((self._getter(pairs[i][1]), pairs[i + 1][0]))

    def _getter(self, name: str) -> Getter:
        name = _ALIASES.get(name, name)
        if name == "time_local":
            return self._time_local
        if name == "time_iso8601":
            return self._time_iso
        if name == "msec":
            return _msec
        getter = _GETTERS.get(name)
        if getter is not None:
            return getter
        return _Header(name[len(HEADER_PREFIX) :].replace("_", "-").lower().encode("latin-1")).get

    def _time_local(self, entry: Entry) -> str:
        return self.stamps.local(entry.time)

    def _time_iso(self, entry: Entry) -> str:
        return self.stamps.iso(entry.time)

    def line(self, entry: Entry) -> str:
        out = [self.head]
        for getter, literal in self.parts:
            out.append(getter(entry))
            out.append(literal)
        return "".join(out)


def _msec(entry: Entry) -> str:
    return f"{entry.time:.3f}"


def build(format: str) -> Format:
    """The format ``access_log: {format: ...}`` names, compiled (see :func:`check`)."""
    template = template_of(format)
    return JsonFormat() if template is None else TemplateFormat(template)
