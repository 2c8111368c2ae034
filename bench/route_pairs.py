"""A fixed number of route+complete pairs, for counting instructions.

Timing on a shared VM is noisy; instruction counts are not. Run it twice
under callgrind with different pair counts and divide the difference:

    valgrind --tool=callgrind .venv/bin/python bench/route_pairs.py least_connections 1000 10000
    valgrind --tool=callgrind .venv/bin/python bench/route_pairs.py least_connections 1000 30000
    # instructions per pair = (second "Collected" - first "Collected") / 20000

Same workload shape as bench/routing.py: 16 in flight, 1,000 client IPs,
weights 1-3, a quarter of the backends quantum-capable, log-normal latencies.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import deque

from load_balancing_module import (
    BackendConfig,
    CircuitBreakerConfig,
    HealthCheckConfig,
    LoadBalancingAlgorithm,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    RouteResult,
)


async def run(kind: str, backends: int, pairs: int) -> None:
    config = LoadBalancingModuleConfig(
        algorithm=LoadBalancingAlgorithm.model_validate({"algorithm_type": kind}),
        health_check=HealthCheckConfig(enabled=False),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1000),
    )
    lb = LoadBalancingModule(config, rng=random.Random(1))
    for i in range(backends):
        await lb.add_backend(
            BackendConfig(host="127.0.0.1", port=10000 + i, weight=1 + i % 3, quantum_capable=i % 4 == 0)
        )
    requests = [Request(client_ip=f"10.{i // 256}.{i % 256}.1") for i in range(1000)]
    rng = random.Random(2)
    latencies = [rng.lognormvariate(3.0, 0.5) for _ in range(4096)]
    held: deque[RouteResult] = deque()
    for i in range(pairs):
        held.append(await lb.route_request(requests[i % 1000]))
        if len(held) >= 16:
            await lb.complete_request(held.popleft(), success=True, latency_ms=latencies[i & 4095])


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
