"""Prometheus families of the proxy itself (the module's are in :mod:`..metrics`), read at scrape time.

- ``omnixan_lb_resource_exhaustion_total{where}``: accepts (``accept``) and connects to backends
  (``connect``) that failed because this host was out of descriptors or memory (EMFILE, ENFILE,
  ENOBUFS, ENOMEM); never counted against a backend.
- ``omnixan_lb_upstream_stale_connections_total``: pooled connections found closed by their backend,
  or idle for nearly its keep-alive timeout, when about to be reused (a new one was opened).
- ``omnixan_lb_filter_errors_total{filter}``: route filters (``module:function``) that raised
  (each such request answered 500).
- ``omnixan_lb_route_requests_total{route}``: requests each route took (by name, ``route-<i>``
  for one without; ``(none)``: those that matched no route); only with ``routes``. Counted on
  the route itself (one increment per routed request, none without routes) and carried over a
  reload by name.
- ``omnixan_lb_proxy_protocol_errors_total{listener}``: PROXY headers refused from trusted peers
  on ``proxy_protocol`` listeners (malformed, late, missing; the connection closed).
- ``omnixan_lb_tls_handshake_failures_total{listener}``: TLS handshakes that failed or timed out
  (a client's doing: never counted against a backend).
- ``omnixan_lb_tls_certificate_expiry_seconds{listener,cert}``: each certificate's notAfter (unix
  time). With workers, the supervisor shows it (``certificates=False`` here), the workers' would add up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

NO_ROUTE = "(none)"  # the route label of requests that matched no route (no route name has parentheses)

if TYPE_CHECKING:
    from .proxy import ProxyServer


class ProxyCollector(Collector):
    def __init__(self, proxy: ProxyServer, certificates: bool = True) -> None:
        self.proxy = proxy
        self.certificates = certificates

    def collect(self) -> Iterator[Metric]:
        exhaustion = CounterMetricFamily(
            "omnixan_lb_resource_exhaustion",
            "Accepts and connects that failed for lack of descriptors or memory here.",
            labels=["where"],
        )
        for where, count in self.proxy.exhausted.items():
            exhaustion.add_metric([where], count)
        yield exhaustion
        yield CounterMetricFamily(
            "omnixan_lb_upstream_stale_connections",
            "Pooled connections to backends found closed or too old when about to be reused.",
            value=self.proxy.pool.stale,
        )
        errors = CounterMetricFamily(
            "omnixan_lb_filter_errors", "Route filters that raised (the request answered 500).", labels=["filter"]
        )
        for name, count in list(self.proxy.filter_errors.items()):
            errors.add_metric([name], count)
        yield errors
        table = self.proxy.routes
        if table is not None:
            routed = CounterMetricFamily(
                "omnixan_lb_route_requests", "Requests each route took, by route name.", labels=["route"]
            )
            for route in table.routes:
                routed.add_metric([route.name], route.requests)
            routed.add_metric([NO_ROUTE], table.fallback.requests)
            yield routed
        handshakes = CounterMetricFamily(
            "omnixan_lb_tls_handshake_failures",
            "TLS handshakes with clients that failed or timed out, by listener.",
            labels=["listener"],
        )
        for listener, count in self.proxy.handshake_failures.items():
            handshakes.add_metric([listener], count)
        yield handshakes
        refused = CounterMetricFamily(
            "omnixan_lb_proxy_protocol_errors",
            "PROXY protocol headers refused from trusted peers (malformed, late, or missing), by listener.",
            labels=["listener"],
        )
        for listener, count in self.proxy.proxy_protocol_errors.items():
            refused.add_metric([listener], count)
        yield refused
        if self.certificates:
            expiry = GaugeMetricFamily(
                "omnixan_lb_tls_certificate_expiry_seconds",
                "When each certificate of a TLS listener expires (its notAfter, unix time).",
                labels=["listener", "cert"],
            )
            for listener, cert, not_after in self.proxy.certificates():
                expiry.add_metric([listener, cert], not_after)
            yield expiry


def register_proxy_metrics(
    proxy: ProxyServer, registry: CollectorRegistry, *, certificates: bool = True
) -> ProxyCollector:
    collector = ProxyCollector(proxy, certificates)
    registry.register(collector)
    return collector
