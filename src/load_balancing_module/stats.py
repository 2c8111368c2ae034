"""Per-backend measurements kept in plain Python structures.

Recording is O(1) on the hot path; percentiles are computed when someone
asks (``get_load_distribution``, a Prometheus scrape), not per request.
"""

from __future__ import annotations

import math

WINDOW_SAMPLES = 1024  # latency samples kept per backend (a power of two)
WINDOW_SECONDS = 60.0  # samples older than this are ignored by percentiles
RATE_SECONDS = 10  # requests_per_second is averaged over this many seconds


class RateCounter:
    """Events per second over the last ``RATE_SECONDS`` whole seconds."""

    __slots__ = ("_buckets", "_second")

    def __init__(self) -> None:
        self._buckets = [0] * (RATE_SECONDS + 1)
        self._second = 0

    def hit(self, now: float) -> None:
        second = int(now)
        if second != self._second:
            self._roll(second)
        self._buckets[second % (RATE_SECONDS + 1)] += 1

    def _roll(self, second: int) -> None:
        # Zero the buckets of the seconds skipped since the last hit.
        gap = min(second - self._second, RATE_SECONDS + 1)
        for s in range(second - gap + 1, second + 1):
            self._buckets[s % (RATE_SECONDS + 1)] = 0
        self._second = second

    def rate(self, now: float) -> float:
        """Average over the ``RATE_SECONDS`` seconds before the current one."""
        second = int(now)
        if second != self._second:
            self._roll(second)
        current = self._buckets[second % (RATE_SECONDS + 1)]
        return (sum(self._buckets) - current) / RATE_SECONDS


class LatencyWindow:
    """The most recent completions (latency, outcome, time) in a ring buffer."""

    __slots__ = ("_latency", "_ok", "_at", "_next", "_count")

    def __init__(self) -> None:
        self._latency = [0.0] * WINDOW_SAMPLES
        self._ok = [True] * WINDOW_SAMPLES
        self._at = [-math.inf] * WINDOW_SAMPLES
        self._next = 0
        self._count = 0

    def record(self, latency_ms: float, ok: bool, now: float) -> None:
        i = self._next
        self._latency[i] = latency_ms
        self._ok[i] = ok
        self._at[i] = now
        self._next = (i + 1) & (WINDOW_SAMPLES - 1)
        self._count += 1

    def summary(self, now: float) -> WindowSummary:
        if not self._count:
            return EMPTY_SUMMARY
        since = now - WINDOW_SECONDS
        idx = [i for i, at in enumerate(self._at) if at >= since]
        if not idx:
            return EMPTY_SUMMARY
        values = sorted(self._latency[i] for i in idx)
        failures = sum(1 for i in idx if not self._ok[i])
        return WindowSummary(
            samples=len(values),
            avg_ms=sum(values) / len(values),
            p50_ms=_quantile(values, 0.50),
            p95_ms=_quantile(values, 0.95),
            p99_ms=_quantile(values, 0.99),
            error_rate=failures / len(values),
        )


class WindowSummary:
    __slots__ = ("samples", "avg_ms", "p50_ms", "p95_ms", "p99_ms", "error_rate")

    def __init__(
        self, samples: int, avg_ms: float, p50_ms: float, p95_ms: float, p99_ms: float, error_rate: float
    ) -> None:
        self.samples = samples
        self.avg_ms = avg_ms
        self.p50_ms = p50_ms
        self.p95_ms = p95_ms
        self.p99_ms = p99_ms
        self.error_rate = error_rate


EMPTY_SUMMARY = WindowSummary(0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class PeakEwma:
    """Peak-sensitive moving average of latency, as Finagle and Linkerd use.

    A sample above the current cost replaces it at once (be quick to notice a
    slow backend); otherwise the cost moves toward the sample with weight
    ``w = exp(-dt / tau)``. Between samples the cost decays toward zero with
    the same time constant, so a backend that was slow is tried again later.
    ``cost`` and ``stamp`` describe the value at ``stamp``; the value at time
    ``t`` is ``cost * exp(-(t - stamp) / tau)``.
    """

    __slots__ = ("cost", "stamp", "tau", "samples")

    def __init__(self, tau: float) -> None:
        self.cost = 0.0
        self.stamp = 0.0
        self.tau = tau
        self.samples = 0

    def observe(self, latency_ms: float, now: float) -> None:
        if self.samples == 0 or latency_ms > self.cost:
            self.cost = latency_ms
        else:
            w = math.exp(-max(now - self.stamp, 0.0) / self.tau)
            self.cost = self.cost * w + latency_ms * (1.0 - w)
        self.stamp = now
        self.samples += 1

    def value(self, now: float) -> float:
        return self.cost * math.exp(-max(now - self.stamp, 0.0) / self.tau)


class Ewma:
    """Plain exponentially weighted average; ``alpha`` is the weight of a new sample."""

    __slots__ = ("value", "alpha", "samples")

    def __init__(self, alpha: float = 0.3) -> None:
        self.value = 0.0
        self.alpha = alpha
        self.samples = 0

    def observe(self, sample: float) -> None:
        self.value = sample if self.samples == 0 else self.value + self.alpha * (sample - self.value)
        self.samples += 1
