"""Per-backend circuit breaker (the passive health check).

One small class per state, as pybreaker does (one shared instance each; the
counters live in the breaker, as pybreaker keeps them in its storage), with
timestamps from the injected clock. No lock and no wrapping of the call: the module reports each
outcome with :meth:`CircuitBreaker.on_success` / :meth:`on_failure`, and asks
:meth:`capacity` how many requests the backend may have in flight.

- CLOSED: all traffic; ``failure_threshold`` consecutive failures open it.
- OPEN: no traffic until ``timeout`` seconds have passed, then HALF_OPEN.
- HALF_OPEN: at most ``half_open_max_calls`` in flight; ``success_threshold``
  successes close it, any failure opens it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .clock import Clock
from .config import CircuitBreakerConfig
from .enums import CircuitState

Listener = Callable[["CircuitBreaker", CircuitState, CircuitState], None]


class _State:
    """What a state does with an outcome. One shared instance per state, holding no data: the
    counters live in the breaker, so an outcome touches one object (many backends, few cache lines)."""

    kind: CircuitState

    def enter(self, breaker: CircuitBreaker) -> None:
        breaker.failures = 0
        breaker.successes = 0

    def capacity(self, breaker: CircuitBreaker, max_connections: int) -> int:
        return max_connections

    def on_success(self, breaker: CircuitBreaker) -> None:
        pass

    def on_failure(self, breaker: CircuitBreaker) -> None:
        pass


class _Closed(_State):
    kind = CircuitState.CLOSED

    def on_success(self, breaker: CircuitBreaker) -> None:
        breaker.failures = 0

    def on_failure(self, breaker: CircuitBreaker) -> None:
        breaker.failures += 1
        if breaker.failures >= breaker.config.failure_threshold:
            breaker.transition(_OPEN)


class _Open(_State):
    kind = CircuitState.OPEN

    def enter(self, breaker: CircuitBreaker) -> None:
        super().enter(breaker)
        breaker.opened_until = breaker.clock.monotonic() + breaker.config.timeout

    def capacity(self, breaker: CircuitBreaker, max_connections: int) -> int:
        return 0


class _HalfOpen(_State):
    kind = CircuitState.HALF_OPEN

    def capacity(self, breaker: CircuitBreaker, max_connections: int) -> int:
        return min(max_connections, breaker.config.half_open_max_calls)

    def on_success(self, breaker: CircuitBreaker) -> None:
        breaker.successes += 1
        if breaker.successes >= breaker.config.success_threshold:
            breaker.transition(_CLOSED)

    def on_failure(self, breaker: CircuitBreaker) -> None:
        breaker.transition(_OPEN)


_CLOSED: Final = _Closed()
_OPEN: Final = _Open()
_HALF_OPEN: Final = _HalfOpen()


class CircuitBreaker:
    """The breaker of one backend. ``listener`` hears every transition."""

    __slots__ = ("enabled", "_state", "failures", "successes", "opened_until", "config", "clock", "listener")

    def __init__(self, config: CircuitBreakerConfig, clock: Clock, listener: Listener | None = None) -> None:
        self.enabled = config.enabled
        self._state: _State = _CLOSED
        self.failures = 0  # consecutive failures while CLOSED
        self.successes = 0  # successes while HALF_OPEN
        self.opened_until = 0.0  # while OPEN: when it turns HALF_OPEN
        self.config = config
        self.clock = clock
        self.listener = listener

    @property
    def state(self) -> CircuitState:
        return self._state.kind

    @property
    def quiet(self) -> bool:
        """True when a success would change nothing (CLOSED with no failure counted, or disabled):
        the module then skips :meth:`on_success`, and with 10,000 backends a cache miss."""
        return not self.enabled or (self._state is _CLOSED and self.failures == 0)

    @property
    def retry_at(self) -> float | None:
        """When an OPEN breaker becomes HALF_OPEN; ``None`` in other states."""
        return self.opened_until if self._state is _OPEN else None

    def capacity(self, max_connections: int) -> int:
        return self._state.capacity(self, max_connections) if self.enabled else max_connections

    def on_success(self) -> None:
        if self.enabled:
            self._state.on_success(self)

    def on_failure(self) -> None:
        if self.enabled:
            self._state.on_failure(self)

    def poll(self) -> None:
        """Move OPEN to HALF_OPEN once its timeout has passed."""
        retry_at = self.retry_at
        if retry_at is not None and self.clock.monotonic() >= retry_at:
            self.transition(_HALF_OPEN)

    def transition(self, state: _State) -> None:
        old = self._state
        self._state = state
        state.enter(self)
        if self.listener is not None and old is not state:
            self.listener(self, old.kind, state.kind)
