"""Latencies resolve well under a millisecond (issue 16, item 7).

On uvloop the event loop's clock ticks in whole milliseconds, so a 0.2 ms
answer measured with it reads 0 or 1 ms. Every latency is measured with the
module's clock instead (``SystemClock``: ``time.perf_counter``): the proxy's
``upstream_ms`` and ``total_ms``, its request duration histogram, the latency
it feeds the balancer, and the library's own (``call()``, health probes).

The tests on real sockets run on uvloop, as ``serve`` does, against a backend
on 127.0.0.1 that answers from the callback that read the request; they assert
fractions of a millisecond, and below 1 ms only for the fastest of many
answers. The exact figures come from a ``FakeClock`` that the backend moves
0.3 ms forward before each answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, cast

import pytest

from load_balancing_module import (
    BackendConfig,
    FakeClock,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    SystemClock,
)
from proxy_helpers import HOST, get, start_proxy

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
REQUESTS = 20


class FastBackend(asyncio.Protocol):
    """Answers each request head (or line, for ``call()``) at once, from the callback that read it."""

    def __init__(self, answer: bytes, end: bytes, before: Callable[[], None] | None) -> None:
        self.answer = answer
        self.end = end
        self.before = before  # run before each answer (a fake clock moved forward)
        self.pending = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while self.end in self.pending:
            _, _, self.pending = self.pending.partition(self.end)
            if self.before is not None:
                self.before()
            assert self.transport is not None
            self.transport.write(self.answer)


@contextlib.asynccontextmanager
async def fast_backend(
    answer: bytes = ANSWER, end: bytes = b"\r\n\r\n", before: Callable[[], None] | None = None
) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FastBackend(answer, end, before), HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(scenario())


def whole_ms(value: float) -> bool:
    """A whole number of milliseconds: what the loop's clock on uvloop measures."""
    return value == round(value)


# -- the clock -------------------------------------------------------------------------------------------


def test_the_system_clock_resolves_microseconds() -> None:
    assert time.get_clock_info("perf_counter").resolution <= 1e-6
    clock = SystemClock()
    steps = []
    for _ in range(10):  # the smallest of ten: a reading the scheduler interrupted does not count
        first = clock.monotonic()
        now = first
        for _ in range(1_000_000):
            now = clock.monotonic()
            if now != first:
                break
        steps.append(now - first)
    assert 0 < min(steps) < 1e-4  # a clock in whole milliseconds moves 1e-3 at a time


async def test_the_fake_clock_resolves_what_advance_moves_and_latencies_follow() -> None:
    clock = FakeClock()
    lb = LoadBalancingModule(
        LoadBalancingModuleConfig(algorithm="least_latency", health_check=HealthCheckConfig(enabled=False)),
        clock=clock,
    )
    backend_id = await lb.add_backend(BackendConfig(host="a.test", port=80))
    before = clock.monotonic()
    result = await lb.route_request(Request())
    await clock.advance(0.00025)
    assert clock.monotonic() - before == pytest.approx(0.00025, abs=1e-12)
    lb.complete_now(result, success=True)  # measured on the clock: 0.25 ms
    assert lb.backends[backend_id].latency_cost == pytest.approx(0.25, abs=1e-6)
    assert lb.describe_backend(backend_id)["avg_latency_ms"] == pytest.approx(0.25, abs=1e-6)


# -- the library on uvloop -----------------------------------------------------------------------------


def test_call_and_probes_measure_a_fast_backend_below_a_millisecond_on_uvloop() -> None:
    async def scenario() -> None:
        async with fast_backend(b"pong\n", b"\n") as port:
            reader, writer = await asyncio.open_connection(HOST, port)
            lb = LoadBalancingModule(
                LoadBalancingModuleConfig(algorithm="least_latency", health_check=HealthCheckConfig(enabled=False))
            )
            backend_id = await lb.add_backend(BackendConfig(host=HOST, port=port))
            backend = lb.backends[backend_id]

            async def ping(_: object) -> bytes:
                writer.write(b"ping\n")
                return await reader.readline()

            costs = []
            for _ in range(REQUESTS):
                assert await lb.call(Request(), ping) == b"pong\n"
                costs.append(backend.latency_cost)
            # least_latency's EWMA of what call() measured, and the median of its latency window:
            # fractions of a millisecond (the EWMA keeps a slow first sample for seconds: no bound)
            assert all(cost > 0 and not whole_ms(cost) for cost in costs), costs
            assert 0 < lb.describe_backend(backend_id)["p50_latency_ms"] < 1.0
            probes = [(await lb.health_check(backend_id)).latency_ms for _ in range(5)]  # TCP connects
            assert all(p is not None and p > 0 and not whole_ms(p) for p in probes), probes
            assert min(p for p in probes if p is not None) < 1.0, probes
            writer.close()
            await lb.shutdown()

    on_uvloop(scenario)


# -- the proxy on uvloop ------------------------------------------------------------------------------------


def test_upstream_ms_and_the_balancer_see_fractions_of_a_millisecond_on_uvloop() -> None:
    async def scenario() -> None:
        async with (
            fast_backend() as port,
            start_proxy([port], algorithm="least_latency") as proxy,
            proxy.client() as client,
        ):
            costs = []
            for _ in range(REQUESTS):
                assert (await client.request(get("/"))).status == 200
                costs.append(proxy.lb.backends[proxy.backend_ids[0]].latency_cost)
        lines = [json.loads(line) for line in proxy.access.lines]
        upstream = [line["upstream_ms"] for line in lines]
        total = [line["total_ms"] for line in lines]
        assert len(lines) == REQUESTS
        assert all(0 < u <= t for u, t in zip(upstream, total, strict=True)), lines
        # The access log keeps microseconds: nearly every reading has a part below the
        # millisecond (the loop's clock on uvloop gives none: 0.0, 1.0...).
        assert sum(not whole_ms(u) for u in upstream) >= REQUESTS // 2, upstream
        assert sum(not whole_ms(t) for t in total) >= REQUESTS // 2, total
        assert min(upstream) < 1.0, upstream
        # the latency the proxy completes each try with (the time to the response head)
        assert all(cost > 0 and not whole_ms(cost) for cost in costs), costs
        assert 0 < proxy.lb.describe_backend(proxy.backend_ids[0])["p50_latency_ms"] < 1.0
        ((_, code_class, counts, seconds),) = proxy.lb.request_stats.series()
        assert code_class == "2xx" and sum(counts) == REQUESTS
        assert seconds * 1000.0 == pytest.approx(sum(total), abs=0.001 * REQUESTS)
        assert not whole_ms(seconds * 1000.0)

    on_uvloop(scenario)


def test_a_0_3_ms_answer_is_0_3_ms_in_the_log_the_histogram_and_the_ewma_on_uvloop() -> None:
    """The backend moves the modules' fake clock 0.3 ms forward before each answer: every
    duration the proxy reports or feeds the balancer is then exactly 0.3 ms."""
    clock = FakeClock()

    def answer_in_0_3_ms() -> None:
        clock.set(clock.monotonic() + 0.0003)

    async def scenario() -> None:
        async with (
            fast_backend(before=answer_in_0_3_ms) as port,
            start_proxy([port], clock=clock, algorithm="least_latency") as proxy,
            proxy.client() as client,
        ):
            for _ in range(5):
                assert (await client.request(get("/"))).status == 200
        backend_id = proxy.backend_ids[0]
        for line in map(json.loads, proxy.access.lines):
            assert (line["upstream_ms"], line["total_ms"]) == (0.3, 0.3)
        ((backend, _, counts, seconds),) = proxy.lb.request_stats.series()
        assert backend == backend_id
        assert counts[0] == 5 and sum(counts) == 5  # the first bucket: le="0.0005"
        assert seconds == pytest.approx(5 * 0.0003)
        assert proxy.lb.backends[backend_id].latency_cost == pytest.approx(0.3)
        assert proxy.lb.describe_backend(backend_id)["p99_latency_ms"] == pytest.approx(0.3)

    on_uvloop(scenario)
