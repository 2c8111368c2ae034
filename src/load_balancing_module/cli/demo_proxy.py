"""``omnixan-lb demo``: the proxy at work on real local backends.

Starts four HTTP backends on 127.0.0.1 (fast, medium, slow, and a
quantum-capable one), the proxy and the admin listener on free ports, sends
real HTTP traffic through the proxy in three phases with a progress line,
stops one backend in the last phase to show failover, prints the load
distribution as a table and leaves an SVG bar chart of it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ..enums import LoadBalancingAlgorithmType
from ..server.app import Server
from ..server.config import load_config
from .chart import bar_chart
from .demo_library import DemoBackend


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0


async def _traffic(
    port: int, seconds: float, label: str, headers: dict[str, str], tally: Tally, concurrency: int = 16
) -> None:
    """Keep ``concurrency`` requests going through the proxy for ``seconds``, with a progress line."""
    started = time.monotonic()
    deadline = started + seconds
    url = f"http://127.0.0.1:{port}/"

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            try:
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        tally.ok += 1
                    else:
                        tally.failed += 1
            except aiohttp.ClientError:
                tally.failed += 1

    async def progress() -> None:
        while time.monotonic() < deadline and sys.stdout.isatty():
            elapsed = time.monotonic() - started
            bar = "#" * int(30 * elapsed / seconds)
            print(f"\r  {label:<38} [{bar:<30}] {tally.ok:>6} ok {tally.failed:>4} failed", end="", flush=True)
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(progress(), *(worker(session) for _ in range(concurrency)))
    print(f"\r  {label:<38} [{'#' * 30}] {tally.ok:>6} ok {tally.failed:>4} failed", flush=True)


async def run_demo(output: Path) -> int:
    backends = [
        DemoBackend("fast", 0.002),
        DemoBackend("medium", 0.010),
        DemoBackend("slow", 0.040),
        DemoBackend("quantum", 0.015, quantum=True),
    ]
    for backend in backends:
        await backend.start()
    names = {f"127.0.0.1:{b.port}": b.name for b in backends}
    with tempfile.TemporaryDirectory(prefix="omnixan-demo-") as tmp:
        path = Path(tmp) / "demo.yaml"
        lines = [
            'listen: "127.0.0.1:0"',
            'admin: {listen: "127.0.0.1:0", token_env: null}',
            "algorithm: least_latency",
            "access_log: false",
            "max_retries: 2",
            "retry_budget_min_concurrency: 16",
            "health_check: {type: http, path: /health, interval: 0.5, timeout: 0.5, unhealthy_threshold: 2}",
            "backends:",
        ]
        lines += [
            f"  - {{host: 127.0.0.1, port: {b.port}, quantum_capable: {str(b.quantum).lower()}}}" for b in backends
        ]
        path.write_text("\n".join(lines) + "\n")
        server = Server(path, load_config(path))
        await server.start()
        try:
            admin = f"http://127.0.0.1:{server.admin.port}"
            print(
                f"Proxy on http://127.0.0.1:{server.proxy.port}/; while it runs, the dashboard is on {admin}/ "
                f"and the metrics on {admin}/metrics"
            )
            print(
                "Backends: "
                + ", ".join(
                    f"{b.name} :{b.port} ({b.delay * 1000:g} ms{', quantum' if b.quantum else ''})" for b in backends
                )
            )
            tally = Tally()
            await _traffic(server.proxy.port, 2.0, "least_latency, classical", {}, tally)
            await server.lb.configure_algorithm(LoadBalancingAlgorithmType.QUANTUM_AWARE.value)
            await _traffic(
                server.proxy.port,
                1.5,
                "quantum_aware, quantum workloads",
                {"X-Workload-Type": "quantum_simulation"},
                tally,
            )
            await server.lb.configure_algorithm(LoadBalancingAlgorithmType.LEAST_LATENCY.value)
            stop = asyncio.create_task(_stop_later(backends[0], 0.5))
            await _traffic(server.proxy.port, 2.0, "least_latency, 'fast' stops at 0.5 s", {}, tally)
            await stop
            dist = await server.lb.get_load_distribution()
        finally:
            await server.shutdown()
            for backend in backends:
                await backend.stop()
    print(f"\n{tally.ok} requests answered, {tally.failed} failed; proxy retries: {server.lb.counts()['retries']}\n")
    print(
        f"  {'backend':<8} {'address':<17} {'health':<10} {'circuit':<9} {'requests':>8} {'failed':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'share':>6}"
    )
    for backend_id, b in dist.backends.items():
        print(
            f"  {names[backend_id]:<8} {backend_id:<17} {b['health_status']:<10} {b['circuit_state']:<9} "
            f"{b['total_requests']:>8} {b['failed_requests']:>6} {b['p50_latency_ms']:>7.1f} "
            f"{b['p99_latency_ms']:>7.1f} {b['load_fraction']:>6.1%}"
        )
    chart = bar_chart(
        output,
        [names[i] for i in dist.backends],
        [b["total_requests"] for b in dist.backends.values()],
        "requests per backend",
    )
    print(f"\nChart of the distribution: {chart.resolve()}")
    return 0


async def _stop_later(backend: DemoBackend, delay: float) -> None:
    await asyncio.sleep(delay)
    await backend.stop()


def main(output: str = "omnixan-lb-demo.svg") -> int:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    return asyncio.run(run_demo(Path(output)))
