"""The head of a request as it goes to a backend, and the request's id.

Made once per request and reused by every try: the client's head with the
proxy's ``X-Forwarded-*`` lines, its ``X-Request-ID`` (the client's, else one of
the proxy's, formatted only when needed) and its own framing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .http import RequestInfo, request_framing, request_head

if TYPE_CHECKING:
    from ..route import RouteResult
    from .context import ProxyContext


class RequestHead:
    """A request's head for backends, and its request id (see the module docstring)."""

    __slots__ = ("_ctx", "_info", "_request_id", "_rid_seq", "_line", "_head")

    def __init__(self, ctx: ProxyContext, info: RequestInfo, request_id: str | None, rid_seq: int) -> None:
        """``request_id``: the client's; when None, the proxy's, number ``rid_seq``."""
        self._ctx = ctx
        self._info = info
        self._request_id = request_id
        self._rid_seq = rid_seq
        self._line: bytes | None = None
        self._head: bytes | None = None

    @property
    def request_id(self) -> str:
        rid = self._request_id
        if rid is None:
            rid = self._request_id = self._ctx.request_id_of(self._rid_seq)
        return rid

    def request_id_line(self) -> bytes:
        """``X-Request-ID: ...`` for both heads, made once."""
        line = self._line
        if line is None:
            if self._request_id is None:  # generated: written straight into the line
                line = self._ctx.rid_line_prefix + str(self._rid_seq).encode() + b"\r\n"
            else:
                line = b"X-Request-ID: " + self._request_id.encode() + b"\r\n"
            self._line = line
        return line

    def for_backend(self, route: RouteResult, peer: str, forwarded: bytes) -> bytes:
        """The head to send to ``route``'s backend, for a client at ``peer``; ``forwarded``: the
        connection's own X-Forwarded lines, for a request that brought none."""
        head = self._head
        if head is None:
            head = self._head = self._build(peer, forwarded)
        if self._info.host is None:  # HTTP/1.0 without Host: HTTP/1.1 upstream needs one, the backend's own
            host = f"[{route.host}]" if ":" in route.host else route.host
            head = head.replace(b"\r\n", b"\r\nHost: %s:%d\r\n" % (host.encode(), route.port), 1)
        return head

    def _build(self, peer: str, forwarded: bytes) -> bytes:
        info = self._info
        trusted = self._ctx.trusted
        trusts_peer = bool(trusted.networks) and trusted.trusts(peer)
        if info.forwarded_for is None and info.forwarded_proto is None:
            extra = [forwarded]
        else:
            address = peer.encode()
            forwarded_for = address if info.forwarded_for is None else info.forwarded_for + b", " + address
            proto = info.forwarded_proto if trusts_peer and info.forwarded_proto else b"http"
            extra = [b"X-Forwarded-For: ", forwarded_for, b"\r\nX-Forwarded-Proto: ", proto, b"\r\n"]
        host = info.forwarded_host if trusts_peer and info.forwarded_host else info.host
        if host:
            extra += (b"X-Forwarded-Host: ", host, b"\r\n")
        extra.append(self.request_id_line())
        return request_head(info, extra, request_framing(info))
