"""The plug-in algorithm of ``examples/cost_aware.py``, registered once for the tests that use it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from load_balancing_module import register_algorithm

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cost_aware.py"
COST_AWARE = "my_company_cost_aware"


def _load() -> type:
    spec = importlib.util.spec_from_file_location("cost_aware", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cost_aware"] = module
    spec.loader.exec_module(module)
    cls: type = module.CostAware
    return cls


CostAware = _load()
register_algorithm(COST_AWARE, CostAware)
