"""A lean install: ``pip install omnixan-lb`` brings the library's own needs, the extras the rest.

The library runs with every extra's module refused (tests/lean_smoke.py, in a subprocess); a name
or a command that needs an extra says which one; pyproject.toml declares exactly that split.
``make lean`` (run by .ci/run) runs the same smoke script against a real wheel in a fresh venv.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import load_balancing_module
from load_balancing_module import RedisStore, cli

ROOT = Path(__file__).resolve().parent.parent
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        table: dict[str, Any] = tomllib.load(file)["project"]
    return table


def names(requirements: list[str]) -> set[str]:
    """The distribution names of ``requirements``, without versions, markers or extras."""
    return {re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_the_library_runs_with_every_extra_refused() -> None:
    # The package this suite imports (the installed build or src/), in a fresh interpreter.
    env = {**os.environ, "PYTHONPATH": str(Path(load_balancing_module.__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "lean_smoke.py"), "--refuse"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("lean smoke: ok"), done.stdout


def test_the_core_dependencies_are_the_library_s_only() -> None:
    assert names(project()["dependencies"]) == {"pydantic", "librt"}


def test_the_extras_bring_the_rest() -> None:
    extras = project()["optional-dependencies"]
    assert names(extras["server"]) == {
        "aiohttp",
        "prometheus-client",
        "pyyaml",
        "httptools",
        "uvloop",
        "rich",
        "cryptography",
        "tomli",
        "pydantic-settings",
    }
    assert names(extras["metrics"]) == {"prometheus-client"}
    assert names(extras["redis"]) == {"redis"}
    assert names(extras["httpx"]) == {"httpx"}
    assert names(extras["aiohttp"]) == {"aiohttp"}
    assert names(extras["dns"]) == {"dnspython"}
    assert names(extras["otel"]) == {"opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"}
    assert extras["all"] == ["omnixan-lb[server,redis,metrics,httpx,aiohttp,dns,otel]"]
    # make test, make demo and .ci/run install [dev]: everything, as before the split.
    assert "omnixan-lb[all]" in extras["test"] and "omnixan-lb[all,test]" in extras["dev"]


def test_what_the_commands_check_for_is_in_the_server_extra() -> None:
    modules = {"yaml": "pyyaml", "prometheus_client": "prometheus-client", "pydantic_settings": "pydantic-settings"}
    server = names(project()["optional-dependencies"]["server"])
    for module in (*cli.SERVER_MODULES, *cli.STATUS_MODULES):
        assert modules.get(module, module) in server, module


@pytest.mark.parametrize("command", [["serve", "--config", "lb.yaml"], ["check", "--config", "lb.yaml"], ["demo"]])
def test_a_command_without_the_server_extra_says_which_to_install(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    assert cli.main(command) == 2
    assert capsys.readouterr().err == (
        f"omnixan-lb {command[0]} needs the proxy's dependencies: pip install 'omnixan-lb[server]' (missing: yaml)\n"
    )


def test_status_needs_rich_for_its_table_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "yaml", None)  # not needed by status
    assert cli.main(["status"]) == 2
    assert capsys.readouterr().err == (
        "omnixan-lb status needs the proxy's dependencies: pip install 'omnixan-lb[server]' (missing: rich)\n"
    )
    # --json needs nothing more: it gets as far as the (absent) admin listener.
    assert cli.main(["status", "--json", "--admin", "http://127.0.0.1:9"]) == 1
    assert "needs" not in capsys.readouterr().err


def test_a_redis_store_without_redis_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ModuleNotFoundError, match=re.escape("RedisStore needs redis: pip install 'omnixan-lb[redis]'")):
        RedisStore("redis://127.0.0.1:6379/0")
