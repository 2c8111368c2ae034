"""Which build runs: ``make test-compiled`` sets OMNIXAN_EXPECT_COMPILED=1, so the second pass
of the suite fails if it is not in fact running the mypyc-compiled modules. The running build is
visible: ``omnixan-lb --version``, the ``omnixan_lb_build_info`` gauge, the ``server_started`` line."""

from __future__ import annotations

import importlib
import logging
import os
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from load_balancing_module import LoadBalancingModule, __version__, build, cli, register_metrics
from load_balancing_module import algorithms as algorithms_package
from load_balancing_module.server import proxy
from load_balancing_module.server.app import Server
from load_balancing_module.server.config import load_config

EXPECT_COMPILED = os.environ.get("OMNIXAN_EXPECT_COMPILED") == "1"
KIND = "compiled with mypyc" if EXPECT_COMPILED else "pure Python"


def test_version_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert re.fullmatch(r"omnixan-lb \d+\.\d+\.\d+ \((pure Python|compiled with mypyc)\)\n", capsys.readouterr().out)


def test_the_expected_build_is_the_one_imported() -> None:
    compiled = not proxy.__file__.endswith(".py")
    assert compiled == EXPECT_COMPILED, proxy.__file__
    assert compiled == build.COMPILED and build.build_kind() == KIND


def test_the_version_flag_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"omnixan-lb {__version__} ({KIND})\n"


def test_metrics_carry_the_build_info() -> None:
    registry = CollectorRegistry()
    register_metrics(LoadBalancingModule(), registry)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    (sample,) = families["omnixan_lb_build_info"].samples
    assert sample.name == "omnixan_lb_build_info" and sample.value == 1
    assert sample.labels == {"version": __version__, "compiled": "true" if EXPECT_COMPILED else "false"}


async def test_the_startup_line_names_the_build(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(
        'listen: "127.0.0.1:0"\nadmin: {listen: "127.0.0.1:0", token_env: null}\n'
        "health_check: {enabled: false}\nbackends: [{host: 127.0.0.1, port: 9}]\n"
    )
    server = Server(config, load_config(config))
    with caplog.at_level(logging.INFO, logger="load_balancing_module"):
        await server.start()
        await server.shutdown()
    (started,) = [r for r in caplog.records if getattr(r, "event", None) == "server_started"]
    assert started.fields["build"] == KIND  # type: ignore[attr-defined]
    warned = [r for r in caplog.records if getattr(r, "event", None) == "pure_python_build"]
    assert len(warned) == (0 if EXPECT_COMPILED else 1)  # pip hides the build's own warning line


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
