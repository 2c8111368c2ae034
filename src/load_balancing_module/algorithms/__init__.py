"""Load-balancing algorithms, one per module, behind :class:`Algorithm`."""

from __future__ import annotations

import random
from typing import Any

from ..clock import Clock
from ..config import LoadBalancingAlgorithm
from ..enums import LoadBalancingAlgorithmType
from ..exceptions import AlgorithmError
from .base import Algorithm
from .ip_hash import ConsistentHash
from .least_connections import LeastConnections
from .least_latency import LeastLatency
from .quantum_aware import QuantumAware
from .round_robin import RoundRobin
from .weighted import SmoothWeighted

ALGORITHMS: dict[LoadBalancingAlgorithmType, type[Algorithm]] = {
    cls.kind: cls for cls in (RoundRobin, LeastConnections, SmoothWeighted, QuantumAware, ConsistentHash, LeastLatency)
}


class AlgorithmFactory:
    """A validated algorithm choice that makes one instance per tier."""

    def __init__(self, spec: Any, rng: random.Random, clock: Clock) -> None:
        if isinstance(spec, LoadBalancingAlgorithm):
            algorithm = spec
        else:
            try:
                algorithm = LoadBalancingAlgorithm.model_validate(
                    {"algorithm_type": spec} if isinstance(spec, str) else spec
                )
            except ValueError as exc:
                raise AlgorithmError(f"invalid algorithm: {exc}") from None
        cls = ALGORITHMS.get(algorithm.algorithm_type)
        if cls is None:
            raise AlgorithmError(f"unsupported algorithm type {algorithm.algorithm_type!r}")
        self.spec = algorithm
        self.cls = cls
        self.settings = cls.parse(algorithm.config)
        self._rng = rng
        self._clock = clock

    @property
    def kind(self) -> LoadBalancingAlgorithmType:
        return self.cls.kind

    def create(self) -> Algorithm:
        return self.cls(self.settings, self._rng, self._clock)


__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmFactory"]
