"""Cost of a route+complete pair just after start-up and in the steady state, at one size.

``bench/routing.py`` times every size in its steady state. This script shows
the phase before it, for one algorithm: least latency at 10,000 backends first
tries every backend it has no sample of (10,000 picks), then settles, and the
pairs in between touch a different backend each time. It builds ``--modules``
modules of ``--backends`` backends (so that their state, like a large fleet's,
does not fit in the cache), runs ``--explore`` pairs on each, then times
``--pairs`` pairs on each in turn (the transition), then ``--pairs`` more (the
steady state). Same workload as ``bench/routing.py``.

    .venv/bin/python bench/route_phases.py --algorithm least_latency --backends 10000
    PYTHONPATH=build/compiled/src .venv/bin/python bench/route_phases.py --backends 10
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import deque
from itertools import cycle, islice

try:
    import bench.routing as routing
except ModuleNotFoundError:  # run as a script: python bench/route_phases.py
    import routing  # type: ignore[no-redef]

from load_balancing_module import LoadBalancingAlgorithmType


async def run(kind: LoadBalancingAlgorithmType, backends: int, modules: int, explore: int, pairs: int) -> None:
    rng = random.Random(3)
    plan = routing.build_plan(rng, routing.build_requests(rng))
    loops = []
    for _ in range(modules):
        lb = await routing.make_module(kind, routing.backend_configs(backends))
        source = cycle(plan)
        in_flight: deque[routing.RouteResult] = deque()
        for request, _, _ in islice(source, routing.IN_FLIGHT):
            in_flight.append(await lb.route_request(request))
        await routing.run_pairs(lb.route_request, lb.complete_request, source, in_flight, explore)
        loops.append((lb, source, in_flight))
    for phase in ("transition", "steady state"):
        t0 = time.perf_counter()
        for lb, source, in_flight in loops:
            await routing.run_pairs(lb.route_request, lb.complete_request, source, in_flight, pairs)
        us = (time.perf_counter() - t0) / (pairs * modules) * 1e6
        print(
            f"{kind.value} at {backends:,} backends, {phase:<12}: {us:.2f} us a pair "
            f"({modules} modules x {pairs:,} pairs after {explore:,} + {routing.IN_FLIGHT})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--algorithm", type=routing.parse_algorithm, default=LoadBalancingAlgorithmType.LEAST_LATENCY)
    parser.add_argument("--backends", type=int, default=10_000)
    parser.add_argument("--modules", type=int, default=6)
    parser.add_argument("--explore", type=int, default=10_000, help="pairs on each module before timing")
    parser.add_argument("--pairs", type=int, default=25_000, help="pairs on each module per phase")
    args = parser.parse_args()
    asyncio.run(run(args.algorithm, args.backends, args.modules, args.explore, args.pairs))


if __name__ == "__main__":
    main()
