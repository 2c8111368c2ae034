"""OpenTelemetry spans of the proxy: one per request (server kind), one per try on a backend (client kind).

Imported only when the config has ``tracing:`` (``omnixan-lb[otel]``), so that a proxy without it
loads no OpenTelemetry module. :func:`proxy_tracer` builds the tracer provider of the config
(OTLP over HTTP, a ratio sampler that follows the caller's decision); a :class:`ProxyTracer`
over any provider (tests hand one with an in-memory exporter) starts a :class:`RequestTrace`
per request, which the traced exchange (``exchange.TracedExchange``) feeds. Attribute names
follow the OpenTelemetry HTTP semantic conventions; the proxy's own are under ``omnixan.``.
A request that is not sampled gets no trace object: its head goes to the backend unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._extras import require

for _module in ("opentelemetry", "opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"):
    require("tracing: in the config", "otel", _module)  # named, rather than a bare No module named ...

from opentelemetry import trace  # noqa: E402 - after the check above
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: E402
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: E402

from .headers import Header  # noqa: E402

INSTRUMENTATION = "load_balancing_module.server"
_PROPAGATOR = TraceContextTextMapPropagator()


def proxy_tracer(otlp_endpoint: str, service_name: str, sample_ratio: float) -> ProxyTracer:
    """The tracer of a config's ``tracing:``: spans batched to ``otlp_endpoint`` (OTLP/HTTP)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    return ProxyTracer(provider, owned=True)


class ProxyTracer:
    """Starts the spans of the proxy's requests on ``provider``'s tracer."""

    def __init__(self, provider: trace.TracerProvider, *, owned: bool = False) -> None:
        self._provider = provider
        self._owned = owned  # made by proxy_tracer: flushed and shut down with the proxy
        self._tracer = provider.get_tracer(INSTRUMENTATION)

    def request(
        self, method: bytes, target: bytes, headers: Sequence[Header], scheme: bytes, peer: str, client_ip: str | None
    ) -> RequestTrace | None:
        """The server span of a request whose head is ``headers`` (its ``traceparent`` is the parent);
        None if the request is not sampled."""
        carrier = {name.lower().decode("latin-1"): value.decode("latin-1") for name, value in headers}
        parent = _PROPAGATOR.extract(carrier) if "traceparent" in carrier else None
        verb = method.decode("latin-1")
        path, _, query = target.partition(b"?")
        attributes: dict[str, str] = {
            "http.request.method": verb,
            "url.path": path.decode("latin-1"),
            "url.scheme": scheme.decode(),
            "network.peer.address": peer,
            "client.address": client_ip or peer,
        }
        if query:
            attributes["url.query"] = query.decode("latin-1")
        span = self._tracer.start_span(verb, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes)
        if not span.is_recording():
            span.end()
            return None
        return RequestTrace(self._tracer, span, verb)

    def shutdown(self) -> None:
        """Send what is batched and stop the exporter (a provider handed in is left to its owner)."""
        if self._owned and isinstance(self._provider, TracerProvider):
            self._provider.shutdown()


class RequestTrace:
    """The spans of one request: its server span, and the span of the try in progress."""

    __slots__ = ("_tracer", "span", "_method", "attempt")

    def __init__(self, tracer: trace.Tracer, span: trace.Span, method: str) -> None:
        self._tracer = tracer
        self.span = span
        self._method = method
        self.attempt: trace.Span | None = None

    def attempt_begun(self, backend_id: str, host: str, port: int, resend_count: int, start_ns: int) -> None:
        """A try on a backend began at ``start_ns`` (``resend_count``: the retries before it)."""
        self.attempt_abandoned("another try began")  # never left open: a try starts only after the last ended
        attributes: dict[str, str | int] = {
            "http.request.method": self._method,
            "server.address": host,
            "server.port": port,
            "omnixan.backend.id": backend_id,
        }
        if resend_count:
            attributes["http.request.resend_count"] = resend_count
        context = trace.set_span_in_context(self.span)
        self.attempt = self._tracer.start_span(
            self._method, context=context, kind=trace.SpanKind.CLIENT, attributes=attributes, start_time=start_ns
        )

    def head_lines(self) -> bytes:
        """The ``traceparent`` (and ``tracestate``) lines that carry the try's span to its backend."""
        carrier: dict[str, str] = {}
        span = self.attempt if self.attempt is not None else self.span
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return b"".join(b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in carrier.items())

    def attempt_ended(self, status: int | None, error: str | None) -> None:
        """The try's outcome: the backend's ``status``, or why it failed (``error``)."""
        span = self.attempt
        if span is None:
            return
        self.attempt = None
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("omnixan.attempt.outcome", "failure")
            span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        elif status is not None and status >= 400:  # a client span's 4xx is an error too (semconv)
            span.set_attribute("omnixan.attempt.outcome", "error_status")
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        else:
            span.set_attribute("omnixan.attempt.outcome", "success")
        span.end()

    def attempt_abandoned(self, why: str) -> None:
        """The try was given up for no fault of the backend's (the client went away): no error."""
        span = self.attempt
        if span is None:
            return
        self.attempt = None
        span.set_attribute("omnixan.attempt.outcome", "abandoned")
        span.add_event("abandoned", {"reason": why})
        span.end()

    def end(self, status: int, pool: str, route: str | None, attempts: int) -> None:
        """The request ends with ``status`` (499: the client went away) from ``pool`` (by ``route``)."""
        self.attempt_abandoned("the request ended during the try")
        span = self.span
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("omnixan.pool", pool)
        span.set_attribute("omnixan.attempts", attempts)
        if route is not None:
            span.set_attribute("omnixan.route", route)
        if status >= 500:  # a server span's error is a 5xx only (semconv)
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end()
