"""What the proxy does with each header, by name, in requests and in responses.

A header is forwarded (``KEEP``) unless this table names it: hop-by-hop
headers (RFC 9110 7.6.1) are never forwarded in either direction, nor is any
``Proxy-*`` header or any header that ``Connection`` names; the proxy reads
some end-to-end ones itself (``Host``, ``X-Forwarded-*``, ``X-Request-ID``...).
:func:`action` looks a name up without hashing or lowercasing it in the usual
case (see its docstring).
"""

from __future__ import annotations

from typing import Final

Header = tuple[bytes, bytes]

# Hop-by-hop headers (RFC 9110 7.6.1), never forwarded in either direction;
# so is every ``Proxy-*`` header and every header that ``Connection`` names.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"})

# What the proxy does with a header, by name: most are forwarded (KEEP); see REQUEST_ACTIONS
# and RESPONSE_ACTIONS for the others, and :func:`action` for how a name is looked up.
DROP: Final = 0
KEEP: Final = 1
CONTENT_LENGTH: Final = 2
TRANSFER_ENCODING: Final = 3
HOST_HEADER: Final = 4
CONNECTION: Final = 5
UPGRADE: Final = 6
FORWARDED_FOR: Final = 7
FORWARDED_PROTO: Final = 8
FORWARDED_HOST: Final = 9
REQUEST_ID: Final = 10
SESSION_ID: Final = 11
WORKLOAD: Final = 12
COOKIE: Final = 13
EXPECT: Final = 14
_HOPS = {
    b"connection": CONNECTION,
    b"keep-alive": DROP,
    b"te": DROP,
    b"trailer": DROP,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"upgrade": UPGRADE,
}
assert set(_HOPS) == HOP_BY_HOP
REQUEST_ACTIONS = {
    **_HOPS,
    b"content-length": CONTENT_LENGTH,
    b"host": HOST_HEADER,
    b"x-forwarded-for": FORWARDED_FOR,
    b"x-forwarded-proto": FORWARDED_PROTO,
    b"x-forwarded-host": FORWARDED_HOST,
    b"x-request-id": REQUEST_ID,
    b"x-session-id": SESSION_ID,
    b"x-workload-type": WORKLOAD,
    b"cookie": COOKIE,
    b"expect": EXPECT,
    # Set by the proxy from a verified client certificate (tls.py): a client's own is never forwarded.
    b"x-client-cert-subject": DROP,
}
# Response: hop-by-hop ones, X-Request-ID (the proxy sends its own) and Content-Length (it writes the framing).
RESPONSE_ACTIONS = {**_HOPS, b"x-request-id": DROP, b"content-length": CONTENT_LENGTH}
# Headers forwarded as they came, besides the unknown ones. Not Expect: the proxy answers
# "100-continue" itself and sends the body with the head, so a backend has nothing to expect.
FORWARDED_AS_IS: Final = (HOST_HEADER, SESSION_ID, WORKLOAD, COOKIE)


def _casings(name: bytes) -> list[bytes]:
    """A lowercase header name as it is usually written: Title-Case, and with ``ID``."""
    title = b"-".join(part[:1].upper() + part[1:] for part in name.split(b"-"))
    return list(dict.fromkeys((title, title.replace(b"-Id", b"-ID"))))


def _shape(name: bytes) -> int:
    """A header name's first letter (in either case) and length (up to 31), as one number."""
    n = len(name)
    return (name[0] | 0x20) * 32 + (n if n < 32 else 31)


Spellings = tuple[tuple[bytes, int], ...]


def _spellings(actions: dict[bytes, int]) -> list[Spellings | None]:
    """By shape: the names of ``actions`` of that shape, as usually written, then in lowercase
    (for :func:`action`); ``()`` for the shapes of ``Proxy-*``; None for every other shape."""
    by_shape: dict[int, list[tuple[bytes, int]]] = {}
    for name, action in actions.items():
        by_shape.setdefault(_shape(name), []).extend((c, action) for c in _casings(name))
    for name, action in actions.items():
        by_shape[_shape(name)].append((name, action))
    table: list[Spellings | None] = [None] * (256 * 32)
    for length in range(len(b"proxy-"), 32):
        table[_shape(b"p" * length)] = ()
    for shape, spellings in by_shape.items():
        table[shape] = tuple(spellings)
    return table


REQUEST_SPELLINGS: Final = _spellings(REQUEST_ACTIONS)
RESPONSE_SPELLINGS: Final = _spellings(RESPONSE_ACTIONS)


def action(name: bytes, spellings: list[Spellings | None]) -> int:
    """What to do with header ``name``: its action whatever its case, DROP for ``Proxy-*``, else KEEP.

    A name of a shape (first letter, length) that no special name has, most of them, is KEEP at
    once; otherwise it is compared with the few names of its shape, as usually written and then,
    lowercased, in lowercase: no hashing, and no lowercasing for a usual spelling."""
    n = len(name)
    if n == 0:
        return KEEP
    candidates = spellings[(name[0] | 0x20) * 32 + (n if n < 32 else 31)]  # _shape(name), inlined
    if candidates is None:
        return KEEP
    for spelling, action in candidates:
        if name == spelling:
            return action
    key = name.lower()
    for spelling, action in candidates:
        if key == spelling:
            return action
    return DROP if key.startswith(b"proxy-") else KEEP


def tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]
