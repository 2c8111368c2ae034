"""Algorithm quality under uneven backends: a discrete-event simulation.

A benchmark, not a test: it prints figures and asserts nothing.

Method
------
The real :class:`LoadBalancingModule` (real algorithms, circuit breakers and
health state) routes every request, on a :class:`FakeClock` set to simulated
time before each call, so EWMA decay, breaker timeouts and every other
time-driven rule see simulated time. Calls are the synchronous ``route_now``
and ``complete_now``; ``complete_now`` gets the request's response time
(queueing + service), as a proxy would report it, so LEAST_LATENCY and
QUANTUM_AWARE learn from it. Health checks are off (nothing to probe), so
the breakers are the only failure detection; their settings are the defaults
(5 consecutive failures open a circuit for 60 s).

Each backend is a first-come-first-served queue with ``servers`` parallel
servers. Service times are exponential; a classical request takes 50 ms on
average on a normal backend. Requests arrive as a Poisson process whose rate
is the offered load (70 % or 90 %) times the fleet's capacity in its slowest
phase. A client waits at most ``TIMEOUT_S``; a request that has not finished
by then is reported to the balancer as a failure at that moment (the backend
still does the work: it is not told) and counted as timed out. A request the
balancer cannot place (``route_now`` returns ``None``: every circuit open) is
counted as failed. Latency percentiles are over all placed requests, timed-out
ones counted at the timeout.

Arrivals, client addresses, workload types and each request's service-time
draw come from one seeded stream shared by every policy (common random
numbers), so the policies see exactly the same traffic.

The reference is an oracle, not an algorithm of the module: join the
shortest queue measured in expected delay, with perfect knowledge of every
backend's backlog (when each of its servers frees up) and of its current
speed for the request's workload type, but not of the request's own size.

Usage::

    .venv/bin/python -m bench.simulate                # every scenario, 60 simulated s
    .venv/bin/python -m bench.simulate --quick        # 15 simulated s
    .venv/bin/python -m bench.simulate --scenario one_slow --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load_balancing_module import (
    BackendConfig,
    FakeClock,
    HealthCheckConfig,
    LoadBalancingAlgorithm,
    LoadBalancingAlgorithmType,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    WorkloadType,
)

try:
    from bench.common import command_line, machine_info, write_json
except ModuleNotFoundError:  # run as a script: python bench/simulate.py
    from common import command_line, machine_info, write_json  # type: ignore[no-redef,import-not-found]

CLASSICAL_MS = 50.0  # mean service time of a classical request on a normal backend
QUANTUM_MS = 150.0  # mean service time of a quantum request on a quantum-capable backend
EMULATION_FACTOR = 10.0  # a quantum request on a classical backend is emulated, this many times slower
TIMEOUT_S = 2.0  # a client gives up after this long
CLIENTS = 2_000  # distinct client IPs (IP_HASH spreads them)
LOADS = (0.7, 0.9)
ORACLE = "oracle"
POLICIES = (*(k.value for k in LoadBalancingAlgorithmType), ORACLE)
QUANTILES = (0.5, 0.99, 0.999)
LINESTYLES = {"weighted": "--", "ip_hash": "-.", "quantum_aware": ":"}  # weighted = round_robin at equal weights
AIM = 1.5  # p99 within this many times the oracle's, for the latency-aware algorithms


@dataclass(frozen=True)
class BackendSpec:
    servers: int = 4
    weight: float = 1.0
    quantum: bool = False
    slowness: float = 1.0  # service-time multiplier for the whole run


@dataclass(frozen=True)
class Slowdown:
    """Backend ``backend`` is ``factor`` times slower for services starting in [start, end) (run fractions)."""

    backend: int
    factor: float
    start: float
    end: float


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    backends: tuple[BackendSpec, ...]
    slowdown: Slowdown | None = None
    quantum_share: float = 0.0  # share of requests with a quantum workload

    def mean_ms(self, b: int, quantum: bool, start_fraction: float) -> float:
        """Mean service time on backend ``b`` for a request whose service starts at that run fraction."""
        spec = self.backends[b]
        mean = QUANTUM_MS * (1.0 if spec.quantum else EMULATION_FACTOR) if quantum else CLASSICAL_MS
        mean *= spec.slowness
        slow = self.slowdown
        if slow is not None and slow.backend == b and slow.start <= start_fraction < slow.end:
            mean *= slow.factor
        return mean

    def capacity(self) -> float:
        """Requests per second the fleet can serve in its slowest phase, with ideal placement."""
        if self.quantum_share:
            # Every server serves; quantum work goes to quantum-capable servers (the share is
            # chosen so that this fits: see SCENARIOS).
            work_s = (self.quantum_share * QUANTUM_MS + (1.0 - self.quantum_share) * CLASSICAL_MS) / 1000.0
            return sum(s.servers for s in self.backends) / work_s
        total = 0.0
        for b, spec in enumerate(self.backends):
            factor = self.slowdown.factor if self.slowdown and self.slowdown.backend == b else 1.0
            total += spec.servers / (CLASSICAL_MS * spec.slowness * factor / 1000.0)
        return total


EQUAL = tuple(BackendSpec() for _ in range(8))
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("equal", "8 equal backends", EQUAL),
    Scenario("one_slow", "8 backends, one 10x slower", (BackendSpec(slowness=10.0), *EQUAL[1:])),
    Scenario(
        "slows_halfway",
        "8 backends, one 10x slower from 50 % to 80 % of the run",
        EQUAL,
        slowdown=Slowdown(backend=0, factor=10.0, start=0.5, end=0.8),
    ),
    Scenario(
        "weighted",
        "8 backends, weights 1..8 and as many servers",
        tuple(BackendSpec(servers=i, weight=float(i)) for i in range(1, 9)),
    ),
    # 10 % quantum requests at 3x the work: a quarter of the work, as 2 of 8 backends are quantum-capable.
    Scenario(
        "quantum_mix",
        "2 quantum-capable + 6 classical backends, 10 % quantum requests",
        tuple(BackendSpec(quantum=i < 2) for i in range(8)),
        quantum_share=0.1,
    ),
)
SLOW_SCENARIOS = ("one_slow", "slows_halfway")


@dataclass
class Settings:
    duration_s: float = 60.0
    seed: int = 42


QUICK = Settings(duration_s=15.0)


@dataclass
class Traffic:
    """One seeded stream of requests, shared by every policy."""

    arrivals: list[float]  # seconds
    quantum: list[bool]
    clients: list[int]
    units: list[float]  # service time in units of the mean (exponential, mean 1)


def make_traffic(rate: float, duration_s: float, quantum_share: float, seed: int) -> Traffic:
    rng = random.Random(seed)
    t = 0.0
    traffic = Traffic([], [], [], [])
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return traffic
        traffic.arrivals.append(t)
        traffic.quantum.append(rng.random() < quantum_share)
        traffic.clients.append(rng.randrange(CLIENTS))
        traffic.units.append(rng.expovariate(1.0))


@dataclass
class Outcome:
    policy: str
    scenario: str
    load: float
    requests: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    timed_out: int = 0
    failed: int = 0  # could not be placed
    per_backend: list[int] = field(default_factory=list)
    circuits_opened: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        placed = max(sum(self.per_backend), 1)
        return {
            "policy": self.policy,
            "scenario": self.scenario,
            "load": self.load,
            "requests": self.requests,
            **{f"p{_label(q)}_ms": quantile(ordered, q) for q in QUANTILES},
            "mean_ms": sum(ordered) / len(ordered) if ordered else math.nan,
            "timed_out": self.timed_out,
            "failed": self.failed,
            "share": [n / placed for n in self.per_backend],
            "circuits_opened": self.circuits_opened,
            "wall_s": self.wall_s,
            "cdf": cdf_points(ordered),
        }


def _label(q: float) -> str:
    return f"{q * 100:g}".replace(".", "")  # 0.5 -> 50, 0.99 -> 99, 0.999 -> 999


def quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of an ascending sequence."""
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def cdf_points(ordered: Sequence[float], points: int = 160) -> list[tuple[float, float]]:
    """(latency_ms, tail probability) pairs, log-spaced in the tail, for plotting."""
    n = len(ordered)
    if not n:
        return []
    out = []
    for i in range(points):
        tail = 10 ** (-4.0 * i / (points - 1))  # 1 .. 1e-4
        rank = min(n, max(1, math.ceil((1.0 - tail) * n)))
        out.append((round(ordered[rank - 1], 2), float(f"{tail:.4g}")))
    return out


class Fleet:
    """The backends' queues: when each server of each backend frees up (FCFS)."""

    def __init__(self, scenario: Scenario, duration_s: float) -> None:
        self.scenario = scenario
        self.duration_s = duration_s
        self.free_at = [[0.0] * spec.servers for spec in scenario.backends]

    def start_time(self, b: int, now: float) -> float:
        return max(now, min(self.free_at[b]))

    def expected_finish(self, b: int, now: float, quantum: bool) -> float:
        start = self.start_time(b, now)
        return start + self.scenario.mean_ms(b, quantum, start / self.duration_s) / 1000.0

    def serve(self, b: int, now: float, quantum: bool, unit: float) -> float:
        """Queue a request on backend ``b``; return when it finishes."""
        servers = self.free_at[b]
        i = min(range(len(servers)), key=servers.__getitem__)
        start = max(now, servers[i])
        finish = start + unit * self.scenario.mean_ms(b, quantum, start / self.duration_s) / 1000.0
        servers[i] = finish
        return finish


def backend_configs(scenario: Scenario) -> list[BackendConfig]:
    return [
        BackendConfig(host="127.0.0.1", port=20_000 + b, weight=spec.weight, quantum_capable=spec.quantum)
        for b, spec in enumerate(scenario.backends)
    ]


def build_module(kind: str, scenario: Scenario, clock: FakeClock, seed: int) -> tuple[LoadBalancingModule, list[str]]:
    config = LoadBalancingModuleConfig(
        algorithm=LoadBalancingAlgorithm(algorithm_type=LoadBalancingAlgorithmType(kind)),
        health_check=HealthCheckConfig(enabled=False),
        request_timeout=TIMEOUT_S,
    )
    lb = LoadBalancingModule(config, clock=clock, rng=random.Random(seed))

    async def add() -> list[str]:
        return [await lb.add_backend(c) for c in backend_configs(scenario)]

    return lb, asyncio.run(add())


def build_requests(quantum_share: float) -> tuple[list[Request], list[Request]]:
    """One classical and one quantum request object per client (built once: pydantic is not free)."""
    ips = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(1, CLIENTS + 1)]
    classical = [Request(client_ip=ip) for ip in ips]
    quantum = [Request(client_ip=ip, workload_type=WorkloadType.QUANTUM_SIMULATION) for ip in ips]
    return classical, quantum


def run_module(kind: str, scenario: Scenario, load: float, traffic: Traffic, settings: Settings) -> Outcome:
    """Drive the real module through the traffic."""
    clock = FakeClock(start=0.0, wall_start=1_700_000_000.0)
    lb, ids = build_module(kind, scenario, clock, settings.seed)
    index = {backend_id: b for b, backend_id in enumerate(ids)}
    outcome = Outcome(kind, scenario.name, load, per_backend=[0] * len(ids))
    for backend in lb.backends.values():  # count circuits opening, then let the module react as usual
        inner = backend.breaker.listener

        def listener(breaker: Any, old: Any, new: Any, inner: Any = inner) -> None:
            if new.value == "open":
                outcome.circuits_opened += 1
            if inner is not None:
                inner(breaker, old, new)

        backend.breaker.listener = listener
    fleet = Fleet(scenario, settings.duration_s)
    classical, quantum_requests = build_requests(scenario.quantum_share)
    pending: list[tuple[float, int, Any, float, bool]] = []  # (when, seq, route, latency_ms, ok)
    latencies = outcome.latencies_ms
    route_now, complete_now, set_clock = lb.route_now, lb.complete_now, clock.set
    timeout = TIMEOUT_S
    started = time.perf_counter()
    for i, now in enumerate(traffic.arrivals):
        while pending and pending[0][0] <= now:
            when, _, route, latency_ms, ok = heapq.heappop(pending)
            set_clock(when)
            complete_now(route, success=ok, latency_ms=latency_ms)
        set_clock(now)
        quantum = traffic.quantum[i]
        request = (quantum_requests if quantum else classical)[traffic.clients[i]]
        route = route_now(request)
        if route is None:
            outcome.failed += 1
            continue
        b = index[route.backend_id]
        outcome.per_backend[b] += 1
        finish = fleet.serve(b, now, quantum, traffic.units[i])
        latency = finish - now
        if latency > timeout:
            outcome.timed_out += 1
            latencies.append(timeout * 1000.0)
            heapq.heappush(pending, (now + timeout, i, route, timeout * 1000.0, False))
        else:
            latencies.append(latency * 1000.0)
            heapq.heappush(pending, (finish, i, route, latency * 1000.0, True))
    outcome.requests = len(traffic.arrivals)
    outcome.wall_s = time.perf_counter() - started
    return outcome


def run_oracle(scenario: Scenario, load: float, traffic: Traffic, settings: Settings) -> Outcome:
    """Shortest expected delay with perfect knowledge of every backlog and speed."""
    rng = random.Random(settings.seed)
    fleet = Fleet(scenario, settings.duration_s)
    n = len(scenario.backends)
    outcome = Outcome(ORACLE, scenario.name, load, per_backend=[0] * n)
    started = time.perf_counter()
    for i, now in enumerate(traffic.arrivals):
        quantum = traffic.quantum[i]
        best, best_finish = 0, math.inf
        for b in rng.sample(range(n), n):  # random order: ties fall anywhere
            finish = fleet.expected_finish(b, now, quantum)
            if finish < best_finish:
                best, best_finish = b, finish
        outcome.per_backend[best] += 1
        latency = fleet.serve(best, now, quantum, traffic.units[i]) - now
        if latency > TIMEOUT_S:
            outcome.timed_out += 1
            latency = TIMEOUT_S
        outcome.latencies_ms.append(latency * 1000.0)
    outcome.requests = len(traffic.arrivals)
    outcome.wall_s = time.perf_counter() - started
    return outcome


def run(
    settings: Settings,
    scenarios: Sequence[str] | None = None,
    policies: Sequence[str] | None = None,
    loads: Sequence[float] = LOADS,
    progress: bool = True,
) -> dict[str, Any]:
    """Every scenario x load x policy; returns a JSON-serialisable result."""
    chosen = [s for s in SCENARIOS if not scenarios or s.name in scenarios]
    # Circuits open by the hundred here; their WARNING events would drown the tables.
    logging.getLogger("load_balancing_module").setLevel(logging.ERROR)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    for scenario in chosen:
        for load in loads:
            rate = load * scenario.capacity()
            traffic = make_traffic(rate, settings.duration_s, scenario.quantum_share, settings.seed)
            for policy in policies or POLICIES:
                if policy == ORACLE:
                    outcome = run_oracle(scenario, load, traffic, settings)
                else:
                    outcome = run_module(policy, scenario, load, traffic, settings)
                summary = outcome.summary()
                results.append(summary)
                if progress:
                    print(
                        f"  {scenario.name:<14} {load:.0%} {policy:<18} p99 {summary['p99_ms']:8.1f} ms  "
                        f"timed out {outcome.timed_out:>5}  failed {outcome.failed:>5}  "
                        f"({outcome.wall_s:.1f} s)",
                        flush=True,
                    )
    return {
        "machine": machine_info(),
        "command": command_line(),
        "settings": {
            "duration_s": settings.duration_s,
            "seed": settings.seed,
            "timeout_s": TIMEOUT_S,
            "classical_ms": CLASSICAL_MS,
            "quantum_ms": QUANTUM_MS,
            "emulation_factor": EMULATION_FACTOR,
            "clients": CLIENTS,
        },
        "scenarios": [
            {"name": s.name, "title": s.title, "capacity_rps": s.capacity(), "backends": len(s.backends)}
            for s in chosen
        ],
        "results": results,
        "wall_s": time.perf_counter() - started,
    }


# -- reporting -------------------------------------------------------------------------


def find(results: dict[str, Any], scenario: str, load: float, policy: str) -> dict[str, Any] | None:
    for r in results["results"]:
        if r["scenario"] == scenario and r["load"] == load and r["policy"] == policy:
            return r  # type: ignore[no-any-return]
    return None


def ratio_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """p99 (and p99.9) of each policy relative to the oracle's, per slow-backend case."""
    rows = []
    names = {s["name"] for s in results["scenarios"]}
    for scenario in SLOW_SCENARIOS:
        if scenario not in names:
            continue
        for load in sorted({r["load"] for r in results["results"]}):
            oracle = find(results, scenario, load, ORACLE)
            if oracle is None:
                continue
            for policy in POLICIES[:-1]:
                r = find(results, scenario, load, policy)
                if r is not None:
                    rows.append(
                        {
                            "scenario": scenario,
                            "load": load,
                            "policy": policy,
                            "p99_ratio": r["p99_ms"] / oracle["p99_ms"],
                            "p999_ratio": r["p999_ms"] / oracle["p999_ms"],
                        }
                    )
    return rows


def table(results: dict[str, Any], scenario: str) -> str:
    """A plain-text table of one scenario (both loads)."""
    lines = [
        f"{'load':>4} {'policy':<18} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'timed out':>10} "
        f"{'failed':>7} {'opened':>6}  share per backend (%)"
    ]
    for r in results["results"]:
        if r["scenario"] != scenario:
            continue
        share = " ".join(f"{s * 100:4.1f}" for s in r["share"])
        lines.append(
            f"{r['load']:>4.0%} {r['policy']:<18} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
            f"{r['p999_ms']:>9.1f} {r['timed_out']:>10} {r['failed']:>7} {r['circuits_opened']:>6}  "
            f"{share}"
        )
    return "\n".join(lines)


def print_report(results: dict[str, Any]) -> None:
    info = results["machine"]
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, {info['python']}, {info['kernel']}")
    print(f"command: {results['command']}")
    settings = results["settings"]
    print(
        f"{settings['duration_s']:g} simulated s per case, seed {settings['seed']}, "
        f"client timeout {settings['timeout_s']:g} s; all cases in {results['wall_s']:.0f} s\n"
    )
    for s in results["scenarios"]:
        print(f"{s['title']} (capacity {s['capacity_rps']:.0f} req/s)")
        print(table(results, s["name"]))
        print()
    rows = ratio_rows(results)
    if rows:
        print(
            f"p99 / oracle p99 in the slow-backend scenarios (aim for least_latency and least_connections: <= {AIM:g}):"
        )
        for row in rows:
            print(
                f"  {row['scenario']:<14} {row['load']:.0%} {row['policy']:<18} {row['p99_ratio']:6.2f}  "
                f"(p99.9: {row['p999_ratio']:.2f})"
            )


def plot(results: dict[str, Any], outdir: str | Path) -> list[str]:
    """Latency CDFs per scenario and the p99-ratio figure; returns the file names written."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    caption = f"{results['command']}\n{_machine_caption(results['machine'])}"
    written = []
    loads = sorted({r["load"] for r in results["results"]})
    for s in results["scenarios"]:
        fig, axes = plt.subplots(1, len(loads), figsize=(6 * len(loads), 4.6), squeeze=False)
        for ax, load in zip(axes[0], loads, strict=True):
            for policy in POLICIES:
                r = find(results, s["name"], load, policy)
                if r is None or not r["cdf"]:
                    continue
                xs = [p[0] for p in r["cdf"]]
                ys = [p[1] for p in r["cdf"]]
                style: dict[str, Any] = {"linewidth": 1.3, "linestyle": LINESTYLES.get(policy, "-")}
                if policy == ORACLE:
                    style = {"color": "black", "linewidth": 2.2}
                ax.step(xs, ys, where="post", label=policy, **style)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(1e-4, 1.05)
            ax.set_xlim(left=1.0)
            ax.set_xlabel("latency (ms)")
            ax.set_ylabel("share of requests slower (1 - CDF)")
            ax.set_title(f"{load:.0%} offered load")
            for q in (0.01, 0.001):
                ax.axhline(q, color="grey", linewidth=0.5, linestyle=":")
            ax.grid(True, which="major", linewidth=0.3)
        axes[0][0].legend(fontsize=8, loc="lower left")
        fig.suptitle(f"Latency distribution: {s['title']}", fontsize=11)
        fig.text(0.01, 0.005, caption, fontsize=6.5, family="monospace", va="bottom")
        fig.tight_layout(rect=(0, 0.07, 1, 0.95))
        name = f"sim-cdf-{s['name']}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    rows = ratio_rows(results)
    if rows:
        shown = ("least_latency", "least_connections", "round_robin")
        cases = sorted({(r["scenario"], r["load"]) for r in rows}, key=lambda c: (SLOW_SCENARIOS.index(c[0]), c[1]))
        fig, ax = plt.subplots(figsize=(8.5, 4.6))
        width = 0.8 / len(shown)
        for k, policy in enumerate(shown):
            values = []
            for scenario, load in cases:
                match = [
                    r["p99_ratio"] for r in rows if (r["scenario"], r["load"], r["policy"]) == (scenario, load, policy)
                ]
                values.append(match[0] if match else math.nan)
            xs = [i + (k - (len(shown) - 1) / 2) * width for i in range(len(cases))]
            bars = ax.bar(xs, values, width, label=policy)
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
        ax.axhline(AIM, color="red", linestyle="--", linewidth=1, label=f"aim ({AIM:g}x)")
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_yscale("log")
        ax.set_yticks([1, 1.5, 2, 3, 5, 10])
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f"{scenario}\n{load:.0%} load" for scenario, load in cases])
        ax.set_ylabel("p99 latency / oracle p99 (log)")
        ax.set_title("Slow-backend scenarios: p99 relative to the oracle")
        ax.legend(fontsize=8)
        fig.text(0.01, 0.005, caption, fontsize=6.5, family="monospace", va="bottom")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        fig.savefig(out / "sim-p99-ratio.png", dpi=110)
        plt.close(fig)
        written.append("sim-p99-ratio.png")
    return written


def _machine_caption(info: dict[str, Any]) -> str:
    return f"{info['cpu']}, {info['cores']} cores, {info['python']}, {info['kernel']}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.duration_s:g} simulated s per case")
    parser.add_argument("--duration", type=float, help="simulated seconds per case (default 60)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS])
    parser.add_argument("--policy", action="append", choices=POLICIES)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="DIR", help="also write the PNG plots to DIR (needs matplotlib)")
    args = parser.parse_args(argv)
    settings = Settings(duration_s=QUICK.duration_s if args.quick else Settings.duration_s, seed=args.seed)
    if args.duration:
        settings.duration_s = args.duration
    results = run(settings, args.scenario, args.policy)
    print_report(results)
    write_json(results, args.json)
    if args.plot:
        print("plots:", ", ".join(plot(results, args.plot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
