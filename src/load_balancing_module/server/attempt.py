"""How one try on a backend can fail, and whose failure it is.

A :class:`Failure` says why a try did not deliver a response, whether another
backend may be tried, and whether the backend's breaker and statistics hear of
it: only a failure of the backend's own does (it refused or timed out a
connect, closed or reset the connection once it had the request, answered a
status of ``failure_statuses`` or garbage, or stalled); what the client or the proxy's own host did never does.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from ..health import LOCAL_ERRNOS
from .upstream_tls import UpstreamTLSError

if TYPE_CHECKING:
    from ..route import RouteResult
    from .context import ProxyContext


class Failure:
    """Why one try did not deliver a response; ``retry``: another backend may be tried.

    ``never_sent``: the backend cannot have received the request (a failed connect), so any
    method may go elsewhere. ``stale``: a connection taken from the pool was already closed by
    the backend (its keep-alive timeout), which is nobody's failure: the same try goes again
    on a fresh connection. ``answered``: the backend answered with a status of ``retry_on``, and
    the response was dropped for a retry; ``backend_fault`` then says whether that status is in
    ``failure_statuses`` (if not, the backend is working: its try completes as a success)."""

    __slots__ = ("status", "message", "retry", "never_sent", "backend_fault", "stale", "answered")

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry: bool = False,
        never_sent: bool = False,
        backend_fault: bool = True,
        stale: bool = False,
        answered: bool = False,
    ) -> None:
        self.status = status
        self.message = message
        self.retry = retry
        self.never_sent = never_sent
        self.backend_fault = backend_fault
        self.stale = stale
        self.answered = answered


CLIENT_GONE: Final = Failure(499, "the client went away", backend_fault=False)


def connect_failure(ctx: ProxyContext, route: RouteResult, exc: BaseException, timeout: float) -> Failure:
    """A connect to ``route``'s backend that failed or timed out (after ``timeout`` s). A failed TLS
    handshake is the backend's failure like a refused connect (never a fallback to plaintext),
    logged as ``upstream_tls_failed``; the client is told which backend and that TLS failed."""
    if isinstance(exc, UpstreamTLSError):
        ctx.note_tls_failure(route.backend_id, route.backend.config.address, exc)
        return Failure(502, f"TLS with backend {route.backend_id} failed: {exc.reason}", never_sent=True)
    if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
        # The proxy's own host is out of descriptors or memory: no backend's failure, and
        # another backend would fare no better.
        ctx.note_exhaustion("connect", exc)
        return Failure(503, f"the proxy cannot open a connection now ({exc.strerror})", backend_fault=False)
    if isinstance(exc, asyncio.TimeoutError):
        if timeout < ctx.connect_timeout:  # cut short by the request's deadline, not the backend's doing
            return Failure(
                504, f"connecting to backend {route.backend_id} did not finish before the deadline", backend_fault=False
            )
        what = f"timed out after {timeout:g} s"
    else:
        what = f"failed ({getattr(exc, 'strerror', None) or exc})"
    return Failure(502, f"connecting to backend {route.backend_id} {what}", never_sent=True)
