"""Enumerations shared by config, model and policies.

Every enum is a ``str`` enum whose value is the lower-case name, so values
compare equal to plain strings and can be written in config files.
"""

from __future__ import annotations

from enum import Enum


class _StrEnum(str, Enum):
    def __str__(self) -> str:
        return str(self.value)


class LoadBalancingAlgorithmType(_StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"
    WEIGHTED = "weighted"
    QUANTUM_AWARE = "quantum_aware"
    IP_HASH = "ip_hash"
    LEAST_LATENCY = "least_latency"


class WorkloadType(_StrEnum):
    CLASSICAL = "classical"
    QUANTUM_SIMULATION = "quantum_simulation"
    QUANTUM_OPTIMIZATION = "quantum_optimization"
    QUANTUM_ML = "quantum_ml"
    HYBRID = "hybrid"

    @property
    def is_quantum(self) -> bool:
        return self is not WorkloadType.CLASSICAL


class HealthState(_StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class CircuitState(_StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
