"""The trivial filter the routes benchmark names (``bench_filters:passthrough``): the cost of a
filter itself, not of anything it does."""

from __future__ import annotations

from load_balancing_module.server.filters import FilterRequest


def passthrough(request: FilterRequest) -> None:
    return None
