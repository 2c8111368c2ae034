"""OpenTelemetry spans of the library's calls: ``LoadBalancingModule(..., tracer=OpenTelemetryTracer())``.

Each try of ``call()`` / ``call_held()`` (and so of the httpx and aiohttp integrations) is a span
of client kind, a child of the caller's current span, that names the backend and the retry; it
is the current span while the try's function runs, so that what the function sends can carry it
(the httpx transport puts it in ``traceparent``). Needs ``omnixan-lb[otel]``; the package never
imports this module itself, so a module without a tracer loads no OpenTelemetry module.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from ._extras import require

require("load_balancing_module.tracing", "otel", "opentelemetry")  # named, rather than a bare No module named ...

from opentelemetry import context, trace  # noqa: E402 - after the check above
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: E402

from .models import RouteResult  # noqa: E402

__all__ = ["OpenTelemetryTracer"]

INSTRUMENTATION = "load_balancing_module"
_PROPAGATOR = TraceContextTextMapPropagator()


class _Try:
    """A try's span and the token that makes it current until the try ends."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span, token: object) -> None:
        self.span = span
        self.token = token


class OpenTelemetryTracer:
    """The ``tracer`` of a :class:`~load_balancing_module.LoadBalancingModule`: spans on
    ``provider``'s tracer (the global provider's if None)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=provider)

    def try_begun(self, result: RouteResult, retry: int) -> object:
        attributes: dict[str, str | int] = {
            "omnixan.backend.id": result.backend_id,
            "server.address": result.host,
            "server.port": result.port,
            "omnixan.retry": retry,
        }
        if result.request_id:
            attributes["omnixan.request.id"] = result.request_id
        span = self._tracer.start_span("omnixan-lb try", kind=trace.SpanKind.CLIENT, attributes=attributes)
        return _Try(span, context.attach(trace.set_span_in_context(span)))

    def try_ended(self, span: object, error: BaseException | None) -> None:
        assert isinstance(span, _Try)
        context.detach(span.token)  # type: ignore[arg-type]  # the token attach() returned
        if error is not None:
            span.span.record_exception(error)
            span.span.set_status(trace.Status(trace.StatusCode.ERROR, repr(error)))
            span.span.set_attribute("omnixan.attempt.outcome", "failure")
        else:
            span.span.set_attribute("omnixan.attempt.outcome", "returned")
        span.span.end()

    def inject(self, headers: MutableMapping[str, str]) -> None:
        _PROPAGATOR.inject(headers)  # the current context: the try's span while its function runs

    def note_status(self, status: int) -> None:
        span = trace.get_current_span()
        span.set_attribute("http.response.status_code", status)
        if status >= 400:  # a client span's 4xx is an error too (HTTP semantic conventions)
            span.set_status(trace.Status(trace.StatusCode.ERROR))
