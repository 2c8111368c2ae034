"""The quickstarts in examples/ run as a user runs them and spread their requests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import load_balancing_module

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", ["httpx_quickstart.py", "aiohttp_quickstart.py"])
def test_a_quickstart_spreads_its_requests_over_both_backends(script: str) -> None:
    # The package under test, whichever it is (the source tree or the installed build).
    package_root = str(Path(load_balancing_module.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": package_root}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    counts = re.findall(r"^backend-(\d): (\d+) requests$", done.stdout, re.MULTILINE)
    assert counts == [("1", "10"), ("2", "10")], done.stdout
