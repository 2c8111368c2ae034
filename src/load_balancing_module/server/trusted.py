"""``trusted_proxies``: which peers may say who the client is (``X-Forwarded-For``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class TrustedProxies:
    """The ``trusted_proxies`` networks, and the client IP a request came from.

    The client is the TCP peer, or, when the peer is trusted, the right-most
    ``X-Forwarded-For`` entry that is not trusted. An entry that is not an IP
    address ends the walk: the last address before it is used.
    """

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, ip: str) -> bool:
        known = self._cache.get(ip)
        if known is None:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                return False
            known = any(address in net for net in self.networks)
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[ip] = known
        return known

    def client_ip(self, peer: str, forwarded_for: bytes | None) -> str:
        if not forwarded_for or not self.networks or not self.trusts(peer):
            return peer
        client = peer
        for entry in reversed(forwarded_for.split(b",")):
            try:
                client = str(ipaddress.ip_address(entry.strip().decode("ascii")))
            except (ValueError, UnicodeDecodeError):
                break
            if not self.trusts(client):
                break
        return client
