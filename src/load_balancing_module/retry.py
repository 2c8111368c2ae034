"""Retry policy pieces: backoff with full jitter, and a retry budget."""

from __future__ import annotations

import random


class ExponentialJitterBackoff:
    """Sleep before retry ``n`` (1-based): ``uniform(0, min(cap, base * 2 ** (n - 1)))``.

    "Full jitter" (as in AWS's backoff study and tenacity's
    ``wait_random_exponential``): clients that failed together do not retry
    together.
    """

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng

    def ceiling(self, retry: int) -> float:
        return min(self.cap, self.base * 2.0 ** (retry - 1))

    def __call__(self, retry: int) -> float:
        return self.rng.uniform(0.0, self.ceiling(retry))


class RetryBudget:
    """Retries in progress may not exceed ``percent`` of requests in flight
    (at least ``min_concurrency``), as Envoy's retry budgets and Finagle's
    ``RetryBudget``: a failing fleet does not get a retry storm."""

    def __init__(self, percent: float, min_concurrency: int) -> None:
        self.percent = percent
        self.min_concurrency = min_concurrency
        self.active = 0

    def allows(self, in_flight: int) -> bool:
        return self.active < max(self.min_concurrency, self.percent / 100.0 * in_flight)
