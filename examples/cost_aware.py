"""A plug-in algorithm: send each request to the backend where it costs least.

Each backend states its price in its metadata (``metadata: {cost: 0.8}``, say the
cloud's price per request; 1.0 when absent); a request goes to the candidate with the
lowest ``cost * (in_flight + 1) / effective_weight``, so a cheap backend takes more
but is not flooded. HEALTHY candidates come before DEGRADED ones, as for every algorithm.

Use it from Python::

    from load_balancing_module import register_algorithm
    from cost_aware import CostAware

    register_algorithm("my_company_cost_aware", CostAware)
    config = LoadBalancingModuleConfig(algorithm="my_company_cost_aware")

or from a package's ``pyproject.toml``, so that ``algorithm: my_company_cost_aware`` in a
proxy config finds it once the package is installed::

    [project.entry-points."omnixan_lb.algorithms"]
    my_company_cost_aware = "cost_aware:CostAware"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from load_balancing_module import AlgorithmError, Request
from load_balancing_module.algorithms import Algorithm
from load_balancing_module.backend import Backend


class CostAware(Algorithm):
    """The cheapest candidate, by a price in each backend's metadata."""

    pick_cost = "O(n)"  # a scan of the tier's members: fine for tens of backends per tier
    defaults: ClassVar[Mapping[str, Any]] = {"cost_key": "cost"}

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        if not isinstance(settings["cost_key"], str) or not settings["cost_key"]:
            raise AlgorithmError(f"{cls.kind}: config 'cost_key' must be a non-empty string")

    def rebuild(self, members: Sequence[Backend]) -> None:
        # Called when the tier's membership changes, never per request: read the prices once.
        key = self.settings["cost_key"]
        self._members = list(members)
        self._cost = {b.id: _price(b.config.metadata.get(key, 1.0)) for b in members}
        self._start = 0

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        members = self._members
        n = len(members)
        best: Backend | None = None
        best_key = (2, 0.0)
        # The scan starts one place further each time, so that equal costs take turns.
        start = self._start = (self._start + 1) % n if n else 0
        for i in range(n):
            backend = members[(start + i) % n]
            rank = backend.rank
            if rank is None or (klass is not None and backend.quantum != bool(klass)):
                continue  # not a candidate now, or not of the class asked for
            key = (rank, self._cost[backend.id] * (backend.in_flight + 1) / backend.effective_weight)
            if key < best_key:
                best, best_key = backend, key
        return best


def _price(value: object) -> float:
    """A backend's price: a positive number, else 1.0 (metadata is the operator's, but not checked)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return 1.0
