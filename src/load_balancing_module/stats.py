"""Per-backend measurements kept in plain Python structures.

Recording is O(1) on the hot path; percentiles are computed when someone
asks (``get_load_distribution``, a Prometheus scrape), not per request.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Final

WINDOW_SAMPLES: Final = 1024  # completions kept per backend (a power of two)
WINDOW_SECONDS: Final = 60.0  # samples older than this are ignored by percentiles
RATE_SECONDS: Final = 10  # requests_per_second is averaged over this many seconds
_WINDOW_FLOATS: Final = 2 * WINDOW_SAMPLES


class LatencyWindow:
    """The most recent completions in a ring: for each, its time and its latency with the outcome.

    The base class of ``Backend``, so that its two fields sit in the backend's own
    object (with 10,000 backends, a separate window object is one more cache miss a
    request).

    The ring grows to ``WINDOW_SAMPLES`` entries, so an idle backend costs
    nothing. One list of floats, ``[time, value, time, value, ...]``: a
    failure's value is ``-1 - latency_ms`` (below zero, as no latency is), so
    recording is two stores next to each other (an ``array`` store parses its
    argument as a tuple would: several times the cost, compiled or not).
    """

    __slots__ = ("_samples", "_next")

    def __init__(self) -> None:
        self._samples: list[float] = []
        self._next = 0  # the index of the oldest sample's time once the ring is full

    def record_latency(self, latency_ms: float, ok: bool, now: float) -> None:
        value = latency_ms if ok else -1.0 - latency_ms
        samples = self._samples
        if len(samples) < _WINDOW_FLOATS:
            samples.append(now)
            samples.append(value)
        else:
            i = self._next
            samples[i] = now
            samples[i + 1] = value
            self._next = (i + 2) & (_WINDOW_FLOATS - 1)

    def _recent(self, since: float) -> tuple[list[float], int]:
        """Latencies of the samples at or after ``since``, and how many of them failed."""
        samples = self._samples
        values = [samples[i + 1] for i in range(0, len(samples), 2) if samples[i] >= since]
        failures = sum(1 for v in values if v < 0.0)
        return [v if v >= 0.0 else -1.0 - v for v in values], failures

    def latency_summary(self, now: float) -> WindowSummary:
        if not self._samples:
            return EMPTY_SUMMARY
        values, failures = self._recent(now - WINDOW_SECONDS)
        if not values:
            return EMPTY_SUMMARY
        values.sort()
        return WindowSummary(
            samples=len(values),
            avg_ms=sum(values) / len(values),
            p50_ms=_quantile(values, 0.50),
            p95_ms=_quantile(values, 0.95),
            p99_ms=_quantile(values, 0.99),
            error_rate=failures / len(values),
            per_second=self._rate(now),
        )

    def _rate(self, now: float) -> float:
        """Completions per second over the last ``RATE_SECONDS`` s.

        When the ring holds fewer than that many seconds (a busy backend),
        the rate is taken over the span the ring does hold.
        """
        samples = self._samples
        since = now - RATE_SECONDS
        count = sum(1 for t in samples[0::2] if t >= since)
        if count == WINDOW_SAMPLES:
            oldest = samples[self._next]
            return count / max(now - oldest, 1e-9)
        return count / RATE_SECONDS


class WindowSummary:
    __slots__ = ("samples", "avg_ms", "p50_ms", "p95_ms", "p99_ms", "error_rate", "per_second")

    def __init__(
        self,
        samples: int,
        avg_ms: float,
        p50_ms: float,
        p95_ms: float,
        p99_ms: float,
        error_rate: float,
        per_second: float,
    ) -> None:
        self.per_second = per_second
        self.samples = samples
        self.avg_ms = avg_ms
        self.p50_ms = p50_ms
        self.p95_ms = p95_ms
        self.p99_ms = p99_ms
        self.error_rate = error_rate


EMPTY_SUMMARY = WindowSummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def peak_ewma(cost: float, stamp: float, samples: int, tau: float, latency_ms: float, now: float) -> float:
    """The new cost of a peak-sensitive moving average of latency, as Finagle and Linkerd use.

    ``cost`` was the value at ``stamp``; between samples it decays toward zero
    with time constant ``tau`` (the value at ``t`` is ``cost * exp(-(t - stamp) / tau)``),
    so a backend that was slow is tried again later. A sample above the decayed
    cost replaces it at once (be quick to notice a slow backend); otherwise the
    cost moves toward the sample with weight ``w = exp(-dt / tau)``. The first
    sample (``samples == 0``) is taken as it is. The new cost is the value at ``now``.

    A function of plain numbers, not an object: the caller keeps them in the backend,
    which a request touches anyway (with 10,000 backends, one object fewer is one cache
    miss fewer).
    """
    w = math.exp(-max(now - stamp, 0.0) / tau)
    current = cost * w
    if samples == 0 or latency_ms > current:
        return latency_ms
    return current * w + latency_ms * (1.0 - w)


def ewma(value: float, samples: int, sample: float, alpha: float = 0.3) -> float:
    """A plain exponentially weighted average after one more sample; ``alpha`` is its weight."""
    return sample if samples == 0 else value + alpha * (sample - value)


# Upper bounds (seconds) of the request duration histogram's buckets, Prometheus' defaults
# widened at both ends: a proxy answers in well under a millisecond when a backend is local.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STRIDE: Final = 16  # len(DURATION_BUCKETS) + 1: the last slot of each class counts durations above every bound
_BOUNDS: Final[list[float]] = list(DURATION_BUCKETS)
_LAST: Final = 15  # len(DURATION_BUCKETS): the index of the bucket above every bound
assert len(DURATION_BUCKETS) + 1 == _STRIDE == _LAST + 1


class RequestStats:
    """Answered requests by backend and status class: counts and a duration histogram.

    The proxy calls :meth:`record` once per client request, after its answer.
    The cost is one dict lookup, a few comparisons and two list stores; nothing is
    cumulative until a scrape asks (:meth:`series`). Status classes 0..9
    (``status // 100``) each own a run of bucket counts in one flat list.
    """

    __slots__ = ("_by_backend",)

    def __init__(self) -> None:
        self._by_backend: dict[str, _BackendRequests] = {}

    def record(self, backend_id: str, status: int, seconds: float) -> None:
        series = self._by_backend.get(backend_id)
        if series is None:
            series = self._by_backend[backend_id] = _BackendRequests()
        klass = status // 100 if 0 <= status < 1000 else 0
        # bisect_left by hand: most durations fall in the first few buckets, and compiled, the
        # loop is a few native comparisons where a call to bisect boxes and compares objects.
        i = 0
        while i < _LAST and _BOUNDS[i] < seconds:
            i += 1
        series.counts[klass * _STRIDE + i] += 1
        series.sums[klass] += seconds

    def series(self) -> Iterator[tuple[str, str, list[int], float]]:
        """``(backend_id, code_class, per-bucket counts, sum of seconds)`` for every class seen.

        Counts are per bucket (not cumulative); the last one is above every bound."""
        for backend_id, series in list(self._by_backend.items()):
            counts = series.counts
            for klass in range(10):
                run = counts[klass * _STRIDE : (klass + 1) * _STRIDE]
                if any(run):
                    yield backend_id, f"{klass}xx", run, series.sums[klass]

    def total(self, backend_id: str | None = None) -> int:
        """Requests recorded (for one backend, or in all)."""
        if backend_id is not None:
            series = self._by_backend.get(backend_id)
            return sum(series.counts) if series is not None else 0
        return sum(sum(s.counts) for s in self._by_backend.values())


class _BackendRequests:
    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts = [0] * (10 * _STRIDE)
        self.sums = [0.0] * 10
