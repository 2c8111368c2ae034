"""Runtime state of one backend.

Everything here is mutated only on the event loop thread by the module; the
algorithms read it. ``rank`` sums up what a pick needs to know:
0 = HEALTHY with a free slot, 1 = DEGRADED with a free slot, ``None`` = not a
candidate now (UNHEALTHY, circuit OPEN, at capacity, or excluded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .breaker import CircuitBreaker
from .config import BackendConfig
from .enums import CircuitState, HealthState
from .stats import LatencyWindow

if TYPE_CHECKING:
    from .health import HealthTracker

HEALTHY_RANK: Final = 0
DEGRADED_RANK: Final = 1
NO_SLOT: Final = -1  # lb_index of a backend in no heap or rotation


class Backend(LatencyWindow):
    # What a request reads and writes comes first, so that it shares few cache lines (with
    # 10,000 backends, most of a backend's state is out of the cache when it is picked): the
    # slot counts, the algorithm's fields (lb_*, latency_*) and the outcome counters.
    __slots__ = (
        "in_flight",
        "limit",
        "rank",
        "base_rank",
        "tier",
        "effective_weight",
        "total",
        "lb_owner",
        "lb_in",
        "lb_index",
        "lb_rank",
        "lb_key",
        "latency_cost",
        "latency_stamp",
        "latency_samples",
        "successful",
        "breaker_quiet",
        "quantum",
        "score_ms",
        "score_samples",
        "lb_seq",
        "lb_group",
        "failed",
        "breaker",
        "excluded",
        "removed",
        "id",
        "config",
        "host",
        "port",
        "priority",
        "key",
        "joined_at",
        "health",
        "__weakref__",
    )

    def __init__(
        self, backend_id: str, config: BackendConfig, breaker: CircuitBreaker, health: HealthTracker, *, now: float
    ) -> None:
        # In the order of __slots__ (the compiled build lays the fields out in this order,
        # after LatencyWindow's).
        super().__init__()
        self.in_flight = 0
        self.limit = config.max_connections  # slots now: the breaker may lower it
        self.rank: int | None = None
        self.base_rank: int | None = None  # the rank when a slot is free
        self.tier: object = None  # the router's Tier that holds the backend (router.py), None once removed
        self.effective_weight = config.weight
        self.total = 0
        # The tier's algorithm's place for this backend in its heap or rotation (see
        # algorithms/_heap.py): whose fields these are, which structure holds the backend
        # (None: none), where in it, and its order there.
        self.lb_owner: object = None
        self.lb_in: object = None
        self.lb_index = NO_SLOT
        self.lb_rank = 0
        self.lb_key = 0.0
        # Latency estimates, kept by the algorithms that read them: LEAST_LATENCY's peak EWMA
        # (stats.peak_ewma) here, QUANTUM_AWARE's plain EWMA (stats.ewma) below.
        self.latency_cost = 0.0
        self.latency_stamp = 0.0
        self.latency_samples = 0
        self.successful = 0
        self.breaker_quiet = breaker.quiet  # kept by the module: see CircuitBreaker.quiet
        self.quantum = config.quantum_capable
        self.score_ms = 0.0
        self.score_samples = 0
        self.lb_seq = 0  # LazyHeap's tie-break
        self.lb_group: object = None  # for the owner: which of its structures holds the backend
        self.failed = 0
        self.breaker = breaker
        self.excluded = 0
        self.removed = False
        self.id = backend_id
        self.config = config
        self.host = config.host
        self.port = config.port
        self.priority = config.priority
        self.key = config.address  # stable across restarts and instances: what hashing uses
        self.joined_at = now
        self.health = health

    @property
    def weight(self) -> float:
        return self.config.weight

    def compute_rank(self) -> int | None:
        """Recompute ``limit`` and ``base_rank`` from health, breaker and exclusion; return the rank.

        Taking and releasing slots only compares ``in_flight`` with ``limit``;
        this fuller check runs when anything else changed.
        """
        self.limit = self.breaker.capacity(self.config.max_connections)
        state = self.health.state
        if self.excluded or self.removed or state is HealthState.UNHEALTHY or self.limit == 0:
            self.base_rank = None
        else:
            self.base_rank = HEALTHY_RANK if state is HealthState.HEALTHY else DEGRADED_RANK
        return self.base_rank if self.in_flight < self.limit else None

    @property
    def circuit_state(self) -> CircuitState:
        return self.breaker.state

    def __repr__(self) -> str:
        return f"<Backend {self.id} {self.key} in_flight={self.in_flight} rank={self.rank}>"
