"""Load-balancing algorithms, one per module, behind :class:`Algorithm`; and the plug-in registry.

An algorithm is found by name: a built-in one, one registered with :func:`register_algorithm`,
or one that an installed distribution declares in the ``omnixan_lb.algorithms`` entry-point
group (loaded the first time its name is asked for, then registered).
"""

from __future__ import annotations

import random
from importlib.metadata import entry_points
from typing import Any

from ..clock import Clock
from ..config import (
    ALGORITHM_ENTRY_POINTS,
    ALGORITHM_NAME,
    LoadBalancingAlgorithm,
    declare_algorithm,
    plugin_algorithms,
)
from ..enums import LoadBalancingAlgorithmType
from ..exceptions import AlgorithmError
from .base import Algorithm
from .ip_hash import ConsistentHash
from .least_connections import LeastConnections
from .least_latency import LeastLatency
from .quantum_aware import QuantumAware
from .round_robin import RoundRobin
from .weighted import SmoothWeighted

ENTRY_POINT_GROUP = ALGORITHM_ENTRY_POINTS

#: The built-in algorithms by name.
ALGORITHMS: dict[str, type[Algorithm]] = {
    str(cls.kind): cls
    for cls in (RoundRobin, LeastConnections, SmoothWeighted, QuantumAware, ConsistentHash, LeastLatency)
}
_registered: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str, cls: type[Algorithm]) -> None:
    """Make ``cls`` the algorithm called ``name`` (``algorithm: name`` in a config).

    ``cls`` subclasses :class:`Algorithm` and states ``pick_cost``; a name is lower-case letters,
    digits and ``_``, and cannot be a built-in's. Registering the same class again does nothing;
    another class under a taken name is refused (an :class:`AlgorithmError`).
    """
    if not isinstance(name, str) or not ALGORITHM_NAME.fullmatch(name):
        raise AlgorithmError(f"algorithm name {name!r}: lower-case letters, digits and _, starting with a letter")
    if name in ALGORITHMS:
        raise AlgorithmError(f"algorithm name {name!r} is a built-in algorithm's")
    if not isinstance(cls, type) or not issubclass(cls, Algorithm):
        raise AlgorithmError(f"algorithm {name!r}: {cls!r} is not a subclass of Algorithm")
    if not isinstance(getattr(cls, "pick_cost", None), str) or not cls.pick_cost:
        raise AlgorithmError(f"algorithm {name!r}: {cls.__name__} must state pick_cost, e.g. 'O(n)'")
    current = _registered.get(name)
    if current is not None and current is not cls:
        raise AlgorithmError(f"algorithm name {name!r} is taken by {_qualified(current)}")
    kind = vars(cls).get("kind")  # only a kind the class declares itself; a subclass may rename
    if kind is not None and kind != name:
        raise AlgorithmError(f"algorithm {name!r}: {cls.__name__}.kind is {kind!r}")
    cls.kind = name
    _registered[name] = cls
    declare_algorithm(name)


def _qualified(cls: type) -> str:
    # getattr: compiled by mypyc, a class object's __module__ is not an attribute it knows
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')}"


def algorithm_class(name: str) -> type[Algorithm]:
    """The algorithm called ``name``: built-in, registered, or from an entry point."""
    key = str(name)
    cls = ALGORITHMS.get(key) or _registered.get(key)
    if cls is not None:
        return cls
    for point in entry_points(group=ENTRY_POINT_GROUP, name=key):
        try:
            loaded = point.load()
        except Exception as exc:
            raise AlgorithmError(f"algorithm {key!r}: entry point {point.value!r} failed to load: {exc!r}") from None
        register_algorithm(key, loaded)
        return _registered[key]
    known = ", ".join(algorithm_names())
    raise AlgorithmError(f"unknown algorithm {key!r}; known: {known}")


def algorithm_names() -> list[str]:
    """Every algorithm name a config may use: the built-in ones, then the plug-ins (registered, or
    declared by entry points), in the order the config's own error lists them."""
    return list(ALGORITHMS) + sorted(plugin_algorithms() - set(ALGORITHMS))


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
        cls = algorithm_class(algorithm.algorithm_type)
        self.spec = algorithm
        self.cls = cls
        self.settings = cls.parse(algorithm.config)
        self._rng = rng
        self._clock = clock

    @property
    def kind(self) -> LoadBalancingAlgorithmType | str:
        return self.cls.kind

    def create(self) -> Algorithm:
        return self.cls(self.settings, self._rng, self._clock)


__all__ = [
    "ALGORITHMS",
    "ENTRY_POINT_GROUP",
    "Algorithm",
    "AlgorithmFactory",
    "algorithm_class",
    "algorithm_names",
    "register_algorithm",
]
