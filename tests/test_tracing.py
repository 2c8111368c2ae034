"""OpenTelemetry tracing (``tracing:``, ``[otel]``): the proxy's spans per request and per try, the
``traceparent`` its backends receive, and the library's spans. Spans are kept by the SDK's
``InMemorySpanExporter``; backends and the proxy are real, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from load_balancing_module import (
    BackendConfig,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    RouteResult,
)
from load_balancing_module.server.config import ServerConfig
from load_balancing_module.server.outbound import traced_head
from load_balancing_module.server.tracing import ProxyTracer
from load_balancing_module.tracing import OpenTelemetryTracer
from proxy_helpers import AioBackend, get, start_proxy
from servers import closed_port

PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"


class Spans:
    """A tracer provider whose finished spans are kept in memory."""

    def __init__(self, ratio: float = 1.0) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = ProxyTracer(self.provider)

    def of(self, kind: SpanKind) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.kind is kind]


@pytest.fixture
def spans() -> Iterator[Spans]:
    kept = Spans()
    yield kept
    kept.provider.shutdown()


def traceparent_of(answer: Any) -> str | None:
    """The traceparent the echo backend received."""
    found = [value for name, value in answer["headers"] if name.lower() == "traceparent"]
    assert len(found) <= 1, found
    return found[0] if found else None


def sampled(traceparent: str | None) -> str:
    """A traceparent without its flags, once checked that they say sampled (the SDK may add "random")."""
    assert traceparent is not None
    head, _, flags = traceparent.rpartition("-")
    assert int(flags, 16) & 1, traceparent
    return head


def span_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


async def test_a_request_makes_a_server_span_and_a_client_span_whose_context_reaches_the_backend(
    spans: Spans,
) -> None:
    async with (
        AioBackend("a") as backend,
        start_proxy([backend.port], tracer=spans.tracer) as proxy,
        proxy.client() as client,
    ):
        response = await client.request(get("/items?x=1"))
        assert response.status == 200
        (server,) = spans.of(SpanKind.SERVER)
        (attempt,) = spans.of(SpanKind.CLIENT)
        traceparent = traceparent_of(response.json())
    assert server.name == "GET" and server.attributes is not None
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["url.path"] == "/items" and server.attributes["url.query"] == "x=1"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["client.address"] == "127.0.0.1"
    assert server.attributes["omnixan.pool"] == "default" and server.attributes["omnixan.attempts"] == 1
    assert server.parent is None
    assert attempt.parent is not None and attempt.parent.span_id == server.get_span_context().span_id
    assert attempt.attributes is not None
    assert attempt.attributes["server.port"] == backend.port and attempt.attributes["server.address"] == "127.0.0.1"
    assert attempt.attributes["omnixan.backend.id"] == proxy.backend_ids[0]
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["omnixan.attempt.outcome"] == "success"
    assert "http.request.resend_count" not in attempt.attributes
    trace_id, span_id = span_ids(attempt)
    assert sampled(traceparent) == f"00-{trace_id}-{span_id}"  # the try's span is the backend's parent


async def test_a_retry_makes_a_client_span_per_try(spans: Spans) -> None:
    async with (
        AioBackend("ok") as ok,
        start_proxy([closed_port(), ok.port], tracer=spans.tracer) as proxy,  # round robin: the dead one first
        proxy.client() as client,
    ):
        response = await client.request(get())
        assert response.status == 200
        traceparent = traceparent_of(response.json())
    (server,) = spans.of(SpanKind.SERVER)
    failed, succeeded = sorted(spans.of(SpanKind.CLIENT), key=lambda span: span.start_time or 0)
    assert failed.attributes is not None and succeeded.attributes is not None
    assert failed.attributes["omnixan.attempt.outcome"] == "failure" and failed.status.status_code is StatusCode.ERROR
    assert "http.response.status_code" not in failed.attributes
    assert succeeded.attributes["http.request.resend_count"] == 1
    assert succeeded.attributes["server.port"] == ok.port
    assert server.attributes is not None and server.attributes["omnixan.attempts"] == 2
    for attempt in (failed, succeeded):
        assert attempt.parent is not None and attempt.parent.span_id == server.get_span_context().span_id
    trace_id, span_id = span_ids(succeeded)
    assert sampled(traceparent) == f"00-{trace_id}-{span_id}"


async def test_an_incoming_traceparent_is_continued_and_replaced_upstream(spans: Spans) -> None:
    incoming = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
    async with (
        AioBackend("a") as backend,
        start_proxy([backend.port], tracer=spans.tracer) as proxy,
        proxy.client() as client,
    ):
        answer = (await client.request(get("/", f"traceparent: {incoming}", "tracestate: vendor=1"))).json()
    (server,) = spans.of(SpanKind.SERVER)
    (attempt,) = spans.of(SpanKind.CLIENT)
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_SPAN
    trace_id, span_id = span_ids(attempt)
    assert trace_id == PARENT_TRACE
    assert sampled(traceparent_of(answer)) == f"00-{PARENT_TRACE}-{span_id}"  # one line: the client's is replaced
    assert [value for name, value in answer["headers"] if name.lower() == "tracestate"] == ["vendor=1"]


async def test_a_malformed_traceparent_starts_a_new_trace_and_is_not_forwarded(spans: Spans) -> None:
    async with (
        AioBackend("a") as backend,
        start_proxy([backend.port], tracer=spans.tracer) as proxy,
        proxy.client() as client,
    ):
        answer = (await client.request(get("/", "traceparent: 00-zz-not-a-trace"))).json()
    (server,) = spans.of(SpanKind.SERVER)
    (attempt,) = spans.of(SpanKind.CLIENT)
    assert server.parent is None
    trace_id, span_id = span_ids(attempt)
    assert sampled(traceparent_of(answer)) == f"00-{trace_id}-{span_id}"


async def test_the_server_span_of_a_backend_5xx_is_an_error(spans: Spans) -> None:
    from aiohttp import web

    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=500)

    async with (
        AioBackend("bad", failing) as backend,
        start_proxy([backend.port], tracer=spans.tracer) as proxy,
        proxy.client() as client,
    ):
        assert (await client.request(get())).status == 500
    (server,) = spans.of(SpanKind.SERVER)
    (attempt,) = spans.of(SpanKind.CLIENT)
    assert server.status.status_code is StatusCode.ERROR
    assert attempt.attributes is not None and attempt.attributes["omnixan.attempt.outcome"] == "error_status"


async def test_a_try_the_client_left_is_abandoned_not_failed(spans: Spans) -> None:
    from aiohttp import web

    arrived = asyncio.Event()

    async def stalls(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(10)
        return web.Response()

    async with AioBackend("slow", stalls) as backend, start_proxy([backend.port], tracer=spans.tracer) as proxy:
        client = proxy.client()
        await client.send(get())
        await asyncio.wait_for(arrived.wait(), 5)
        await client.close()
        for _ in range(200):  # until the proxy has seen the client go (a few ms)
            if spans.of(SpanKind.SERVER):
                break
            await asyncio.sleep(0.01)
    (server,) = spans.of(SpanKind.SERVER)
    (attempt,) = spans.of(SpanKind.CLIENT)
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 499
    assert attempt.attributes is not None and attempt.attributes["omnixan.attempt.outcome"] == "abandoned"
    assert attempt.status.status_code is StatusCode.UNSET  # the backend did nothing wrong


@pytest.mark.parametrize("incoming", [None, f"00-{PARENT_TRACE}-{PARENT_SPAN}-00"])
async def test_a_request_not_sampled_makes_no_span_and_keeps_its_head(incoming: str | None) -> None:
    unsampled = Spans(ratio=0.0)
    headers = () if incoming is None else (f"traceparent: {incoming}",)
    try:
        async with (
            AioBackend("a") as backend,
            start_proxy([backend.port], tracer=unsampled.tracer) as proxy,
            proxy.client() as client,
        ):
            answer = (await client.request(get("/", *headers))).json()
    finally:
        unsampled.provider.shutdown()
    assert unsampled.exporter.get_finished_spans() == ()
    assert traceparent_of(answer) == incoming


async def test_the_configured_tracer_sends_its_spans_by_otlp_when_the_proxy_stops() -> None:
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    exported: list[bytes] = []

    async def collector(request: web.Request) -> web.Response:
        exported.append(await request.read())
        return web.Response()

    async with AioBackend("collector", collector) as otlp, AioBackend("a") as backend:
        tracing = {"otlp_endpoint": f"http://127.0.0.1:{otlp.port}/v1/traces", "service_name": "edge-test"}
        async with start_proxy([backend.port], tracing=tracing) as proxy, proxy.client() as client:
            assert (await client.request(get())).status == 200
        # proxy.close() has flushed the batch
    assert otlp.requests == [("POST", "/v1/traces")]
    sent = ExportTraceServiceRequest.FromString(exported[0])
    (resource_spans,) = sent.resource_spans
    service = [a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"]
    assert service == ["edge-test"]
    kinds = sorted(span.kind for scope in resource_spans.scope_spans for span in scope.spans)
    assert kinds == [2, 3]  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT


def test_traced_head_replaces_the_client_trace_lines() -> None:
    head = b"GET /trace HTTP/1.1\r\nHost: t\r\nTraceParent: x\r\ntracestate : y\r\nX-Trace: z\r\n\r\n"
    lines = b"traceparent: 00-a-b-01\r\n"
    assert traced_head(head, lines) == b"GET /trace HTTP/1.1\r\nHost: t\r\nX-Trace: z\r\n" + lines + b"\r\n"
    plain = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    assert traced_head(plain, lines) == b"GET / HTTP/1.1\r\nHost: t\r\n" + lines + b"\r\n"


def test_the_tracing_settings_are_checked() -> None:
    config = ServerConfig.model_validate({"tracing": {"sample_ratio": 0.25, "service_name": "edge"}})
    assert config.tracing is not None and config.tracing.otlp_endpoint == "http://localhost:4318/v1/traces"
    assert ServerConfig().tracing is None  # off by default
    with pytest.raises(ValueError, match="otlp_endpoint 'localhost:4318' is not an http"):
        ServerConfig.model_validate({"tracing": {"otlp_endpoint": "localhost:4318"}})
    with pytest.raises(ValueError, match="sample_ratio"):
        ServerConfig.model_validate({"tracing": {"sample_ratio": 2}})


def test_a_proxy_without_tracing_loads_no_opentelemetry_module() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.path.insert(0, "tests")
        from proxy_helpers import AioBackend, get, start_proxy

        async def main():
            async with AioBackend("a") as backend, start_proxy([backend.port]) as proxy, proxy.client() as client:
                for _ in range(3):
                    assert (await client.request(get())).status == 200
            loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
            assert not loaded, loaded

        asyncio.run(main())
        print("clean")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr


# -- the library: call() and the httpx transport ---------------------------------------------------


async def library_module(spans: Spans, ports: list[int]) -> LoadBalancingModule:
    config = LoadBalancingModuleConfig(
        algorithm="round_robin",
        health_check=HealthCheckConfig(enabled=False),
        retry_backoff_base=0.001,
        retry_backoff_max=0.002,
    )
    lb = LoadBalancingModule(config, tracer=OpenTelemetryTracer(spans.provider))
    for port in ports:
        await lb.add_backend(BackendConfig(host="127.0.0.1", port=port))
    return lb


async def test_each_try_of_call_is_a_span_under_the_callers(spans: Spans) -> None:
    lb = await library_module(spans, [1001, 1002])
    seen: list[Any] = []

    async def fn(route: RouteResult) -> str:
        seen.append(trace.get_current_span().get_span_context())  # the try's span is current
        if route.port == 1001:
            raise ConnectionError("refused")
        return "ok"

    caller = trace.get_tracer("test", tracer_provider=spans.provider)
    with caller.start_as_current_span("caller") as parent:
        assert await lb.call(Request(), fn) == "ok"
    failed, succeeded = spans.of(SpanKind.CLIENT)
    for span, port, retry in ((failed, 1001, 0), (succeeded, 1002, 1)):
        assert span.attributes is not None and span.attributes["server.port"] == port
        assert span.attributes["omnixan.retry"] == retry
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert [context.span_id for context in seen] == [failed.context.span_id, succeeded.context.span_id]
    assert failed.status.status_code is StatusCode.ERROR and failed.events[0].name == "exception"
    assert succeeded.attributes is not None and succeeded.attributes["omnixan.attempt.outcome"] == "returned"
    assert trace.get_current_span() is trace.INVALID_SPAN  # every try's context was left


async def test_the_httpx_transport_sends_each_try_its_traceparent(spans: Spans) -> None:
    httpx = pytest.importorskip("httpx")
    from integration_helpers import URL, http_servers
    from load_balancing_module.integrations.httpx import LoadBalancedTransport

    async with http_servers(1) as servers:
        lb = await library_module(spans, [servers[0].port])
        async with httpx.AsyncClient(transport=LoadBalancedTransport(lb)) as http:
            assert (await http.get(f"{URL}/")).text == "b0"
    (attempt,) = spans.of(SpanKind.CLIENT)
    assert attempt.attributes is not None and attempt.attributes["http.response.status_code"] == 200
    ((_, _, headers),) = servers[0].heads
    received = {name.lower(): value for name, value in headers.items()}
    trace_id, span_id = span_ids(attempt)
    assert sampled(received["traceparent"]) == f"00-{trace_id}-{span_id}"


def test_a_module_without_a_tracer_loads_no_opentelemetry_module() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from load_balancing_module import BackendConfig, LoadBalancingModule, Request

        async def main():
            lb = LoadBalancingModule()
            await lb.add_backend(BackendConfig(host="127.0.0.1", port=1))
            async def fn(route):
                return route.port
            assert await lb.call(Request(), fn) == 1

        asyncio.run(main())
        print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_tracing_without_the_extra_names_it() -> None:
    script = textwrap.dedent(
        """
        import sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, Refuse())
        from load_balancing_module.server.config import ServerConfig
        from load_balancing_module.server.proxy import ProxyServer
        from load_balancing_module import LoadBalancingModule

        for load in (
            lambda: ProxyServer(LoadBalancingModule(), ServerConfig(tracing={})),
            lambda: __import__("load_balancing_module.tracing"),
        ):
            try:
                load()
            except ModuleNotFoundError as exc:
                print(exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "tracing: in the config needs opentelemetry: pip install 'omnixan-lb[otel]'",
        "load_balancing_module.tracing needs opentelemetry: pip install 'omnixan-lb[otel]'",
    ]
