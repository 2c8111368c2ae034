"""Per-backend circuit breaker (the passive health check).

One small class per state, as pybreaker does, with timestamps from the
injected clock. No lock and no wrapping of the call: the module reports each
outcome with :meth:`CircuitBreaker.on_success` / :meth:`on_failure`, and asks
:meth:`capacity` how many requests the backend may have in flight.

- CLOSED: all traffic; ``failure_threshold`` consecutive failures open it.
- OPEN: no traffic until ``timeout`` seconds have passed, then HALF_OPEN.
- HALF_OPEN: at most ``half_open_max_calls`` in flight; ``success_threshold``
  successes close it, any failure opens it again.
"""

from __future__ import annotations

from collections.abc import Callable

from .clock import Clock
from .config import CircuitBreakerConfig
from .enums import CircuitState

Listener = Callable[["CircuitBreaker", CircuitState, CircuitState], None]


class _State:
    kind: CircuitState

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    def capacity(self, max_connections: int) -> int:
        return max_connections

    def on_success(self) -> None:
        pass

    def on_failure(self) -> None:
        pass


class _Closed(_State):
    kind = CircuitState.CLOSED

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker)
        self.failures = 0

    def on_success(self) -> None:
        self.failures = 0

    def on_failure(self) -> None:
        self.failures += 1
        if self.failures >= self.breaker.config.failure_threshold:
            self.breaker.transition(_Open)


class _Open(_State):
    kind = CircuitState.OPEN

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker)
        self.retry_at = breaker.clock.monotonic() + breaker.config.timeout

    def capacity(self, max_connections: int) -> int:
        return 0


class _HalfOpen(_State):
    kind = CircuitState.HALF_OPEN

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker)
        self.successes = 0

    def capacity(self, max_connections: int) -> int:
        return min(max_connections, self.breaker.config.half_open_max_calls)

    def on_success(self) -> None:
        self.successes += 1
        if self.successes >= self.breaker.config.success_threshold:
            self.breaker.transition(_Closed)

    def on_failure(self) -> None:
        self.breaker.transition(_Open)


class CircuitBreaker:
    """The breaker of one backend. ``listener`` hears every transition."""

    __slots__ = ("config", "enabled", "clock", "listener", "_state")

    def __init__(self, config: CircuitBreakerConfig, clock: Clock, listener: Listener | None = None) -> None:
        self.config = config
        self.enabled = config.enabled
        self.clock = clock
        self.listener = listener
        self._state: _State = _Closed(self)

    @property
    def state(self) -> CircuitState:
        return self._state.kind

    @property
    def retry_at(self) -> float | None:
        """When an OPEN breaker becomes HALF_OPEN; ``None`` in other states."""
        return self._state.retry_at if isinstance(self._state, _Open) else None

    def capacity(self, max_connections: int) -> int:
        return self._state.capacity(max_connections) if self.enabled else max_connections

    def on_success(self) -> None:
        if self.enabled:
            self._state.on_success()

    def on_failure(self) -> None:
        if self.enabled:
            self._state.on_failure()

    def poll(self) -> None:
        """Move OPEN to HALF_OPEN once its timeout has passed."""
        retry_at = self.retry_at
        if retry_at is not None and self.clock.monotonic() >= retry_at:
            self.transition(_HalfOpen)

    def transition(self, state_cls: type[_State]) -> None:
        old = self._state.kind
        self._state = state_cls(self)
        if self.listener is not None and old is not self._state.kind:
            self.listener(self, old, self._state.kind)
