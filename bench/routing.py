"""Cost of one ``route_request`` + ``complete_request`` pair, per algorithm.

A benchmark, not a test: it prints figures and asserts nothing about time.

Method
------
For each algorithm and each tier size (10, 100, 1,000, 10,000 backends) a fresh
``LoadBalancingModule`` is built with health checks off (``initialize`` is
never called, so nothing runs in the background and nothing is contacted)
and the backends ``127.0.0.1:10000+i``. A quarter of them are quantum-capable
and weights cycle 1, 2, 3. Requests come from a pool of 1,000 pre-built
``Request`` objects with distinct client IPs (so IP_HASH spreads) and a
70/30 mix of classical and quantum workloads (so QUANTUM_AWARE uses both
classes).

The load is a steady state: ``IN_FLIGHT`` requests are kept in flight in a
FIFO; one *pair* routes a new request and completes the oldest, with a
latency drawn from a seeded log-normal distribution (median 20 ms) and about
1% failures (the breaker threshold is 1,000, so no circuit opens). Request,
outcome and latency come from a pre-drawn plan, so no random numbers are
drawn inside the timed loop.

Everything runs in one asyncio event loop (plain asyncio, no uvloop) on the
real ``SystemClock``. The warm-up is ``warmup`` pairs or 4 per backend,
whichever is more, so that every size is timed in its steady state: the first
picks build rings and heaps, and LEAST_LATENCY first tries every backend it
has no sample of (10,000 picks at 10,000 backends), then settles. The three
sizes of one algorithm are built and warmed together; then ``batches`` rounds
each time one batch of ``batch`` pairs per size with ``time.perf_counter_ns``
(interleaved, so a burst of load from elsewhere on a shared machine hits every
size alike and the 10,000/10 ratio stays fair). The cost of a pair is batch
time / batch size; the table shows the median batch (and the fastest batch).
Thread CPU time per batch is recorded as well, which leaves out time the
process was preempted. The garbage collector stays on, as in production;
``gc.collect()`` runs before timing.

The bar each algorithm is held to: a median of at most 10 us per pair at
1,000 backends, and at most 1.5 x the 10-backend cost at 10,000 backends.

Usage::

    .venv/bin/python bench/routing.py                 # full table (under a minute)
    .venv/bin/python bench/routing.py --quick         # fewer, smaller batches
    .venv/bin/python bench/routing.py --json out.json # also write raw results
    .venv/bin/python bench/routing.py --plot docs/img/bench   # also routing-cost.png (matplotlib)
    .venv/bin/python bench/routing.py --profile ip_hash 10000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import random
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from load_balancing_module import (
    BackendConfig,
    CircuitBreakerConfig,
    CircuitState,
    HealthCheckConfig,
    LoadBalancingAlgorithm,
    LoadBalancingAlgorithmType,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    RouteResult,
    WorkloadType,
)

try:
    from bench.common import command_line
except ModuleNotFoundError:  # run as a script: python bench/routing.py
    from common import command_line  # type: ignore[no-redef,import-not-found]

Step = tuple[Request, bool, float]  # a request to route; success and latency_ms for the one completed

SIZES = (10, 100, 1_000, 10_000)  # the bar reads 10, 1,000 and 10,000; 100 fills in the plot
IN_FLIGHT = 16  # requests kept in flight during the steady state
POOL = 1_000  # distinct pre-built requests (distinct client IPs)
PLAN = 8_191  # length of the pre-drawn (request, outcome, latency) plan; prime, so it drifts against POOL
QUANTUM_EVERY = 4  # every 4th backend is quantum-capable
QUANTUM_SHARE = 0.3  # share of requests with a quantum workload
FAILURE_RATE = 0.01
LATENCY_MEDIAN_MS = 20.0
LATENCY_SIGMA = 0.5

WARMUP_PER_BACKEND = 4  # warm-up pairs per backend, at least (see warmup_pairs)
BAR_US_AT_1000 = 10.0  # at most this many microseconds per pair at 1,000 backends
BAR_RATIO = 1.5  # and cost at 10,000 backends at most this times the cost at 10


@dataclass
class Settings:
    batches: int = 15
    batch: int = 2_000
    warmup: int = 5_000


QUICK = Settings(batches=5, batch=1_000, warmup=1_000)


@dataclass
class Case:
    algorithm: str
    backends: int
    batch_us: list[float]  # per-pair wall time of each timed batch, in microseconds
    batch_cpu_us: list[float] = field(default_factory=list)  # the same in thread CPU time
    median_us: float = 0.0
    min_us: float = 0.0
    median_cpu_us: float = 0.0
    setup_s: float = 0.0  # building the module and adding the backends
    first_pick_ms: float = 0.0  # the first route, which builds the algorithm's structures
    backends_used: int = 0  # backends that took at least one request (a sanity check)
    open_circuits: int = 0  # must stay 0; otherwise the steady state is not the one intended
    extra: dict[str, Any] = field(default_factory=dict)


# -- the workload --------------------------------------------------------------


def build_requests(rng: random.Random) -> list[Request]:
    quantum = [w for w in WorkloadType if w.is_quantum]
    requests = []
    for i in range(POOL):
        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        workload = rng.choice(quantum) if rng.random() < QUANTUM_SHARE else WorkloadType.CLASSICAL
        requests.append(Request(client_ip=ip, workload_type=workload))
    return requests


def build_plan(rng: random.Random, requests: Sequence[Request]) -> list[Step]:
    """Pre-drawn (request, success, latency_ms) triples, used in a cycle."""
    mu = math.log(LATENCY_MEDIAN_MS)
    return [
        (requests[i % len(requests)], rng.random() >= FAILURE_RATE, rng.lognormvariate(mu, LATENCY_SIGMA))
        for i in range(PLAN)
    ]


def backend_configs(n: int) -> list[BackendConfig]:
    return [
        BackendConfig(
            host="127.0.0.1",
            port=10_000 + i,
            weight=float(1 + i % 3),
            quantum_capable=i % QUANTUM_EVERY == 0,
        )
        for i in range(n)
    ]


async def make_module(kind: LoadBalancingAlgorithmType, configs: Sequence[BackendConfig]) -> LoadBalancingModule:
    config = LoadBalancingModuleConfig(
        algorithm=LoadBalancingAlgorithm(algorithm_type=kind),
        health_check=HealthCheckConfig(enabled=False),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1000),
    )
    lb = LoadBalancingModule(config, rng=random.Random(1))
    for backend in configs:
        await lb.add_backend(backend)
    return lb


# -- the timed loop --------------------------------------------------------------

Route = Callable[[Request], Awaitable[RouteResult]]
Complete = Callable[..., Awaitable[None]]


async def run_pairs(
    route: Route, complete: Complete, plan: Iterator[Step], in_flight: deque[RouteResult], n: int
) -> None:
    """``n`` pairs: route a new request, complete the oldest one in flight."""
    for request, success, latency_ms in islice(plan, n):
        in_flight.append(await route(request))
        await complete(in_flight.popleft(), success=success, latency_ms=latency_ms)


async def time_batch(
    route: Route, complete: Complete, plan: Iterator[Step], in_flight: deque[RouteResult], size: int
) -> tuple[float, float]:
    """One batch: per-pair wall time and per-pair thread CPU time, in microseconds."""
    t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    await run_pairs(route, complete, plan, in_flight, size)
    wall, cpu = time.perf_counter_ns() - t0, time.thread_time_ns() - c0
    return wall / size / 1000.0, cpu / size / 1000.0


def warmup_pairs(settings: Settings, backends: int) -> int:
    """Pairs before timing: at least WARMUP_PER_BACKEND per backend, so that every size is
    timed in its steady state (least latency tries each of 10,000 new backends once first)."""
    return max(settings.warmup, WARMUP_PER_BACKEND * backends)


async def prepare(
    kind: LoadBalancingAlgorithmType,
    configs: Sequence[BackendConfig],
    plan: Sequence[Step],
    settings: Settings,
    case: Case,
) -> tuple[LoadBalancingModule, Iterator[Step], deque[RouteResult]]:
    """Build the module, fill the in-flight window and warm up."""
    t0 = time.perf_counter()
    lb = await make_module(kind, configs)
    case.setup_s = time.perf_counter() - t0
    source = cycle(plan)
    in_flight: deque[RouteResult] = deque()
    first, _, _ = next(source)
    t0 = time.perf_counter()
    in_flight.append(await lb.route_request(first))  # builds rings, heaps, tier lists
    case.first_pick_ms = (time.perf_counter() - t0) * 1000.0
    for request, _, _ in islice(source, IN_FLIGHT - 1):
        in_flight.append(await lb.route_request(request))
    await run_pairs(lb.route_request, lb.complete_request, source, in_flight, warmup_pairs(settings, len(configs)))
    return lb, source, in_flight


async def finish(lb: LoadBalancingModule, in_flight: deque[RouteResult], case: Case) -> None:
    while in_flight:
        await lb.complete_request(in_flight.popleft(), success=True, latency_ms=LATENCY_MEDIAN_MS)
    backends = list(lb.backends.values())
    case.backends_used = sum(1 for b in backends if b.total)
    case.open_circuits = sum(1 for b in backends if b.circuit_state is not CircuitState.CLOSED)
    case.extra["max_share"] = max(b.total for b in backends) / max(lb.total_requests, 1)
    await lb.shutdown()


async def measure(
    kind: LoadBalancingAlgorithmType,
    configs: dict[int, Sequence[BackendConfig]],
    plan: Sequence[Step],
    settings: Settings,
) -> dict[int, Case]:
    """Every size of one algorithm, with their batches interleaved.

    All sizes are built and warmed first; then each round times one batch of
    every size in turn, so a burst of load from elsewhere on the machine hits
    all sizes alike and the 10,000/10 ratio stays fair.
    """
    cases: dict[int, Case] = {}
    loops = {}
    for n, backends in configs.items():
        cases[n] = Case(kind.value, n, [])
        loops[n] = await prepare(kind, backends, plan, settings, cases[n])
    gc.collect()
    for _ in range(settings.batches):
        for n, (lb, source, in_flight) in loops.items():
            wall, cpu = await time_batch(lb.route_request, lb.complete_request, source, in_flight, settings.batch)
            cases[n].batch_us.append(wall)
            cases[n].batch_cpu_us.append(cpu)
    for n, (lb, _, in_flight) in loops.items():
        case = cases[n]
        case.median_us = statistics.median(case.batch_us)
        case.min_us = min(case.batch_us)
        case.median_cpu_us = statistics.median(case.batch_cpu_us)
        await finish(lb, in_flight, case)
    return cases


async def harness_overhead(plan: Sequence[Step], settings: Settings) -> float:
    """The same loop around two no-op coroutines: what every figure includes besides the library."""
    lb = await make_module(LoadBalancingAlgorithmType.ROUND_ROBIN, backend_configs(1))
    dummy = await lb.route_request(plan[0][0])

    async def route(request: Request) -> RouteResult:
        return dummy

    async def complete(result: RouteResult, *, success: bool, latency_ms: float | None = None) -> None:
        return None

    source = cycle(plan)
    in_flight: deque[RouteResult] = deque([dummy] * IN_FLIGHT)
    await run_pairs(route, complete, source, in_flight, settings.warmup)
    return statistics.median(
        [(await time_batch(route, complete, source, in_flight, settings.batch))[0] for _ in range(settings.batches)]
    )


# -- reporting --------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    loop = asyncio.get_running_loop()
    loop_name = f"{type(loop).__module__}.{type(loop).__qualname__}"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "kernel": f"{platform.system()} {platform.release()}",
        "event_loop": loop_name,
        "uvloop": "uvloop" in loop_name,
        "gc": gc.isenabled(),
        "load_average": os.getloadavg(),
    }


def command() -> str:
    return command_line()


def print_header(info: dict[str, Any], timing: str) -> None:
    print(f"machine:  {info['cpu']}, {info['cores']} cores, {info['platform']}")
    loop = "uvloop" if info["uvloop"] else "plain asyncio, no uvloop"
    print(f"python:   {info['python']}, event loop {info['event_loop']} ({loop}), gc {'on' if info['gc'] else 'off'}")
    print(f"load:     {' '.join(f'{x:.2f}' for x in info['load_average'])} (1/5/15 min load average at start)")
    print(f"command:  {command()}")
    print(
        f"workload: {IN_FLIGHT} in flight, {POOL} client IPs, {QUANTUM_SHARE:.0%} quantum workloads, "
        f"1/{QUANTUM_EVERY} backends quantum-capable, weights 1-3, {FAILURE_RATE:.0%} failures, "
        f"latency log-normal median {LATENCY_MEDIAN_MS:g} ms"
    )
    print(f"timing:   {timing}")
    print(flush=True)


def verdict(cases: dict[int, Case]) -> tuple[float | None, str]:
    lo, mid, hi = (cases.get(n) for n in (10, 1_000, 10_000))
    ratio = hi.median_us / lo.median_us if lo and hi else None
    if mid is None or ratio is None:
        return ratio, "n/a"
    ok = mid.median_us <= BAR_US_AT_1000 and ratio <= BAR_RATIO
    return ratio, "PASS" if ok else "FAIL"


def print_table(results: dict[str, dict[int, Case]], sizes: Sequence[int]) -> None:
    heads = [f"{n:,} backends" for n in sizes]
    print(f"{'algorithm':<18}" + "".join(f"{h:>18}" for h in heads) + f"{'10k/10':>9}  bar")
    print("-" * (18 + 18 * len(sizes) + 9 + 6))
    for algo, cases in results.items():
        cells = []
        for n in sizes:
            c = cases.get(n)
            cells.append(f"{c.median_us:8.2f} ({c.min_us:6.2f})" if c else "-")
        ratio, mark = verdict(cases)
        ratio_s = f"{ratio:.2f}" if ratio is not None else "-"
        print(f"{algo:<18}" + "".join(f"{cell:>18}" for cell in cells) + f"{ratio_s:>9}  {mark}")
    print(
        f"\nbar: median <= {BAR_US_AT_1000:g} us per pair at 1,000 backends and "
        f"10,000-backend cost <= {BAR_RATIO:g} x the 10-backend cost"
    )


def print_details(results: dict[str, dict[int, Case]]) -> None:
    print("\nmedian thread CPU time per pair, us (excludes time the process was preempted):")
    for algo, cases in results.items():
        print(f"  {algo:<18}" + "".join(f"{n:>8,}: {c.median_cpu_us:6.2f}" for n, c in cases.items()))
    print("\nsetup and sanity (per case): setup s / first pick ms / backends used / max share / open circuits")
    for algo, cases in results.items():
        parts = [
            f"{n:,}: {c.setup_s:.2f}s/{c.first_pick_ms:.1f}ms/{c.backends_used}/{c.extra['max_share']:.3f}"
            f"/{c.open_circuits}"
            for n, c in cases.items()
        ]
        print(f"  {algo:<18}" + "  ".join(parts))
    bad = [f"{c.algorithm}@{c.backends}" for cases in results.values() for c in cases.values() if c.open_circuits]
    if bad:
        print(f"WARNING: circuits opened during {', '.join(bad)}: the steady state is not the intended one")


# -- entry points ------------------------------------------------------------------


def parse_algorithm(name: str) -> LoadBalancingAlgorithmType:
    for kind in LoadBalancingAlgorithmType:
        if name.lower() in (kind.value, kind.name.lower()):
            return kind
    choices = ", ".join(k.value for k in LoadBalancingAlgorithmType)
    raise argparse.ArgumentTypeError(f"unknown algorithm {name!r}; choose from {choices}")


async def collect(
    settings: Settings, kinds: Sequence[LoadBalancingAlgorithmType] | None = None, sizes: Sequence[int] | None = None
) -> tuple[dict[str, Any], dict[str, dict[int, Case]]]:
    """Measure every algorithm at every size; the raw results (JSON-serialisable) and the cases."""
    info = machine()
    print_header(
        info,
        f"max({settings.warmup}, {WARMUP_PER_BACKEND} x backends) warm-up pairs, then "
        f"{settings.batches} rounds of one {settings.batch}-pair batch per size (interleaved);\n"
        "          median batch (fastest batch), microseconds per route+complete pair",
    )
    rng = random.Random(42)
    plan = build_plan(rng, build_requests(rng))
    overhead = await harness_overhead(plan, settings)
    print(f"harness overhead (same loop, two no-op coroutines): {overhead:.2f} us per pair, included below\n")
    configs: dict[int, Sequence[BackendConfig]] = {n: backend_configs(n) for n in sizes or SIZES}
    results: dict[str, dict[int, Case]] = {}
    started = time.perf_counter()
    for kind in kinds or list(LoadBalancingAlgorithmType):
        cases = results[kind.value] = await measure(kind, configs, plan, settings)
        figures = ", ".join(f"{n:,}: {c.median_us:.2f} us" for n, c in cases.items())
        print(f"  measured {kind.value:<18} {figures}", flush=True)
        gc.collect()
    info["load_average_end"] = os.getloadavg()
    print(
        f"\n(all cases in {time.perf_counter() - started:.0f} s; load average now "
        f"{' '.join(f'{x:.2f}' for x in info['load_average_end'])})\n"
    )
    raw = {
        "machine": info,
        "command": command(),
        "settings": asdict(settings),
        "workload": {
            "in_flight": IN_FLIGHT,
            "pool": POOL,
            "quantum_share": QUANTUM_SHARE,
            "quantum_every": QUANTUM_EVERY,
            "failure_rate": FAILURE_RATE,
            "latency_median_ms": LATENCY_MEDIAN_MS,
            "latency_sigma": LATENCY_SIGMA,
        },
        "bar": {"us_at_1000": BAR_US_AT_1000, "ratio": BAR_RATIO},
        "harness_overhead_us": overhead,
        "sizes": list(configs),
        "wall_s": time.perf_counter() - started,
        "results": [
            {**asdict(c), "ratio_10k_10": verdict(cases)[0], "verdict": verdict(cases)[1]}
            for cases in results.values()
            for c in cases.values()
        ],
    }
    return raw, results


async def run_table(args: argparse.Namespace, settings: Settings) -> None:
    raw, results = await collect(settings, args.algorithms, args.sizes)
    print_table(results, raw["sizes"])
    print_details(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(raw, fh, indent=2)
        print(f"\nraw results written to {args.json}")
    if args.plot:
        print(f"plot written: {plot(raw, args.plot)}")


def plot(raw: dict[str, Any], outdir: str) -> str:
    """Cost per pair against the number of backends, per algorithm (log x axis); returns the file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    by_algorithm: dict[str, list[dict[str, Any]]] = {}
    for case in raw["results"]:
        by_algorithm.setdefault(case["algorithm"], []).append(case)
    for algorithm, cases in by_algorithm.items():
        cases.sort(key=lambda c: c["backends"])
        xs = [c["backends"] for c in cases]
        line = ax.plot(xs, [c["median_us"] for c in cases], marker="o", label=algorithm)[0]
        ax.plot(xs, [c["min_us"] for c in cases], linestyle=":", color=line.get_color(), linewidth=1)
    ax.axhline(
        raw["harness_overhead_us"],
        color="grey",
        linewidth=0.8,
        linestyle="--",
        label="harness overhead (no-op route/complete)",
    )
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("backends in the tier (log)")
    ax.set_ylabel("microseconds per route + complete pair")
    ax.set_title("Routing cost: median batch (solid), fastest batch (dotted)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(True, linewidth=0.3)
    info = raw["machine"]
    caption = (
        f"{raw['command']}\n{info['cpu']}, {info['cores']} cores, {info['python']}, "
        f"{info['platform']}, {info['event_loop']}"
    )
    fig.text(0.01, 0.005, caption, fontsize=6.5, family="monospace", va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / "routing-cost.png", dpi=110)
    plt.close(fig)
    return "routing-cost.png"


async def run_profile(kind: LoadBalancingAlgorithmType, n: int, settings: Settings, top: int) -> None:
    info = machine()
    print_header(
        info,
        f"{warmup_pairs(settings, n)} warm-up pairs, then {settings.batches} x {settings.batch} pairs "
        "under cProfile, sorted by tottime",
    )
    rng = random.Random(42)
    plan = build_plan(rng, build_requests(rng))
    case = Case(kind.value, n, [])
    lb, source, in_flight = await prepare(kind, backend_configs(n), plan, settings, case)
    gc.collect()
    profiler = cProfile.Profile()
    t0 = time.perf_counter_ns()
    profiler.enable()
    for _ in range(settings.batches):
        await run_pairs(lb.route_request, lb.complete_request, source, in_flight, settings.batch)
    profiler.disable()
    pairs = settings.batches * settings.batch
    elapsed_us = (time.perf_counter_ns() - t0) / 1000.0
    await finish(lb, in_flight, case)
    print(
        f"profile of {kind.value} at {n:,} backends: {pairs:,} pairs, "
        f"{elapsed_us / pairs:.2f} us per pair under cProfile (inflated by the profiler)\n"
    )
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    print(out.getvalue())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer, smaller batches (a smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    parser.add_argument("--plot", metavar="DIR", help="also write routing-cost.png to DIR (needs matplotlib)")
    parser.add_argument(
        "--profile",
        nargs=2,
        metavar=("ALGO", "N"),
        help="cProfile the timed loop of ALGO at N backends; print the top functions",
    )
    parser.add_argument("--top", type=int, default=25, help="functions shown by --profile (default 25)")
    parser.add_argument(
        "--algorithm",
        dest="algorithms",
        action="append",
        type=parse_algorithm,
        help="measure only this algorithm (repeatable)",
    )
    parser.add_argument(
        "--size", dest="sizes", action="append", type=int, help="measure only this many backends (repeatable)"
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    if args.profile:
        try:
            kind = parse_algorithm(args.profile[0])
            n = int(args.profile[1])
        except (argparse.ArgumentTypeError, ValueError) as exc:
            parser.error(f"--profile ALGO N: {exc}")
        asyncio.run(run_profile(kind, n, settings, args.top))
    else:
        asyncio.run(run_table(args, settings))


if __name__ == "__main__":
    main()
