"""Backends from DNS: the A/AAAA records of a name, or the SRV records of a service.

``DnsProvider(name="api.internal", port=8080)`` makes one backend per address of the name;
``DnsProvider(srv="_http._tcp.api.internal")`` one per address of each SRV target, with the
record's port, its weight as the backend's ``weight`` and its priority as the backend's tier.
SRV says a LOWER priority is preferred, this library a HIGHER ``priority``: a record of SRV
priority ``p`` becomes ``priority = -p`` (SRV 10 is preferred to SRV 20, as -10 to -20). A
weight of 0 ("use only if nothing else", RFC 2782) becomes 0.01.

The name is resolved again when the shortest TTL of the answer runs out, kept within
``min_interval`` and ``max_interval`` seconds, on the clock given. A failed lookup (no answer,
NXDOMAIN, a timeout) raises :class:`DiscoveryError`, which keeps the last good set. The client
is dnspython's (the ``[dns]`` extra), asking ``nameservers`` (``"10.0.0.2:53"``,
``"[fd00::2]:53"``, ``"10.0.0.2"``) or, when none are given, the system's (/etc/resolv.conf).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from .._extras import missing_extra, require
from .._log import log_event
from ..clock import Clock, SystemClock
from ..config import BackendConfig
from .provider import DiscoveryError

if TYPE_CHECKING:
    from dns.asyncresolver import Resolver

ZERO_WEIGHT: Final = 0.01  # an SRV weight of 0: picked rarely next to others, equally among zeros


class DnsProvider:
    """See the module docstring. ``backend`` holds the other fields of every backend made
    (``max_connections``, ``slow_start_seconds``, ...)."""

    def __init__(
        self,
        name: str | None = None,
        *,
        port: int | None = None,
        srv: str | None = None,
        nameservers: Sequence[str] = (),
        min_interval: float = 5.0,
        max_interval: float = 300.0,
        timeout: float = 5.0,
        backend: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        require("DNS discovery", "dns", "dns")  # at once, not at each lookup of a watch
        if (name is None) == (srv is None):
            raise ValueError("DnsProvider: give a name (with a port) or an srv name, not both")
        if name is not None and port is None:
            raise ValueError(f"DnsProvider: {name!r} needs a port (SRV records carry their own)")
        if not 0 < min_interval <= max_interval:
            raise ValueError(f"min_interval and max_interval: need 0 < min <= max, got {min_interval}, {max_interval}")
        if timeout <= 0:
            raise ValueError(f"timeout: must be > 0, got {timeout}")
        self.name = name
        self.port = port
        self.srv = srv
        self.nameservers = [parse_nameserver(n) for n in nameservers]
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.timeout = timeout
        self.backend = dict(backend or {})
        for key in ("host", "port", "weight", "priority"):
            if key in self.backend:
                raise ValueError(f"backend: {key!r} comes from DNS, it cannot be set here")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.last_ttl: float | None = None  # the TTL of the last answer (tests and describe)

    @property
    def query(self) -> str:
        return self.srv if self.srv is not None else f"{self.name}"

    async def watch(self) -> AsyncIterator[list[BackendConfig]]:
        resolver = self._resolver()
        while True:
            backends, ttl = await self.resolve(resolver)
            self.last_ttl = ttl
            yield backends
            await self.clock.sleep(min(max(ttl, self.min_interval), self.max_interval))

    def _resolver(self) -> Resolver:
        try:
            import dns.asyncresolver
            import dns.nameserver
        except ModuleNotFoundError as exc:
            raise missing_extra("DNS discovery", "dns", "dns") from exc
        resolver = dns.asyncresolver.Resolver(configure=not self.nameservers)
        if self.nameservers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in self.nameservers]
        resolver.lifetime = self.timeout
        resolver.cache = None  # every lookup asks the server: the TTL is honoured here
        return resolver

    async def resolve(self, resolver: Resolver) -> tuple[list[BackendConfig], float]:
        """The backends the records name now, and the seconds until they should be asked again."""
        if self.srv is not None:
            return await self._resolve_srv(resolver, self.srv)
        assert self.name is not None and self.port is not None
        addresses, ttl = await _addresses(resolver, self.name)
        if not addresses:
            raise DiscoveryError(f"dns {self.name}: no A or AAAA records")
        return [self._backend(a, self.port, 1.0, 0) for a in addresses], ttl

    async def _resolve_srv(self, resolver: Resolver, srv: str) -> tuple[list[BackendConfig], float]:
        answer = await _ask(resolver, srv, "SRV")
        if answer is None:
            raise DiscoveryError(f"dns {srv}: no SRV records")
        records, ttl = answer
        backends: list[BackendConfig] = []
        for record in records:
            target = str(record.target).rstrip(".")
            try:
                addresses, target_ttl = await _addresses(resolver, target)
            except DiscoveryError as exc:  # one dead target: the others still make a set
                log_event("discovery_target_skipped", logging.WARNING, srv=srv, target=target, error=str(exc))
                continue
            ttl = min(ttl, target_ttl)
            weight = float(record.weight) if record.weight > 0 else ZERO_WEIGHT
            backends.extend(self._backend(a, int(record.port), weight, -int(record.priority)) for a in addresses)
        if not backends:
            raise DiscoveryError(f"dns {srv}: no SRV target has an A or AAAA record")
        return backends, ttl

    def _backend(self, host: str, port: int, weight: float, priority: int) -> BackendConfig:
        fields = {**self.backend, "host": host, "port": port, "weight": weight, "priority": priority}
        return BackendConfig.model_validate(fields)


async def _addresses(resolver: Resolver, name: str) -> tuple[list[str], float]:
    """The IPv4 then IPv6 addresses of ``name``, and the shortest TTL (inf when there are none)."""
    answers = await asyncio.gather(_ask(resolver, name, "A"), _ask(resolver, name, "AAAA"))
    addresses: list[str] = []
    ttl = float("inf")
    for answer in answers:
        if answer is not None:
            records, answer_ttl = answer
            addresses.extend(sorted(str(r.address) for r in records))
            ttl = min(ttl, answer_ttl)
    return addresses, ttl


async def _ask(resolver: Resolver, name: str, kind: str) -> tuple[list[Any], float] | None:
    """The records of ``kind`` for ``name`` and their TTL; None when there are none; a failed
    lookup (NXDOMAIN, no server answering, a timeout) raises :class:`DiscoveryError`."""
    import dns.exception
    import dns.resolver

    try:
        answer = await resolver.resolve(name, kind, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        raise DiscoveryError(f"dns {name}: no such name (NXDOMAIN)") from None
    except dns.exception.DNSException as exc:
        raise DiscoveryError(f"dns {name} {kind}: lookup failed: {exc}") from None
    if answer.rrset is None or not len(answer.rrset):
        return None
    return list(answer.rrset), float(answer.rrset.ttl)


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"10.0.0.2:53"``, ``"[fd00::2]:53"``, ``"10.0.0.2"`` or ``"fd00::2"`` -> (address, port)."""
    import ipaddress

    host, port = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {text!r}: expected [address]:port")
        port = rest[1:] or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"nameserver {text!r}: expected an IP address, optionally with :port") from None
    if not 0 < number < 65536:
        raise ValueError(f"nameserver {text!r}: port out of range")
    return host, number
