"""Plug-in algorithms: register_algorithm, the omnixan_lb.algorithms entry points, and a plug-in
named in a library config, a proxy config file and PUT /algorithm. (The routing contract every
algorithm keeps runs against the plug-in in tests/test_algorithms.py.)"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from load_balancing_module import (
    Algorithm,
    AlgorithmError,
    BackendConfig,
    ConfigurationError,
    HealthCheckConfig,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    Request,
    register_algorithm,
)
from load_balancing_module.algorithms import algorithm_names
from load_balancing_module.backend import Backend
from load_balancing_module.server.config import load_config
from plugin_example import COST_AWARE, CostAware
from proxy_helpers import HOST, AioBackend, get, start_proxy


class First(Algorithm):
    """The first candidate: enough to be registered."""

    pick_cost = "O(n)"

    def rebuild(self, members: Sequence[Backend]) -> None:
        self.members = list(members)

    def pick(self, request: Request, klass: int | None) -> Backend | None:
        return next((b for b in self.members if b.rank is not None), None)


def test_register_algorithm_refuses_what_it_cannot_use() -> None:
    with pytest.raises(AlgorithmError, match="lower-case letters"):
        register_algorithm("Bad-Name", First)
    with pytest.raises(AlgorithmError, match="built-in"):
        register_algorithm("round_robin", First)
    with pytest.raises(AlgorithmError, match="not a subclass of Algorithm"):
        register_algorithm("not_an_algorithm", dict)  # type: ignore[arg-type]

    class Unstated(First):
        pick_cost = ""

    with pytest.raises(AlgorithmError, match="must state pick_cost"):
        register_algorithm("unstated_cost", Unstated)
    register_algorithm("first_candidate", First)
    register_algorithm("first_candidate", First)  # the same again: nothing changes

    class Other(First):
        pass

    with pytest.raises(AlgorithmError, match="taken by"):
        register_algorithm("first_candidate", Other)
    assert "first_candidate" in algorithm_names()


def test_an_unknown_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="unknown algorithm 'fastest'; known: round_robin, .*" + COST_AWARE):
        LoadBalancingModuleConfig(algorithm="fastest")


async def cost_lb(algorithm: Any = COST_AWARE) -> LoadBalancingModule:
    config = LoadBalancingModuleConfig(algorithm=algorithm, health_check=HealthCheckConfig(enabled=False))
    lb = LoadBalancingModule(config, rng=random.Random(3))
    for name, cost in (("cheap", 0.25), ("dear", 1.0)):
        await lb.add_backend(BackendConfig(host=f"{name}.test", port=80, metadata={"cost": cost}))
    return lb


async def test_a_registered_algorithm_routes_by_its_own_rule() -> None:
    lb = await cost_lb()
    held = [await lb.route_request(Request(client_ip=f"10.0.0.{i}")) for i in range(10)]
    counts = Counter(r.backend.host for r in held)
    # cost * (in_flight + 1): the cheap one takes four for each the dear one takes.
    assert counts == {"cheap.test": 8, "dear.test": 2}
    assert {r.algorithm for r in held} == {COST_AWARE}
    assert lb.algorithm_settings() == (COST_AWARE, {"cost_key": "cost"})
    assert (await lb.get_load_distribution()).algorithm == COST_AWARE


async def test_the_plugin_checks_its_own_config() -> None:
    with pytest.raises(AlgorithmError, match="cost_key"):
        await cost_lb({"algorithm_type": COST_AWARE, "config": {"cost_key": ""}})
    with pytest.raises(AlgorithmError, match="unknown config key"):
        await cost_lb({"algorithm_type": COST_AWARE, "config": {"price": "x"}})


@pytest.fixture
def installed_plugin(tmp_path: Path) -> Iterator[str]:
    """A distribution on sys.path that declares an algorithm in the omnixan_lb.algorithms group,
    as ``pip install`` of a package with that entry point leaves it."""
    name = f"entry_cost_{random.Random().getrandbits(32):x}"  # importlib.metadata caches by path
    package = tmp_path / "omnixan_plugin_pkg"
    package.mkdir()
    # A class of its own: a class is registered under one name (its ``kind``).
    (package / "__init__.py").write_text("from cost_aware import CostAware\n\nclass Plugin(CostAware):\n    pass\n")
    info = tmp_path / "omnixan_plugin_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: omnixan-plugin-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[omnixan_lb.algorithms]\n{name} = omnixan_plugin_pkg:Plugin\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("omnixan_plugin_pkg", None)


async def test_an_entry_point_is_found_by_name_and_loaded_on_first_use(installed_plugin: str) -> None:
    assert "omnixan_plugin_pkg" not in sys.modules
    assert installed_plugin in algorithm_names()
    lb = await cost_lb(installed_plugin)
    assert "omnixan_plugin_pkg" in sys.modules
    held = [await lb.route_request(Request()) for _ in range(5)]
    assert {r.algorithm for r in held} == {installed_plugin}


async def test_a_proxy_config_names_a_plugin(tmp_path: Path) -> None:
    cheap, dear = AioBackend("cheap"), AioBackend("dear")
    async with cheap, dear:
        path = tmp_path / "lb.yaml"
        backends = [
            {"host": HOST, "port": cheap.port, "metadata": {"price": 0.1}},
            {"host": HOST, "port": dear.port, "metadata": {"price": 10.0}},
        ]
        document = {
            "listen": f"{HOST}:0",
            "algorithm": {"algorithm_type": COST_AWARE, "config": {"cost_key": "price"}},
            "health_check": {"enabled": False},
            "backends": backends,
        }
        path.write_text(json.dumps(document))  # JSON is YAML
        config = load_config(path)
        async with start_proxy(config.backends, config=config) as harness:
            client = await harness.client().connect()
            for _ in range(6):
                response = await client.request(get())
                assert response.status == 200
        # One request at a time: the cheap backend (0.1 x 1) beats the dear one (10 x 1) every time.
        assert len(cheap.requests) == 6 and not dear.requests

        document["algorithm"] = {"algorithm_type": COST_AWARE, "config": {"cost_key": 7}}
        path.write_text(json.dumps(document))
        with pytest.raises(ConfigurationError, match=r"algorithm.config: .*cost_key"):
            load_config(path)
        document["algorithm"] = "not_installed_anywhere"
        path.write_text(json.dumps(document))
        with pytest.raises(ConfigurationError, match="unknown algorithm 'not_installed_anywhere'"):
            load_config(path)


def test_the_example_is_the_registered_class() -> None:
    assert CostAware.kind == COST_AWARE and CostAware.pick_cost == "O(n)"
