"""Which requests may reach the admin API at all, whatever token they carry.

Why this exists: the admin API was guarded by where it listens (loopback) and an
optional token, as if only the operator's own programs could reach 127.0.0.1.
A web page in the operator's browser reaches it too. Without a token it could
send a form or a ``no-cors`` fetch (the JSON was parsed whatever the
Content-Type), or rebind its own DNS name to 127.0.0.1 and then read and write
the API as a same-origin page. Each rule below closes one of a page's ways in,
for every route, before authentication:

- ``Host`` must name this listener (else 421): an IP literal, ``localhost``,
  the host of ``admin.listen``, or one of ``admin.allowed_hosts``
  (``*.example.com`` covers the names under example.com). A rebound page sends
  its own DNS name; it cannot make the browser send an IP literal or a name
  that resolves to this host without the attacker controlling it.
- ``Origin``, when sent, must be the admin's own (``http://`` and the
  request's ``Host``: the listener speaks plain HTTP), else 403; only ``GET /``
  (the dashboard page, static) is left open to any origin. ``Origin: null`` is
  foreign.
- POST, PUT and PATCH need ``Content-Type: application/json`` (parameters
  allowed), even with an empty body, else 415: a cross-site form or ``no-cors``
  fetch can only send text/plain, urlencoded or multipart without a CORS
  preflight, and no preflight is ever granted (OPTIONS has no route, and no
  response carries a CORS header).

Sans-IO: :meth:`RequestGuard.check` takes the method, path and headers and
returns a :class:`Refusal` or ``None``; :mod:`.app` turns it into a response.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from multidict import MultiMapping

MUTATING = frozenset({"POST", "PUT", "PATCH"})
JSON_MEDIA_TYPE = "application/json"
OPEN_TO_ANY_ORIGIN = frozenset({("GET", "/"), ("HEAD", "/")})  # the dashboard page: static, no data


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the status, a message that starts with the header's name, the header."""

    status: int
    message: str
    field: str


def host_name(value: str) -> str | None:
    """The host part of a ``Host`` header: lowercased, without the port, brackets or a final dot.

    ``None`` when it is not ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if value.startswith("["):  # an IPv6 literal, nothing else
        end = value.find("]")
        name, rest = (value[1:end], value[end + 1 :]) if end > 0 and ":" in value[1:end] else ("", "")
    else:
        name, sep, port = value.partition(":")
        rest = sep + port
    if rest and not (rest[0] == ":" and rest[1:].isascii() and (rest[1:].isdigit() or rest == ":")):
        return None
    name = name.lower().removesuffix(".")
    return name or None


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _shown(value: str) -> str:
    return repr(value[:100])


def _single(headers: MultiMapping[str], name: str) -> tuple[str | None, str]:
    """The header's value (``None`` if absent or repeated) and how to name it in a message."""
    values = headers.getall(name, [])
    if len(values) == 1:
        return values[0].strip(), _shown(values[0].strip())
    return None, "missing" if not values else f"sent {len(values)} times"


class RequestGuard:
    """The rules of the module docstring for one listener.

    ``names`` are the exact host names accepted besides IP literals (``localhost``, the listen host
    and ``allowed_hosts``, lowercased); ``*.example.com`` entries accept every name ending in
    ``.example.com``."""

    def __init__(self, listen_host: str, allowed_hosts: Iterable[str]) -> None:
        patterns = [name.lower().removesuffix(".") for name in allowed_hosts]
        self.names = frozenset({"localhost", listen_host.lower().removesuffix(".")}).union(
            name for name in patterns if not name.startswith("*.")
        )
        self.suffixes = tuple(name[1:] for name in patterns if name.startswith("*."))

    def allows_host(self, name: str) -> bool:
        """A host name (from :func:`host_name`) that names this listener."""
        return is_ip_literal(name) or name in self.names or name.endswith(self.suffixes)

    def check(self, method: str, path: str, headers: MultiMapping[str], *, routed: bool = True) -> Refusal | None:
        """The first rule ``method path`` with ``headers`` breaks, or ``None``.

        ``routed`` is false when no route matches: the router's 404 or 405 then says more than a 415."""
        host, shown = _single(headers, "Host")
        name = host_name(host) if host is not None else None
        if host is None or name is None or not self.allows_host(name):
            return Refusal(
                421,
                f"Host: {shown} is not a name of this admin listener (an IP address, localhost, "
                "the host of admin.listen, or a name in admin.allowed_hosts)",
                "Host",
            )
        if headers.getall("Origin", []) and (method, path) not in OPEN_TO_ANY_ORIGIN:
            origin, shown = _single(headers, "Origin")
            if origin is None or not same_origin(origin, host):
                return Refusal(
                    403,
                    f"Origin: {shown} is not this admin listener's own origin; "
                    "no other site's page may call the admin API",
                    "Origin",
                )
        if method in MUTATING and routed:
            content_type, shown = _single(headers, "Content-Type")
            if content_type is None or media_type(content_type) != JSON_MEDIA_TYPE:
                return Refusal(
                    415,
                    f"Content-Type: must be {JSON_MEDIA_TYPE} (even with an empty body), not {shown}",
                    "Content-Type",
                )
        return None


def same_origin(origin: str, host: str) -> bool:
    """``origin`` is ``http://`` and ``host``, case aside."""
    return origin.lower() == f"http://{host.lower()}"


def media_type(content_type: str) -> str:
    """``type/subtype`` of a Content-Type value, lowercased, without its parameters."""
    return content_type.partition(";")[0].strip().lower()
