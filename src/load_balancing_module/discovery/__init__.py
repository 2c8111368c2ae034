"""Service discovery: backends found by a provider instead of listed by hand.

A :class:`Provider` yields, each time it learns it, the whole set of backends a pool should
have; :meth:`LoadBalancingModule.watch` applies each set (a :class:`Watch`). Two providers come
with the library: :class:`FileProvider` (a YAML or JSON file, polled) and :class:`DnsProvider`
(A/AAAA or SRV records, re-resolved as their TTL says; the ``[dns]`` extra). See docs/discovery.md.
"""

from __future__ import annotations

from .dns import DnsProvider
from .file import FileProvider, parse_backends
from .provider import DiscoveryError, Provider, Target
from .watch import Watch

__all__ = ["DiscoveryError", "DnsProvider", "FileProvider", "Provider", "Target", "Watch", "parse_backends"]
