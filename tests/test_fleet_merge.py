"""How the supervisor's admin API sums its workers (``server/admin/fleet.py``), and the channel
between them (``server/channel.py``), on their own."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from load_balancing_module.models import DrainResult
from load_balancing_module.server.admin.fleet import (
    merge_distribution,
    merge_drains,
    merge_filter_errors,
    merge_metrics,
    merge_pools,
)
from load_balancing_module.server.channel import Channel, ChannelClosed, RemoteError

WORKER = """# HELP omnixan_lb_requests Requests.
# TYPE omnixan_lb_requests counter
omnixan_lb_requests_total{{backend="a",code_class="2xx"}} {requests}
# HELP omnixan_lb_active_connections In flight.
# TYPE omnixan_lb_active_connections gauge
omnixan_lb_active_connections{{backend="a"}} {active}
# HELP omnixan_lb_backend_up Up.
# TYPE omnixan_lb_backend_up gauge
omnixan_lb_backend_up{{backend="a"}} 1.0
# HELP omnixan_lb_circuit_state Circuit.
# TYPE omnixan_lb_circuit_state gauge
omnixan_lb_circuit_state{{backend="a"}} {circuit}
# HELP omnixan_lb_state_store_up Store.
# TYPE omnixan_lb_state_store_up gauge
omnixan_lb_state_store_up {store}
# HELP omnixan_lb_request_duration_seconds Duration.
# TYPE omnixan_lb_request_duration_seconds histogram
omnixan_lb_request_duration_seconds_bucket{{backend="a",le="0.1"}} {requests}
omnixan_lb_request_duration_seconds_bucket{{backend="a",le="+Inf"}} {requests}
omnixan_lb_request_duration_seconds_count{{backend="a"}} {requests}
omnixan_lb_request_duration_seconds_sum{{backend="a"}} 0.5
"""


def values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_histograms_and_levels_add_up_and_facts_do_not() -> None:
    merged = values(
        merge_metrics(
            [
                WORKER.format(requests=3, active=1, circuit=0, store=1),
                WORKER.format(requests=4, active=2, circuit=2, store=0),
            ]
        )
    )
    a = (("backend", "a"),)
    assert merged[("omnixan_lb_requests_total", (("backend", "a"), ("code_class", "2xx")))] == 7
    assert merged[("omnixan_lb_request_duration_seconds_count", a)] == 7
    assert merged[("omnixan_lb_request_duration_seconds_bucket", (("backend", "a"), ("le", "+Inf")))] == 7
    assert merged[("omnixan_lb_request_duration_seconds_sum", a)] == 1.0
    assert merged[("omnixan_lb_active_connections", a)] == 3
    assert merged[("omnixan_lb_backend_up", a)] == 1  # the same fact in each worker
    assert merged[("omnixan_lb_circuit_state", a)] == 2  # the worst
    assert merged[("omnixan_lb_state_store_up", ())] == 0  # down if any worker's store is


def backend(total: int, rps: float, p99: float | None, circuit: str = "closed") -> dict[str, Any]:
    return {
        "active_connections": 1,
        "total_requests": total,
        "successful_requests": total,
        "failed_requests": 0,
        "requests_per_second": rps,
        "p50_latency_ms": p99,
        "p95_latency_ms": p99,
        "p99_latency_ms": p99,
        "avg_latency_ms": p99,
        "error_rate": 0.0,
        "circuit_state": circuit,
        "effective_weight": 1.0,
        "draining": False,
        "health_status": "healthy",
        "load_fraction": 1.0,
    }


def test_a_distribution_sums_traffic_and_keeps_the_supervisors_health() -> None:
    own = {
        "total_requests": 0,
        "requests_per_second": 0.0,
        "queued_requests": 0,
        "algorithm": "round_robin",
        "backends": {"a": {**backend(0, 0.0, None), "health_status": "unhealthy"}},
    }
    parts = [
        {
            "total_requests": 10,
            "requests_per_second": 1.0,
            "queued_requests": 1,
            "backends": {"a": backend(10, 1.0, 2.0)},
        },
        {
            "total_requests": 30,
            "requests_per_second": 3.0,
            "queued_requests": 0,
            "backends": {"a": backend(30, 3.0, 6.0, "open")},
        },
    ]
    merged = merge_distribution(own, parts)
    a = merged["backends"]["a"]
    assert (merged["total_requests"], merged["requests_per_second"], merged["queued_requests"]) == (40, 4.0, 1)
    assert (a["total_requests"], a["active_connections"], a["requests_per_second"]) == (40, 2, 4.0)
    assert a["p99_latency_ms"] == 6.0  # the highest: an upper bound
    assert a["avg_latency_ms"] == pytest.approx((2.0 * 1 + 6.0 * 3) / 4)  # weighted by completions
    assert a["circuit_state"] == "open" and a["health_status"] == "unhealthy"
    assert a["load_fraction"] == 1.0


def test_a_drain_over_all_workers_is_complete_only_when_each_is() -> None:
    def result(in_flight: int, left: int, at: float) -> DrainResult:
        return DrainResult(
            backend_id="a",
            in_flight=in_flight,
            completed=left == 0,
            in_flight_left=left,
            started_at=at,
            finished_at=at + 1,
            waited_seconds=1.0,
        )

    merged = merge_drains("a", [result(2, 0, 10.0), result(3, 1, 11.0)], result(0, 0, 9.0))
    assert (merged.in_flight, merged.in_flight_left, merged.completed) == (5, 1, False)
    assert (merged.started_at, merged.finished_at) == (10.0, 12.0)
    assert merge_drains("a", [], result(0, 0, 9.0)).started_at == 9.0  # no worker: the supervisor's own


async def test_the_channel_answers_asks_runs_tells_and_reports_errors_and_a_closed_end() -> None:
    told: list[Any] = []

    async def worker(op: str, args: dict[str, Any]) -> Any:
        if op == "double":
            return args["n"] * 2
        if op == "note":
            told.append(args["x"])
            return None
        raise ValueError(f"unknown op {op!r}")

    async def nothing(op: str, args: dict[str, Any]) -> Any:
        raise AssertionError("the supervisor's end is asked nothing")

    left, right = socket.socketpair()
    supervisor = await Channel.open(left, nothing)
    other = await Channel.open(right, worker)
    supervisor.tell("note", {"x": 1})
    assert await supervisor.call("double", {"n": 21}, 5) == 42
    assert told == [1]
    with pytest.raises(RemoteError, match="unknown op 'nope'"):
        await supervisor.call("nope", {}, 5)
    await other.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(supervisor.call("double", {"n": 1}), 5)
    await supervisor.close()


async def test_tells_keep_their_order_and_a_tell_that_waits_forever_does_not_hide_a_closed_end() -> None:
    """A worker's tells wait until its start is done; if the supervisor dies meanwhile, the worker
    must still see its channel close (and exit), not wait for ever behind the tell."""
    told: list[int] = []
    never = asyncio.Event()

    async def worker(op: str, args: dict[str, Any]) -> Any:
        if args["x"] == 0:
            await never.wait()  # as a tell behind a start that never ends
        told.append(args["x"])

    async def nothing(op: str, args: dict[str, Any]) -> Any:
        return None

    left, right = socket.socketpair()
    supervisor = await Channel.open(left, nothing)
    other = await Channel.open(right, worker)
    for x in (1, 2, 3):
        supervisor.tell("note", {"x": x})
    for _ in range(100):
        if len(told) == 3:
            break
        await asyncio.sleep(0.001)
    assert told == [1, 2, 3]  # in order
    supervisor.tell("note", {"x": 0})
    supervisor.tell("note", {"x": 4})  # behind the one that waits
    await asyncio.sleep(0.01)
    await supervisor.close()  # the supervisor goes away
    await asyncio.wait_for(other.closed.wait(), 2)
    assert told == [1, 2, 3]
    await other.close()


def test_pools_are_summed_pool_by_pool_and_filter_errors_added() -> None:
    def distribution(requests: int, backend: str = "a") -> dict[str, Any]:
        view = {
            "backend_id": backend, "active_connections": 0, "total_requests": requests, "successful_requests": requests,
            "failed_requests": 0, "requests_per_second": 1.0, "p50_latency_ms": 1.0, "p95_latency_ms": 2.0,
            "p99_latency_ms": 3.0, "avg_latency_ms": 1.0, "error_rate": 0.0, "circuit_state": "closed",
            "effective_weight": 1.0, "draining": False, "load_fraction": 0.0,
        }  # fmt: skip
        return {
            "total_requests": requests, "requests_per_second": 1.0, "queued_requests": 0, "algorithm": "round_robin",
            "backends": {backend: view},
        }  # fmt: skip

    own = {"default": distribution(0), "api": distribution(0, "b")}
    figures = [
        {"distribution": distribution(1), "pools": {"default": distribution(1), "api": distribution(5, "b")}},
        {"distribution": distribution(2), "pools": {"default": distribution(2), "gone": distribution(9)}},
        {"distribution": distribution(4)},  # no pools: its distribution is the default pool's
    ]
    merged = merge_pools(own, figures)
    assert set(merged) == {"default", "api"}  # a pool the supervisor does not have is not shown
    assert merged["default"]["total_requests"] == 7 and merged["api"]["total_requests"] == 5
    assert merged["api"]["backends"]["b"]["total_requests"] == 5
    errors = [{"filter_errors": {"m:f": 2}}, {"filter_errors": {"m:f": 1, "m:g": 4}}, {}]
    assert merge_filter_errors(errors) == {"m:f": 3, "m:g": 4}
