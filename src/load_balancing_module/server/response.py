"""The response side of the proxy's HTTP rules: a backend's response head, and the proxy's own answers.

:class:`ResponseInfo` collects a backend's head header by header (the
upstream parser's callbacks), dropping hop-by-hop headers and refusing
framing the proxy will not forward; :func:`response_head` writes it for the
client with the proxy's lines; :func:`error_response` is a complete answer of
the proxy itself (a JSON body naming the error and the request id).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Final

from .headers import (
    CONNECTION,
    CONTENT_LENGTH,
    KEEP,
    RESPONSE_SPELLINGS,
    TRANSFER_ENCODING,
    UPGRADE,
    action,
    tokens,
)

REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}


class UpstreamProtocolError(Exception):
    """A backend's response the proxy will not forward."""


class ResponseInfo:
    """An upstream response head, built header by header as the parser reports them.

    ``parts`` holds the status line (three parts) and every end-to-end header line, ready to be
    joined: :func:`response_head` adds the proxy's lines and the blank line.
    A header the proxy refuses sets ``error`` (read when the head is complete).
    """

    __slots__ = ("status", "parts", "content_length", "chunked", "upgrade", "error", "_connection")

    def __init__(self) -> None:
        self.status = 0
        self.parts: list[bytes] = [b"", b"", b"\r\n"]  # the status line: set by complete()
        self.content_length: bytes | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        self.error: str | None = None
        self._connection: list[bytes] | None = None  # tokens of Connection that name other headers

    def reset(self) -> None:
        """As new, for the next head on the same connection: one object per upstream connection,
        not one per response (the exchange reads it while the head is handed on, and keeps nothing)."""
        self.status = 0
        self.parts = [b"", b"", b"\r\n"]
        self.content_length = None
        self.chunked = False
        self.upgrade = None
        self.error = None
        self._connection = None

    def add(self, name: bytes, value: bytes) -> None:
        what = action(name, RESPONSE_SPELLINGS)
        if what == KEEP:
            # one line, one part: the compiled build writes it in one allocation (CPyBytes_Build),
            # and the join of the head that follows has a part per header, not four
            self.parts.append(b"%s: %s\r\n" % (name, value))
        elif what == CONTENT_LENGTH:
            self.content_length = value
        elif what == CONNECTION:
            if value != b"keep-alive" and value != b"close":  # the usual values name no header
                named = [t for t in tokens(value) if t not in (b"close", b"keep-alive", b"upgrade")]
                self._connection = named if self._connection is None else self._connection + named
        elif what == TRANSFER_ENCODING:
            if value.lower() != b"chunked" or self.chunked:
                self.error = f"backend sent Transfer-Encoding {value!r}"
            self.chunked = True
        elif what == UPGRADE:
            self.upgrade = value

    def complete(self, status: int, reason: bytes) -> None:
        """The head is complete: set the status line, drop the headers that Connection names."""
        self.status = status
        prefix = _STATUS_PREFIX.get(status)
        parts = self.parts
        parts[0] = prefix if prefix is not None else b"HTTP/1.1 %d " % status
        parts[1] = reason
        if self._connection:
            named = set(self._connection)
            kept = parts[:3]
            for line in parts[3:]:
                if line[: line.index(b":")].lower() not in named:  # a name has no colon
                    kept.append(line)
            self.parts = kept


_STATUS_PREFIX: Final = {status: b"HTTP/1.1 %d " % status for status in range(100, 600)}


def response_head(info: ResponseInfo, extra: list[bytes]) -> bytes:
    """A response head for the client: status line, the backend's end-to-end headers, ``extra`` lines.

    Made once per response: it uses up ``info.parts``."""
    parts = info.parts
    for line in extra:  # the compiled build's list.extend goes through a general slice assignment
        parts.append(line)
    parts.append(b"\r\n")
    return b"".join(parts)


def error_response(
    status: int,
    message: str,
    request_id: str | None,
    *,
    close: bool,
    retry_after: int | None = None,
    extra: Iterable[bytes] = (),
) -> bytes:
    """A complete response of the proxy itself, with a JSON body ``{"error": ..., "request_id": ...}``."""
    body = json.dumps({"error": message, "request_id": request_id}).encode()
    parts = [
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        % (status, REASONS.get(status, b"Error"), len(body))
    ]
    if request_id is not None:
        parts.append(b"X-Request-ID: %s\r\n" % request_id.encode())
    if retry_after is not None:
        parts.append(b"Retry-After: %d\r\n" % retry_after)
    parts.extend(extra)
    if close:
        parts.append(b"Connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)


# A Host header's value: a DNS name or IPv4 address, or an IPv6 literal in brackets; a port.
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?)(?::[0-9]{0,5})?")


def https_location(host: bytes | None, target: bytes, port: int) -> bytes | None:
    """``https://<host><target>`` for a request to ``host`` (its port dropped; ``port`` added unless
    443); None if ``host`` is missing or not a host name."""
    match = _HOST.fullmatch(host) if host else None
    if match is None:
        return None
    name = match.group(1)
    path = target if target[:1] == b"/" else b"/"  # OPTIONS *: the site's root
    if port == 443:
        return b"https://%s%s" % (name, path)
    return b"https://%s:%d%s" % (name, port, path)


def redirect_response(location: bytes, request_id: str | None, *, close: bool) -> bytes:
    """``308 Permanent Redirect`` to ``location`` (the method and body are kept by the client), no body."""
    parts = [b"HTTP/1.1 308 Permanent Redirect\r\nLocation: %s\r\nContent-Length: 0\r\n" % location]
    if request_id is not None:
        parts.append(b"X-Request-ID: %s\r\n" % request_id.encode())
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
