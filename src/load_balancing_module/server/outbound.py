"""The head of a request as it goes to a backend, and the line that carries its request id.

Pure functions: the exchange keeps what they make (one head per request, reused
by every try; one ``X-Request-ID`` line for both heads), so that a request
allocates nothing more for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .http import RequestInfo, request_framing, request_head

if TYPE_CHECKING:
    from ..route import RouteResult
    from .context import ProxyContext


def request_id_line(ctx: ProxyContext, request_id: str | None, rid_seq: int) -> bytes:
    """``X-Request-ID: ...``: the client's id, else the proxy's number ``rid_seq`` written straight in."""
    if request_id is None:
        return b"%s%d\r\n" % (ctx.rid_line_prefix, rid_seq)  # one allocation when compiled
    return b"X-Request-ID: %s\r\n" % request_id.encode()


def backend_head(
    ctx: ProxyContext,
    info: RequestInfo,
    peer: str,
    forwarded: bytes,
    rid_line: bytes,
    scheme: bytes = b"http",
    client_cert: bytes = b"",
) -> bytes:
    """The head for any backend, from a client at ``peer``: the client's head with the proxy's
    ``X-Forwarded-*`` lines (``forwarded``: the connection's own, for a request that brought none)
    and ``rid_line``, in the proxy's own framing. ``scheme`` is the listener's, ``client_cert`` the
    connection's ``X-Client-Cert-Subject`` line (``forwarded`` holds both already)."""
    trusted = ctx.trusted
    trusts_peer = bool(trusted.networks) and trusted.trusts(peer)
    if info.forwarded_for is not None or info.forwarded_proto is not None:
        address = peer.encode()
        forwarded_for = address if info.forwarded_for is None else info.forwarded_for + b", " + address
        proto = info.forwarded_proto if trusts_peer and info.forwarded_proto else scheme
        forwarded = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n%s" % (forwarded_for, proto, client_cert)
    host = info.forwarded_host if trusts_peer and info.forwarded_host else info.host
    raw = info.raw_head
    if raw is not None:  # request_head's plain case, written in one piece (one allocation when compiled)
        if host:
            return b"%s%sX-Forwarded-Host: %s\r\n%s\r\n" % (raw, forwarded, host, rid_line)
        return b"%s%s%s\r\n" % (raw, forwarded, rid_line)
    extra = [forwarded]
    if host:
        extra.append(b"X-Forwarded-Host: %s\r\n" % host)
    extra.append(rid_line)
    return request_head(info, extra, request_framing(info))


def for_route(head: bytes, info: RequestInfo, route: RouteResult) -> bytes:
    """``head`` for ``route``'s backend: an HTTP/1.0 request without Host gets the backend's own
    (HTTP/1.1 upstream needs one)."""
    if info.host is not None:
        return head
    host = f"[{route.host}]" if ":" in route.host else route.host
    return head.replace(b"\r\n", b"\r\nHost: %s:%d\r\n" % (host.encode(), route.port), 1)


_TRACE_HEADERS: Final = (b"traceparent", b"tracestate")


def traced_head(head: bytes, lines: bytes) -> bytes:
    """``head`` (ending with its empty line) without the client's trace context lines, and with
    ``lines`` (the proxy's, for one try) in their place. Only a traced request comes here."""
    if b"trace" in head.lower():
        kept = [line for line in head.split(b"\r\n") if line.partition(b":")[0].strip().lower() not in _TRACE_HEADERS]
        head = b"\r\n".join(kept)
    return head[:-2] + lines + b"\r\n"
