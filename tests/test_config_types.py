"""The config's types as a type checker sees them: names as Literal strings or enums, the typed
constructors in step with the fields. (tests/test_config_descriptions.py checks the descriptions.)"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path
from typing import get_args

import pytest
from mypy import api as mypy_api
from pydantic import BaseModel

from load_balancing_module import (
    AlgorithmName,
    LoadBalancingAlgorithm,
    LoadBalancingAlgorithmType,
    LoadBalancingModuleConfig,
    Request,
    WorkloadName,
    WorkloadType,
)

SRC = Path(__file__).resolve().parent.parent / "src"


def test_the_literals_name_every_enum_member() -> None:
    assert get_args(AlgorithmName) == tuple(member.value for member in LoadBalancingAlgorithmType)
    assert get_args(WorkloadName) == tuple(member.value for member in WorkloadType)


def test_names_validate_into_enum_members() -> None:
    config = LoadBalancingModuleConfig(algorithm="least_latency")
    assert config.algorithm.algorithm_type is LoadBalancingAlgorithmType.LEAST_LATENCY
    assert LoadBalancingAlgorithm(algorithm_type="ip_hash").algorithm_type is LoadBalancingAlgorithmType.IP_HASH
    assert Request(workload_type="quantum_ml").workload_type is WorkloadType.QUANTUM_ML


@pytest.mark.parametrize("model", [LoadBalancingModuleConfig, LoadBalancingAlgorithm, Request])
def test_the_typed_constructor_lists_every_field(model: type[BaseModel]) -> None:
    """The ``__init__`` written for type checkers (under TYPE_CHECKING) takes exactly the fields."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(model)))
    inits = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "__init__"]
    assert len(inits) == 1
    params = [arg.arg for arg in inits[0].args.kwonlyargs]
    assert params == list(model.model_fields)


CHECKED = """
from load_balancing_module import (
    LoadBalancingAlgorithm, LoadBalancingAlgorithmType, LoadBalancingModuleConfig, Request, WorkloadType,
)

a = LoadBalancingModuleConfig(algorithm="least_latency", request_timeout=2.5)
b = LoadBalancingModuleConfig(algorithm=LoadBalancingAlgorithmType.IP_HASH)
c = LoadBalancingModuleConfig(algorithm=LoadBalancingAlgorithm(algorithm_type="weighted"))
d = Request(client_ip="10.0.0.1", workload_type="quantum_ml")
e = Request(workload_type=WorkloadType.HYBRID)
kind: LoadBalancingAlgorithmType | str = a.algorithm.algorithm_type
"""

REFUSED = """
from load_balancing_module import LoadBalancingModuleConfig, Request

a = LoadBalancingModuleConfig(request_timeout="slow")
b = Request(workload_type="quantum_magic")
"""


def _mypy(tmp_path: Path, source: str) -> tuple[str, int]:
    path = tmp_path / "snippet.py"
    path.write_text(source)
    stdout, stderr, status = mypy_api.run(
        ["--strict", "--no-incremental", "--python-version", "3.10", "--follow-imports", "silent", str(path)]
    )
    return stdout + stderr, status


def test_mypy_strict_accepts_names_and_enums_and_refuses_wrong_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYPYPATH", str(SRC))
    output, status = _mypy(tmp_path, CHECKED)
    assert status == 0, output
    output, status = _mypy(tmp_path, REFUSED)
    assert status == 1
    assert 'Argument "request_timeout" to "LoadBalancingModuleConfig" has incompatible type "str"' in output
    assert 'Argument "workload_type" to "Request" has incompatible type' in output
