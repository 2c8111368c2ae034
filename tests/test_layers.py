"""The library stands apart from its front ends: importing it loads neither the CLI nor the server."""

from __future__ import annotations

import json
import subprocess
import sys


def _modules_after(statement: str) -> list[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(done.stdout))


def test_importing_the_library_loads_no_cli_server_or_rich() -> None:
    loaded = _modules_after("import load_balancing_module")
    assert "load_balancing_module.module" in loaded  # the check sees the package's modules
    fronts = ("load_balancing_module.cli", "load_balancing_module.integrations", "load_balancing_module.server")
    front = [m for m in loaded if m.startswith(fronts)]
    assert front == []
    assert not [m for m in loaded if m == "rich" or m.startswith("rich.")]


def test_the_cli_is_its_own_package() -> None:
    loaded = _modules_after("import load_balancing_module.cli")
    assert "load_balancing_module.cli" in loaded
    assert "load_balancing_module.cli.demo_proxy" not in loaded  # each command loads what it needs when run


def test_the_integrations_package_loads_no_http_client() -> None:
    loaded = _modules_after("import load_balancing_module.integrations")
    assert "load_balancing_module.integrations" in loaded
    assert [m for m in loaded if m.startswith("load_balancing_module.integrations.")] == []
    assert "httpx" not in loaded  # each client's module is imported by the user who has that client
