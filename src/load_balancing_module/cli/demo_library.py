"""``omnixan-lb demo``: the library at work on real local backends.

Starts three HTTP backends on 127.0.0.1 (fast, medium, slow), sends real
requests to them through ``LoadBalancingModule.call`` with two algorithms,
stops one backend mid-run to show failover, and prints the distribution.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from ..config import (
    BackendConfig,
    HealthCheckConfig,
    LoadBalancingAlgorithm,
    LoadBalancingModuleConfig,
    Request,
)
from ..enums import LoadBalancingAlgorithmType
from ..exceptions import RoutingError
from ..models import RouteResult
from ..module import LoadBalancingModule


@dataclass
class DemoBackend:
    """A real HTTP backend on 127.0.0.1 that answers every path after ``delay`` seconds,
    except ``/health``, which answers at once."""

    name: str
    delay: float
    quantum: bool = False
    port: int = 0
    runner: web.AppRunner | None = field(default=None, repr=False)

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            await asyncio.sleep(self.delay)
            return web.Response(text=f"hello from {self.name}\n")

        app = web.Application()
        app.router.add_get("/health", _ok)
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _traffic(
    lb: LoadBalancingModule, session: aiohttp.ClientSession, count: int, concurrency: int
) -> tuple[int, int]:
    """Send ``count`` real GETs through ``lb.call``; return (ok, failed)."""
    ok = failed = 0
    rng = random.Random(1)
    semaphore = asyncio.Semaphore(concurrency)

    async def fetch(result: RouteResult) -> str:
        async with session.get(f"http://{result.host}:{result.port}/") as response:
            response.raise_for_status()
            return await response.text()

    async def one(i: int) -> None:
        nonlocal ok, failed
        async with semaphore:
            try:
                await lb.call(Request(client_ip=f"10.0.{rng.randrange(256)}.{i % 256}"), fetch)
                ok += 1
            except RoutingError:
                failed += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return ok, failed


async def _print_distribution(lb: LoadBalancingModule, names: dict[str, str]) -> None:
    dist = await lb.get_load_distribution()
    print(f"  algorithm={dist.algorithm}  total_requests={dist.total_requests}")
    print(
        f"  {'backend':<8} {'address':<17} {'health':<10} {'circuit':<9} {'requests':>8} {'ok':>6} "
        f"{'failed':>6} {'p50 ms':>7} {'p99 ms':>7} {'share':>6}"
    )
    for backend_id, b in dist.backends.items():
        print(
            f"  {names[backend_id]:<8} {backend_id:<17} {b['health_status']:<10} {b['circuit_state']:<9} "
            f"{b['total_requests']:>8} {b['successful_requests']:>6} {b['failed_requests']:>6} "
            f"{b['p50_latency_ms']:>7.1f} {b['p99_latency_ms']:>7.1f} {b['load_fraction']:>6.1%}"
        )


async def run_demo(requests_per_phase: int = 300) -> int:
    backends = [DemoBackend("fast", 0.002), DemoBackend("medium", 0.010), DemoBackend("slow", 0.030)]
    for backend in backends:
        await backend.start()
    config = LoadBalancingModuleConfig(
        health_check=HealthCheckConfig(
            type="http", path="/health", interval=0.5, timeout=0.5, unhealthy_threshold=2, healthy_threshold=2
        ),
        max_retries=2,
        retry_backoff_base=0.01,
        retry_backoff_max=0.1,
        # All 8 requests in flight on a backend that dies may need a retry at once.
        retry_budget_min_concurrency=8,
    )
    names: dict[str, str] = {}
    started = time.monotonic()
    try:
        async with LoadBalancingModule(config) as lb, aiohttp.ClientSession() as session:
            for backend in backends:
                names[await lb.add_backend(BackendConfig(host="127.0.0.1", port=backend.port))] = backend.name
            print("Backends: " + ", ".join(f"{b.name}=127.0.0.1:{b.port} ({b.delay * 1000:g} ms)" for b in backends))
            for kind in (LoadBalancingAlgorithmType.ROUND_ROBIN, LoadBalancingAlgorithmType.LEAST_LATENCY):
                await lb.configure_algorithm(LoadBalancingAlgorithm(algorithm_type=kind))
                ok, failed = await _traffic(lb, session, requests_per_phase, concurrency=8)
                print(f"\n{kind.value}: {ok} ok, {failed} failed")
                await _print_distribution(lb, names)
            victim = backends[0]
            print(f"\nStopping backend '{victim.name}' (127.0.0.1:{victim.port}) while traffic flows...")
            stop = asyncio.create_task(_stop_later(victim, 0.05))
            ok, failed = await _traffic(lb, session, requests_per_phase, concurrency=8)
            await stop
            await asyncio.sleep(1.2)  # let the health checks see it
            print(f"least_latency with a dead backend: {ok} ok, {failed} failed (retries: {lb.counts()['retries']})")
            await _print_distribution(lb, names)
    finally:
        for backend in backends:
            await backend.stop()
    print(f"\nDone in {time.monotonic() - started:.1f} s.")
    return 0


async def _stop_later(backend: DemoBackend, delay: float) -> None:
    await asyncio.sleep(delay)
    await backend.stop()


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="  [log] %(message)s", stream=sys.stdout)
    return asyncio.run(run_demo())
