"""Which build runs: ``make test-compiled`` sets OMNIXAN_EXPECT_COMPILED=1, so the second pass
of the suite fails if it is not in fact running the mypyc-compiled modules."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import pytest

from load_balancing_module import algorithms as algorithms_package
from load_balancing_module import cli
from load_balancing_module.server import proxy


def test_version_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert re.fullmatch(r"omnixan-lb \d+\.\d+\.\d+ \((pure Python|compiled with mypyc)\)\n", capsys.readouterr().out)


def test_the_expected_build_is_the_one_imported() -> None:
    compiled = not proxy.__file__.endswith(".py")
    assert compiled == (os.environ.get("OMNIXAN_EXPECT_COMPILED") == "1"), proxy.__file__
    assert cli.build_kind() == ("compiled with mypyc" if compiled else "pure Python")


def test_every_module_of_the_request_path_is_compiled_in_the_compiled_build() -> None:
    """setup.py's list is the request path; a module missing from it would run interpreted."""
    setup_py = (Path(__file__).resolve().parent.parent / "setup.py").read_text(encoding="utf-8")
    listed = re.findall(r'"src/(load_balancing_module/[\w/]+)\.py"', setup_py)
    algorithms = Path(algorithms_package.__file__).parent
    for path in sorted(algorithms.glob("*.py")) + sorted(algorithms.glob("*.so")):
        assert f"load_balancing_module/algorithms/{path.name.split('.')[0]}" in listed, path.name
    if os.environ.get("OMNIXAN_EXPECT_COMPILED") == "1":
        for name in listed:
            module = importlib.import_module(name.replace("/", "."))
            assert not (module.__file__ or "").endswith(".py"), module.__file__
