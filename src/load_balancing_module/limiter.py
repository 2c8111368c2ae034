"""Admission of a client's request: flood blocking, then a token bucket per client IP.

Both are arithmetic on the state store's clock and never sleep: a refused
request gets :class:`RateLimitExceededError` with the seconds to wait. The
buckets and block lists live in the state store, so instances that share a
store share the limits.
"""

from __future__ import annotations

import logging

from ._log import log_event
from .config import RateLimitConfig, Request
from .exceptions import RateLimitExceededError
from .state import StateStore


class RateLimiter:
    __slots__ = ("store", "limits", "counters")

    def __init__(self, store: StateStore, limits: RateLimitConfig, counters: dict[str, int]) -> None:
        self.store = store
        self.limits = limits
        self.counters = counters  # the module's: "ddos_blocked" and "rate_limited" are counted here

    async def admit(self, request: Request) -> None:
        """Return if the request's client may send it now; else raise :class:`RateLimitExceededError`."""
        limits = self.limits
        ip = request.client_ip
        blocked_for, newly = await self.store.record_attempt(ip, limits.ddos_threshold, limits.ddos_block_seconds)
        if blocked_for > 0:
            self.counters["ddos_blocked"] += 1
            if newly:
                log_event(
                    "client_blocked",
                    logging.WARNING,
                    client_ip=ip,
                    seconds=limits.ddos_block_seconds,
                    threshold=limits.ddos_threshold,
                )
            raise RateLimitExceededError(
                f"client {ip} is blocked for flooding ({blocked_for:.1f} s left)",
                retry_after=blocked_for,
                client_ip=ip,
                blocked=True,
            )
        wait = await self.store.take_token(ip, limits.requests_per_second, limits.burst_size)
        if wait > 0:
            self.counters["rate_limited"] += 1
            raise RateLimitExceededError(
                f"client {ip} is over {limits.requests_per_second:g} requests/s", retry_after=wait, client_ip=ip
            )
