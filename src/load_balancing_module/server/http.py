"""HTTP/1.1 rules of the proxy: request checks, header rewriting, the proxy's own answers.

Pure functions over raw ``bytes``, no I/O. The client side (:mod:`.proxy`)
collects a request head with the llhttp parser and calls
:func:`inspect_request`, which refuses what llhttp lets through but a proxy
must not forward:

- any ``Transfer-Encoding`` other than exactly ``chunked`` (``gzip, chunked``,
  ``identity, chunked``), a second one, one in an HTTP/1.0 request, or one
  written with unusual whitespace (:func:`check_raw_transfer_encoding`);
- ``Content-Length`` together with ``Transfer-Encoding``, or two that differ;
- a missing or repeated ``Host`` in HTTP/1.1, versions other than 1.0 and 1.1;
- ``CONNECT``, and a WebSocket upgrade that carries a body.

llhttp itself (strict, no lenient flags) refuses obs-fold, bare CR or LF,
control characters in values, ``Transfer-Encoding : chunked`` and signed or
non-numeric lengths. Two things llhttp cannot be told are read here instead:
a request's method (:func:`request_method`: any token, where llhttp knows a
fixed list) and a chunk-size line (:func:`chunk_size`: optional whitespace
around ``;`` and ``=``, which llhttp refuses). The proxy never forwards the
client's framing: it sends its own ``Content-Length`` or re-encodes chunks, so
whatever framing a backend would have read differently never reaches it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, Protocol

from ..enums import WorkloadType
from .headers import (
    CONNECTION,
    CONTENT_LENGTH,
    COOKIE,
    DROP,
    EXPECT,
    FORWARDED_AS_IS,
    FORWARDED_FOR,
    FORWARDED_HOST,
    FORWARDED_PROTO,
    HOST_HEADER,
    KEEP,
    REQUEST_ID,
    REQUEST_SPELLINGS,
    SESSION_ID,
    TRANSFER_ENCODING,
    UPGRADE,
    WORKLOAD,
    Header,
    action,
    tokens,
)

AFFINITY_COOKIE = b"OMNIXAN_AFFINITY"
MAX_ID_LENGTH = 512  # Request.request_id and Request.session_id allow no more

_WORKLOADS = {w.value.encode(): w for w in WorkloadType}
_TOKEN_ID = re.compile(rb"[!-~]{1,%d}" % MAX_ID_LENGTH)  # visible ASCII, no spaces
_HOST = re.compile(rb"[A-Za-z0-9.\-_~%!$&'()*+,;=:\[\]]*")
_RAW_TE = re.compile(rb"\ntransfer-encoding:([^\r\n]*)", re.IGNORECASE)
# RFC 9110 5.6.2: tchar, the characters of a token (a method, a field name, a chunk extension's name).
_TCHARS: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'  # quoted-string, with quoted-pairs
# A chunk-size line (RFC 9112 7.1, 7.1.1): 1*HEXDIG, then *( BWS ";" BWS name [ BWS "=" BWS value ] ), CRLF.
# Whitespace is also let through before the CRLF ("5 " CRLF): the proxy re-encodes every chunk, so
# no backend reads the client's line. At most 16 significant digits: a size below 2**64. Written so
# that no part can match what another matches (0+ or a first significant digit...): a line that
# fails costs one pass, not one per way of splitting it (Python 3.10 has no possessive quantifiers).
_CHUNK_LINE: Final = re.compile(
    rb"(0+|0*[1-9A-Fa-f][0-9A-Fa-f]{0,15})"
    rb"(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*[ \t]*\r\n" % (_TOKEN, _TOKEN, _QUOTED)
)
MAX_METHOD: Final = 32  # bytes; the longest registered method (UPDATEREDIRECTREF) has 17
# The methods llhttp is given as they came. llhttp knows a fixed list of methods; for any other
# token it is given "GET" in its place (it reads the rest of a request line the same way for all
# of these), and the proxy keeps the real one. CONNECT is here for llhttp to read its
# authority-form target (it is then refused with 405).
LLHTTP_METHODS: Final = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT"}
)
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})  # may be retried after being sent
_CLASSICAL: Final = WorkloadType.CLASSICAL
# A translation that changes "_" and nothing else (translate is native in the compiled build).
_UNDERSCORE_MARKED: Final = bytes(range(256)).replace(b"_", b"-")


class HttpError(Exception):
    """A request the proxy answers itself, with ``status`` and a JSON error body."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class RequestInfo:
    """What the proxy needs from one request head, read in a single pass."""

    __slots__ = (
        "method",
        "target",
        "http11",
        "keep_alive",
        "headers",
        "content_length",
        "chunked",
        "host",
        "forwarded_for",
        "forwarded_proto",
        "forwarded_host",
        "request_id",
        "session_id",
        "cookie_session",
        "workload",
        "websocket",
        "expect_continue",
        "idempotent",
        "has_body",
        "plain",
        "upgrade",
        "raw_head",
    )

    def __init__(self, method: bytes, target: bytes, http11: bool, keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.http11 = http11
        self.keep_alive = keep_alive
        self.headers: list[Header] = []  # end-to-end headers, forwarded as they came
        self.content_length: int | None = None
        self.chunked = False
        self.host: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.forwarded_proto: bytes | None = None
        self.forwarded_host: bytes | None = None
        self.request_id: str | None = None
        self.session_id: str | None = None
        self.cookie_session: str | None = None
        self.workload = _CLASSICAL
        self.websocket = False
        self.expect_continue = False
        # IDEMPOTENT, spelled out: comparing a few bytes beats hashing them into a set
        self.idempotent = (
            method == b"GET" or method == b"HEAD" or method == b"PUT" or method == b"DELETE" or method == b"OPTIONS"
        )
        self.has_body = False  # chunked, or a Content-Length above 0
        # Every header is forwarded as it came and there is no body: the client's own head can be
        # sent on (request_head), once the proxy's lines are added.
        self.plain = False
        self.upgrade = False  # llhttp saw an Upgrade request (Upgrade, and Connection: upgrade)
        self.raw_head: bytes | None = None  # that head without its blank line, when it is at hand


class HeadFlags(Protocol):
    """What llhttp read of a head's Connection, Proxy-Connection and Upgrade headers: its parser."""

    def should_keep_alive(self) -> bool: ...

    def should_upgrade(self) -> bool: ...


def inspect_request(
    method: bytes, target: bytes, version: str, headers: Sequence[Header], flags: HeadFlags
) -> RequestInfo:
    """Check a parsed request head and pick out what the proxy uses; :class:`HttpError` if refused.

    ``flags`` (llhttp's getters) are only asked when the head has one of the headers they read:
    without any, llhttp keeps an HTTP/1.1 connection, not an HTTP/1.0 one, and sees no upgrade."""
    if version != "1.1" and version != "1.0":
        raise HttpError(505, f"HTTP/{version} is not supported")
    if method == b"CONNECT":
        raise HttpError(405, "CONNECT is not supported by this proxy")
    authority = None
    if not target or target[0] != 0x2F:  # not "/": asterisk- or absolute-form
        if target == b"*":
            if method != b"OPTIONS":
                raise HttpError(400, "the request target * is for OPTIONS only")
        else:
            authority, target = _absolute_form(target)
    http11 = version == "1.1"
    info = RequestInfo(method, target, http11, http11)
    kept = info.headers
    hosts = 0
    # Most requests have none of these three: the lists are made when one shows up.
    connection: list[bytes] | None = None
    upgrade_tokens: list[bytes] | None = None
    forwarded_for: list[bytes] | None = None
    rewritten = False  # a header is dropped or rewritten on the way
    flagged = False  # a header llhttp's flags read (Connection, Proxy-Connection, Upgrade): ask them
    for header in headers:
        name, value = header
        what = action(name, REQUEST_SPELLINGS)
        if what == KEEP:
            # X_Forwarded_For: a backend that folds _ into - would take it for its own. (Not `b"_" in
            # name`: bytes' `in` first tries its argument as an integer, and formats a TypeError.)
            if name.translate(_UNDERSCORE_MARKED) != name:
                rewritten = True
                continue
            kept.append(header)
            continue
        if what in FORWARDED_AS_IS:
            kept.append(header)
        else:
            rewritten = True
        if what == DROP:  # Proxy-Connection among them
            flagged = True
            continue
        if what == HOST_HEADER:
            hosts += 1
            info.host = value
        elif what == CONTENT_LENGTH:
            if not value.isdigit() or len(value) > 18:
                raise HttpError(400, "invalid Content-Length")
            length = int(value)
            if info.content_length is not None and info.content_length != length:
                raise HttpError(400, "conflicting Content-Length headers")
            info.content_length = length
        elif what == TRANSFER_ENCODING:
            if info.chunked:
                raise HttpError(400, "more than one Transfer-Encoding header")
            if value.lower() != b"chunked":
                raise HttpError(400, "Transfer-Encoding other than 'chunked' is not accepted")
            info.chunked = True
        elif what == CONNECTION:
            flagged = True
            connection = tokens(value) if connection is None else connection + tokens(value)
        elif what == UPGRADE:
            flagged = True
            upgrade_tokens = tokens(value) if upgrade_tokens is None else upgrade_tokens + tokens(value)
        elif what == FORWARDED_FOR:
            forwarded_for = [value] if forwarded_for is None else [*forwarded_for, value]
        elif what == FORWARDED_PROTO:
            info.forwarded_proto = value
        elif what == FORWARDED_HOST:
            info.forwarded_host = value
        elif what == REQUEST_ID:
            if _TOKEN_ID.fullmatch(value):
                info.request_id = value.decode("ascii")
        elif what == SESSION_ID:
            if not _TOKEN_ID.fullmatch(value):
                raise HttpError(400, f"X-Session-ID must be 1 to {MAX_ID_LENGTH} visible ASCII characters")
            info.session_id = value.decode("ascii")
        elif what == WORKLOAD:
            workload = _WORKLOADS.get(value.strip().lower())
            if workload is None:
                choices = ", ".join(w.value for w in WorkloadType)
                raise HttpError(400, f"X-Workload-Type must be one of: {choices}")
            info.workload = workload
        elif what == COOKIE:
            if info.cookie_session is None:
                info.cookie_session = _affinity_cookie(value)
        elif what == EXPECT and value.lower() == b"100-continue":
            info.expect_continue = True
    if authority is not None:  # RFC 9112 3.2.2: the target's authority replaces Host
        info.host = authority
        info.headers = [(n, v) for n, v in kept if n.lower() != b"host"]
        info.headers.append((b"Host", authority))
        hosts = 1
        rewritten = True
    info.has_body = info.chunked or bool(info.content_length)
    if info.chunked:
        if info.content_length is not None:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if not info.http11:
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if info.http11 and hosts != 1:
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")
    if info.host is not None and not _valid_host(info.host):
        raise HttpError(400, "invalid Host header")
    if forwarded_for is not None:
        info.forwarded_for = forwarded_for[0] if len(forwarded_for) == 1 else b", ".join(forwarded_for)
    upgrade = False
    if flagged:
        info.keep_alive = flags.should_keep_alive()
        upgrade = info.upgrade = flags.should_upgrade()
    if upgrade:
        # llhttp saw Connection: upgrade and an Upgrade header. Only WebSocket is tunnelled; any other
        # upgrade (h2c...) is ignored and the request proxied as plain HTTP/1.1.
        websocket = upgrade_tokens is not None and b"websocket" in upgrade_tokens
        info.websocket = websocket and method == b"GET" and info.http11
        if info.websocket and info.has_body:
            raise HttpError(400, "a WebSocket upgrade request cannot have a body")
    if connection:
        _drop_named(info, connection)
    info.plain = not rewritten and not info.has_body and info.http11 and not upgrade
    return info


def request_method(data: bytes, start: int) -> bytes | None:
    """The method of the request line that begins at ``data[start]``: any token (RFC 9112 3.1) of at
    most :data:`MAX_METHOD` bytes. None while what has come could still begin one (no space yet);
    :class:`HttpError` once it cannot (400; 501 for a longer one, as RFC 9112 3 says)."""
    space = data.find(b" ", start, start + MAX_METHOD + 1)
    method = data[start:space] if space >= 0 else data[start : start + MAX_METHOD + 1]
    if method.translate(None, _TCHARS) or (space == start):  # a byte that is not a token's, or no method
        raise HttpError(400, "malformed request: invalid method")
    if space < 0:
        if len(method) > MAX_METHOD:
            raise HttpError(501, f"method longer than {MAX_METHOD} bytes")
        return None
    return method


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line, CRLF included; its extensions are checked and dropped (the
    proxy re-encodes chunks). 400 for anything but the RFC's grammar (whitespace before the CRLF
    aside): a bare LF or CR, a sign, ``0x``, more than 16 significant digits, a bad extension."""
    match = _CHUNK_LINE.fullmatch(line)
    if match is None:
        raise HttpError(400, "malformed request: invalid chunk-size line")
    return int(match.group(1), 16)


# Host values seen lately that passed _HOST (clients send the same few again and again), and the
# latest of them, which one comparison finds (in a Final list: the compiled build reads a module's
# other globals from its dictionary).
_GOOD_HOSTS: Final[dict[bytes, bool]] = {}
_LATEST_HOST: Final = [b""]


def _valid_host(host: bytes) -> bool:
    if host == _LATEST_HOST[0]:
        return True
    if host not in _GOOD_HOSTS:
        if not _HOST.fullmatch(host):
            return False
        if len(_GOOD_HOSTS) >= 256:
            _GOOD_HOSTS.clear()
        _GOOD_HOSTS[host] = True
    _LATEST_HOST[0] = host
    return True


# Connection may not make these hop-by-hop: the proxy needs them end to end (it writes the framing).
_NOT_NAMEABLE = frozenset({b"close", b"keep-alive", b"upgrade", b"host", b"content-length", b"transfer-encoding"})


def _absolute_form(target: bytes) -> tuple[bytes, bytes]:
    """``http://authority/path?q`` -> (authority, ``/path?q``); 400 for anything else."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise HttpError(400, "the request target must start with / (or be an http:// or https:// URL)")
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if not authority or b"@" in authority or not _HOST.fullmatch(authority):
        raise HttpError(400, "invalid authority in the request target")
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


def _drop_named(info: RequestInfo, connection: list[bytes]) -> None:
    """Remove the headers that ``Connection`` names (they are hop-by-hop too), but never Host or
    the framing headers: a client must not be able to strip those on their way to the backend."""
    named = {t for t in connection if t not in _NOT_NAMEABLE}
    if named:
        info.headers = [(n, v) for n, v in info.headers if n.lower() not in named]


def check_raw_transfer_encoding(raw_head: bytes) -> None:
    """Refuse a ``Transfer-Encoding`` line written other than ``Transfer-Encoding: chunked``.

    llhttp drops the whitespace around a value, so a tab or several spaces
    before ``chunked`` (which some servers read differently) only shows in the
    raw bytes: ``raw_head``, the head exactly as it came.
    """
    for match in _RAW_TE.finditer(raw_head):
        if match.group(1).lower() not in (b" chunked", b"chunked"):
            raise HttpError(400, "obfuscated Transfer-Encoding header")


def cookie_in(headers: Sequence[Header], wanted: bytes) -> str | None:
    """The value of cookie ``wanted`` in the first Cookie header that has it (None if none does,
    or if it is not an id of visible ASCII)."""
    for name, value in headers:
        if len(name) == 6 and name.lower() == b"cookie":
            found = _affinity_cookie(value, wanted)
            if found is not None:
                return found
    return None


def _affinity_cookie(value: bytes, wanted: bytes = AFFINITY_COOKIE) -> str | None:
    for part in value.split(b";"):
        name, _, cookie = part.strip().partition(b"=")
        if name == wanted:
            cookie = cookie.strip(b'"')
            return cookie.decode("ascii") if _TOKEN_ID.fullmatch(cookie) else None
    return None


def request_head(info: RequestInfo, extra: list[bytes], framing: bytes) -> bytes:
    """The request head sent upstream: the request line, end-to-end headers, then ``extra`` lines.

    A plain request whose raw head is at hand is sent as the client wrote it (llhttp, strict, has
    checked every byte of it, and none of its headers is dropped or rewritten) plus ``extra``."""
    raw = info.raw_head
    if raw is not None:
        parts = [raw]
        for line in extra:  # the compiled build's list.extend goes through a general slice assignment
            parts.append(line)
        parts.append(b"\r\n")
        return b"".join(parts)
    parts = [info.method, b" ", info.target, b" HTTP/1.1\r\n"]
    for name, value in info.headers:
        parts += (name, b": ", value, b"\r\n")
    parts.extend(extra)
    if info.websocket:
        parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    parts += (framing, b"\r\n")
    return b"".join(parts)


def request_framing(info: RequestInfo) -> bytes:
    """The header that frames the body sent upstream (the client's framing is never forwarded)."""
    if info.chunked:
        return b"Transfer-Encoding: chunked\r\n"
    if info.content_length is not None:
        return b"Content-Length: %d\r\n" % info.content_length
    return b""
