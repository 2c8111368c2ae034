"""The data-plane surface of ``LoadBalancingModule`` that front ends use (docs/library.md)."""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path
from typing import Any

import pytest

import load_balancing_module
from load_balancing_module import (
    BackendConfig,
    FakeClock,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
)

REQ = Request(client_ip="10.5.5.5")
DOC = Path(__file__).resolve().parent.parent / "docs" / "library.md"
ATTRIBUTES = {"clock", "rng", "store", "request_stats", "backoff"}  # set in __init__, documented in the table


async def make_lb(n: int = 2, **overrides: Any) -> LoadBalancingModule:
    config = LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False), **overrides)
    lb = LoadBalancingModule(config, clock=FakeClock(), rng=random.Random(5))
    for i in range(n):
        await lb.add_backend(BackendConfig(host=f"s{i}.test", port=80))
    return lb


async def test_backend_count_follows_membership() -> None:
    lb = await make_lb(0)
    assert lb.backend_count == 0
    first = await lb.add_backend(BackendConfig(host="a.test", port=80))
    await lb.add_backend(BackendConfig(host="a.test", port=80))  # same address: a second backend
    assert lb.backend_count == 2
    await lb.remove_backend(first)
    assert lb.backend_count == 1


async def test_a_budgeted_retry_holds_the_budget_until_it_ends() -> None:
    lb = await make_lb(retry_budget_percent=0.0, retry_budget_min_concurrency=1)
    assert lb.retry_allowed()
    lb.begin_retry(budgeted=True)
    assert not lb.retry_allowed()  # the one retry the budget admits is in progress
    assert lb.counts()["retries"] == 1
    lb.end_retry()
    assert lb.retry_allowed()
    assert lb.counts()["retries"] == 1  # ending a retry does not uncount it


async def test_an_unbudgeted_retry_is_counted_but_takes_no_budget() -> None:
    lb = await make_lb(retry_budget_percent=0.0, retry_budget_min_concurrency=1)
    lb.begin_retry(budgeted=False)
    lb.begin_retry(budgeted=False)
    assert lb.retry_allowed()
    assert lb.counts()["retries"] == 2


async def test_the_retry_budget_grows_with_the_requests_in_flight() -> None:
    lb = await make_lb(4, retry_budget_percent=50.0, retry_budget_min_concurrency=0)
    assert not lb.retry_allowed()  # nothing in flight: 50 % of 0
    held = [await lb.route_request(REQ) for _ in range(4)]
    lb.begin_retry(budgeted=True)
    assert lb.retry_allowed()  # 1 of the 2 that 4 requests in flight allow
    lb.begin_retry(budgeted=True)
    assert not lb.retry_allowed()
    for result in held:
        lb.complete_now(result, success=True)
    lb.end_retry()
    lb.end_retry()
    assert not lb.retry_allowed()


async def test_algorithm_settings_name_the_algorithm_and_copy_its_settings() -> None:
    lb = await make_lb()
    assert lb.algorithm_settings() == ("round_robin", {})
    await lb.configure_algorithm({"algorithm_type": "least_connections", "config": {"choice_count": 2}})
    name, settings = lb.algorithm_settings()
    assert (name, settings) == ("least_connections", {"choice_count": 2})
    settings["choice_count"] = 9
    assert lb.algorithm_settings()[1] == {"choice_count": 2}


async def test_counts_are_a_copy_of_every_counter() -> None:
    lb = await make_lb()
    counts = lb.counts()
    assert set(counts) == {
        "rate_limited",
        "ddos_blocked",
        "retries",
        "queue_timeouts",
        "unavailable",
        "probes_not_run",
        "discovery_errors",
    }
    assert set(counts.values()) == {0}
    counts["retries"] = 7
    assert lb.counts()["retries"] == 0


def _documented_names() -> list[str]:
    """The names that the items of the surface section of docs/library.md begin with."""
    section = DOC.read_text(encoding="utf-8").split("## The data-plane surface", 1)[1].split("\n## ", 1)[0]
    names: list[str] = []
    for item in section.split("\n- ")[1:]:
        names += re.findall(r"`(\w+)", re.split(r":\s", item, maxsplit=1)[0])
    return names


def _method_docstrings() -> dict[str, str | None]:
    """The docstring of each method and property of ``LoadBalancingModule``, read from its source
    (the compiled build keeps no docstrings)."""
    source = Path(load_balancing_module.__file__).with_name("module.py").read_text(encoding="utf-8")
    (cls,) = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "LoadBalancingModule"]
    return {n.name: ast.get_docstring(n) for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_the_documented_surface_is_the_modules() -> None:
    names = _documented_names()
    assert {
        "backend_count",
        "retry_allowed",
        "begin_retry",
        "end_retry",
        "algorithm_settings",
        "counts",
        "route_now",
        "route_request",
        "route_retry",
        "complete_now",
        "complete_request",
        "abandon_request",
        "backoff",
        "describe_backend",
        "clock",
        "rng",
        "store",
        "request_stats",
    } <= set(names)
    docstrings = _method_docstrings()
    for name in set(names) - ATTRIBUTES:
        assert name in docstrings, f"{name} is no method or property of LoadBalancingModule"
        assert docstrings[name], f"{name} has no docstring"


@pytest.mark.parametrize("name", sorted(ATTRIBUTES))
async def test_the_documented_attributes_exist(name: str) -> None:
    lb = await make_lb()
    assert getattr(lb, name) is not None
