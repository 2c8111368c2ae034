"""The interface every algorithm implements, built-in or plug-in.

One instance serves one priority tier. The module calls:

- ``rebuild(members)`` when the tier's membership changed or it took this algorithm
  (never per request);
- ``update(backend)`` when one member's rank, load, latency or effective weight changed;
- ``pick(request, klass)`` to choose a member, only when the tier has a free
  member (of class ``klass`` when given: 1 quantum-capable, 0 classical).

The contract of ``pick`` (tests/test_algorithms.py ``TestContract`` checks it for every
algorithm, plug-ins included):

- It returns a member whose ``rank`` is not ``None`` (a candidate now: healthy or degraded,
  circuit closed or half-open with room, a free slot, not excluded by a retry), of class
  ``klass`` when one is given (``backend.quantum``), or ``None`` if it finds none.
- A HEALTHY member (rank 0) is always preferred to a DEGRADED one (rank 1).
- It may read the request (``client_ip``, ``workload_type``, ``session_id``, ``metadata``), the
  members' ``rank``, ``quantum``, ``in_flight``, ``limit``, ``effective_weight`` (the weight after
  slow start), ``config`` (host, port, weight, priority, metadata), ``score_ms`` (the EWMA of
  latency, when ``observes_latency``), its own ``settings``, ``rng`` and ``clock``.
- It must not await, block, do I/O or allocate in proportion to the fleet on every call; it must
  not change a backend (the router takes the slot and keeps the counts), and it must not keep a
  member that the last ``rebuild`` did not hand it.
- It is synchronous: no locks are needed on the event loop. It runs on every request, so its
  cost is stated in ``pick_cost`` (``"O(1)"``, ``"O(log n)"``, ``"O(n)"``...), shown in the docs
  and required of a plug-in.

A plug-in subclasses :class:`Algorithm` in plain Python (the compiled build allows it) and is
registered with :func:`~load_balancing_module.algorithms.register_algorithm` or an
``omnixan_lb.algorithms`` entry point; ``defaults`` names the config keys it accepts and
``check`` validates their values.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..backend import HEALTHY_RANK, Backend
from ..build import mypyc_attr
from ..clock import Clock
from ..config import Request
from ..enums import LoadBalancingAlgorithmType
from ..exceptions import AlgorithmError


class TierCounts:
    """What an algorithm reads of the tier that owns it: counts of members with a free slot.

    ``free[c]`` and ``healthy_free[c]`` count members with a free slot, where
    ``c`` is 1 for quantum-capable and 0 for classical backends; ``in_flight``
    sums the members' requests in flight. The router's ``Tier`` keeps them.
    """

    __slots__ = ("free", "healthy_free", "in_flight")

    def __init__(self) -> None:
        self.free = [0, 0]
        self.healthy_free = [0, 0]
        self.in_flight = 0

    @property
    def free_total(self) -> int:
        return self.free[0] + self.free[1]

    @property
    def healthy_free_total(self) -> int:
        return self.healthy_free[0] + self.healthy_free[1]

    def count(self, backend: Backend, rank: int | None, delta: int) -> None:
        if rank is None:
            return
        c = 1 if backend.quantum else 0
        self.free[c] += delta
        if rank == HEALTHY_RANK:
            self.healthy_free[c] += delta


@mypyc_attr(allow_interpreted_subclasses=True)  # plug-ins subclass it in plain Python
class Algorithm(ABC):
    #: The algorithm's name: a built-in's enum member, or the name a plug-in is registered under.
    kind: ClassVar[LoadBalancingAlgorithmType | str]
    #: What one ``pick`` costs in the tier's size n, e.g. ``"O(log n)"``.
    pick_cost: ClassVar[str] = ""
    #: True when requests prefer a class of backend (see QUANTUM_AWARE).
    workload_aware: ClassVar[bool] = False
    #: False when the order of members ignores their in-flight counts: the
    #: router then skips ``update`` when a slot is taken or released and the
    #: rank stays the same (see ``Tier.use``).
    load_aware: ClassVar[bool] = True
    #: True when the algorithm reads latency: the module then calls
    #: ``observe`` with every completed request and passing probe.
    observes_latency: ClassVar[bool] = False
    #: Config keys this algorithm accepts, with their defaults.
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, settings: Mapping[str, Any], rng: random.Random, clock: Clock) -> None:
        self.settings = settings
        self.rng = rng
        self.clock = clock
        self.tier: TierCounts | None = None  # set by the tier that owns this instance

    def healthy_free(self, klass: int | None = None) -> int:
        """How many HEALTHY members of the tier (of ``klass``) have a free slot."""
        tier = self.tier
        if tier is None:
            return 0
        return tier.healthy_free_total if klass is None else tier.healthy_free[klass]

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Validate an algorithm config; raise :class:`AlgorithmError` naming the key."""
        unknown = sorted(set(config) - set(cls.defaults))
        if unknown:
            allowed = ", ".join(sorted(cls.defaults)) or "none"
            raise AlgorithmError(f"{cls.kind}: unknown config key(s) {unknown}; allowed: {allowed}")
        settings = {**cls.defaults, **config}
        cls.check(settings)
        return settings

    @classmethod  # noqa: B027 - optional hook
    def check(cls, settings: dict[str, Any]) -> None:
        """Validate values (subclasses); raise :class:`AlgorithmError`."""

    def preferred_class(self, request: Request) -> int | None:
        """The backend class this request should go to first, if any."""
        return None

    @abstractmethod
    def rebuild(self, members: Sequence[Backend]) -> None: ...

    def update(self, backend: Backend) -> None:  # noqa: B027 - optional hook
        """One member's rank, load or latency changed."""

    def observe(self, backend: Backend, latency_ms: float, now: float) -> None:  # noqa: B027 - optional hook
        """A latency sample of ``backend`` (only if ``observes_latency``); ``update`` follows."""

    @abstractmethod
    def pick(self, request: Request, klass: int | None) -> Backend | None: ...


def number(
    settings: Mapping[str, Any],
    key: str,
    kind: LoadBalancingAlgorithmType | str,
    *,
    minimum: float,
    maximum: float | None = None,
    allow_none: bool = False,
    integer: bool = False,
) -> None:
    """Check that ``settings[key]`` is a number >= ``minimum`` (and <= ``maximum``)."""
    value = settings[key]
    if value is None and allow_none:
        return
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if (
        isinstance(value, bool)
        or not ok_type
        or not math.isfinite(value)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        what = "an integer" if integer else "a number"
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        bound += "" if integer else " (finite)"
        raise AlgorithmError(f"{kind}: config '{key}' must be {what} {bound}, got {value!r}")
