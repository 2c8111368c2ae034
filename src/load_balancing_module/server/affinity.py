"""Affinity cookies that carry their own binding, signed: sticky sessions with no state per client.

With ``session_affinity`` on, a client without a session gets
``Set-Cookie: OMNIXAN_AFFINITY=<backend id>.<signature>`` naming the backend that answered it,
and its next requests go there while that backend is a candidate (as HAProxy's
``cookie insert``). Nothing is stored per client, so a client that never returns the cookie
costs nothing, and every balancer that shares the key (``affinity_secret_env``, or the shared
state store's key) honours the others' cookies. The signature (HMAC-SHA256, 128 bits) keeps
clients from naming a backend the balancer never gave them, such as a backup tier's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import TYPE_CHECKING, Final

from .http import AFFINITY_COOKIE

if TYPE_CHECKING:
    from ..state.base import StateStore

MAC_BYTES: Final = 16
_CACHE_LIMIT: Final = 4096  # verified values kept, so that a returning client costs one lookup


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class AffinityCookies:
    """Issues and checks the affinity cookie under one key."""

    __slots__ = ("_key", "_lines", "_verified", "name")

    def __init__(self, key: bytes, name: bytes = AFFINITY_COOKIE) -> None:
        if len(key) < 16:
            raise ValueError("the affinity key must be at least 16 bytes")
        self._key = key
        self.name = name  # the cookie's name: each pool has its own, so that pools do not undo each other's
        self._lines: dict[str, bytes] = {}  # backend id -> its Set-Cookie line
        self._verified: dict[str, str] = {}  # cookie value -> backend id

    def _mac(self, backend_id: bytes) -> bytes:
        return _b64(hmac.new(self._key, backend_id, hashlib.sha256).digest()[:MAC_BYTES])

    def value(self, backend_id: str) -> str:
        raw = backend_id.encode()
        return (_b64(raw) + b"." + self._mac(raw)).decode("ascii")

    def set_cookie(self, backend_id: str) -> bytes:
        """The ``Set-Cookie`` line that binds a client to ``backend_id`` (made once per backend)."""
        line = self._lines.get(backend_id)
        if line is None:
            if len(self._lines) >= _CACHE_LIMIT:
                self._lines.clear()
            line = b"Set-Cookie: %s=%s; Path=/; HttpOnly; SameSite=Lax\r\n" % (
                self.name,
                self.value(backend_id).encode(),
            )
            self._lines[backend_id] = line
        return line

    def named(self, name: bytes) -> AffinityCookies:
        """The same key under another cookie name (another pool's)."""
        return AffinityCookies(self._key, name)

    def backend_of(self, value: str | None) -> str | None:
        """The backend id a cookie value names, if its signature holds; None otherwise."""
        if not value:
            return None
        known = self._verified.get(value)
        if known is not None:
            return known
        encoded, dot, mac = value.partition(".")
        if not dot:
            return None
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(self._mac(raw), mac.encode("ascii", "replace")):
            return None
        try:
            backend_id = raw.decode()
        except UnicodeDecodeError:
            return None
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[value] = backend_id
        return backend_id


async def affinity_key(secret_env: str | None, store: StateStore) -> bytes:
    """The key that signs affinity cookies: from the variable ``secret_env`` names when set (every
    balancer that shares traffic must have the same), else the state store's shared key, so that
    balancers sharing a store (Redis, or the workers' shared memory) agree by themselves."""
    secret = os.environ.get(secret_env) if secret_env else None
    if secret:
        return hashlib.sha256(secret.encode()).digest()
    return await store.shared_secret("affinity")
