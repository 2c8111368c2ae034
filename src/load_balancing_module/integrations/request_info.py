"""What the integrations read off an outgoing HTTP request: the routing :class:`Request`.

In this order, the first that is present wins (the other is not read):

1. what the caller gave for this request (httpx: ``extensions={"omnixan": ...}``; aiohttp:
   ``with route_as(...):`` around the call), a :class:`Request` or a dict of its fields
   (``client_ip``, ``session_id``, ``workload_type``, ``request_id``, ``metadata``);
2. the headers the reverse proxy reads too: ``X-Session-ID`` (sticky session),
   ``X-Workload-Type`` (``classical``, ``quantum_simulation``...; any case) and
   ``X-Request-ID`` (ignored when it is not 1 to 512 visible ASCII characters, as the proxy does).

Nothing given: a default :class:`Request` (client 127.0.0.1, classical). A malformed value raises
:class:`RequestInfoError`, naming it, before any backend is picked. The headers stay on the
request: the backend sees them too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..config import Request
from ..enums import WorkloadType

EXTENSION = "omnixan"
SESSION_HEADER = "X-Session-ID"
WORKLOAD_HEADER = "X-Workload-Type"
REQUEST_ID_HEADER = "X-Request-ID"

#: RFC 9110 9.2.2: a request with one of these methods may be sent twice to the same effect.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

_MAX_ID = 512  # Request.session_id and request_id allow no more
_TOKEN_ID = re.compile(rf"[!-~]{{1,{_MAX_ID}}}")  # visible ASCII, no spaces: the proxy's rule
_WORKLOADS = ", ".join(w.value for w in WorkloadType)
_DEFAULT = Request()  # routing only reads a Request: one shared instance for the common case


class RequestInfoError(ValueError):
    """A request's routing information (extension or header) is malformed; nothing was sent."""


def routing_request(extension: object, headers: Mapping[str, str]) -> Request:
    """The :class:`Request` to route by: from ``extension`` if it is not ``None``, else ``headers``
    (a case-insensitive mapping, as httpx's and aiohttp's are)."""
    if extension is not None:
        return _from_extension(extension)
    return _from_headers(headers)


def _from_extension(extension: object) -> Request:
    if isinstance(extension, Request):
        return extension
    if not isinstance(extension, Mapping):
        raise RequestInfoError(
            f"the {EXTENSION!r} extension must be a Request or a dict of its fields, not {type(extension).__name__}"
        )
    try:
        return Request.model_validate(dict(extension))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RequestInfoError(f"the {EXTENSION!r} extension is not a valid Request: {problems}") from None


def _from_headers(headers: Mapping[str, str]) -> Request:
    fields: dict[str, Any] = {}
    session = headers.get(SESSION_HEADER)
    if session is not None:
        if not _TOKEN_ID.fullmatch(session):
            raise RequestInfoError(f"{SESSION_HEADER} {session[:80]!r} is not 1 to {_MAX_ID} visible ASCII characters")
        fields["session_id"] = session
    workload = headers.get(WORKLOAD_HEADER)
    if workload is not None:
        try:
            fields["workload_type"] = WorkloadType(workload.strip().lower())
        except ValueError:
            raise RequestInfoError(f"{WORKLOAD_HEADER} {workload[:80]!r} is not one of: {_WORKLOADS}") from None
    request_id = headers.get(REQUEST_ID_HEADER)
    if request_id is not None and _TOKEN_ID.fullmatch(request_id):
        fields["request_id"] = request_id
    return Request(**fields) if fields else _DEFAULT
