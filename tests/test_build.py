"""Which build runs: ``make test-compiled`` sets OMNIXAN_EXPECT_COMPILED=1, so the second pass
of the suite fails if it is not in fact running the mypyc-compiled modules."""

from __future__ import annotations

import os
import re

import pytest

from load_balancing_module import cli
from load_balancing_module.server import proxy


def test_version_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert re.fullmatch(r"omnixan-lb \d+\.\d+\.\d+ \((pure Python|compiled with mypyc)\)\n", capsys.readouterr().out)


def test_the_expected_build_is_the_one_imported() -> None:
    compiled = not proxy.__file__.endswith(".py")
    assert compiled == (os.environ.get("OMNIXAN_EXPECT_COMPILED") == "1"), proxy.__file__
    assert cli.build_kind() == ("compiled with mypyc" if compiled else "pure Python")
