"""An admin API that other hosts can reach needs a token: `omnixan-lb check` and `serve` apply one rule
(AdminConfig.exposure_problem), and admin.allow_unauthenticated is the explicit, logged opt-out."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from load_balancing_module import ConfigurationError
from load_balancing_module.cli import main
from load_balancing_module.server.app import Server
from load_balancing_module.server.config import load_config

TOKEN_ENV = "OMNIXAN_LB_TEST_EXPOSURE_TOKEN"
REFUSAL = "admin.listen: 0.0.0.0:9090 is not a loopback address, and no admin token is set"


def config(tmp_path: Path, admin: str) -> Path:
    path = tmp_path / f"lb{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(f"admin: {admin}\nhealth_check: {{enabled: false}}\nbackends: []\n")
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_refuses_an_open_admin_api_off_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = config(tmp_path, f'{{listen: "0.0.0.0:9090", token_env: {TOKEN_ENV}}}')
    code, out, err = check(path, capsys)
    assert code == 2 and out == ""
    assert err.startswith(REFUSAL) and TOKEN_ENV in err and "admin.allow_unauthenticated: true" in err
    assert len(err.splitlines()) == 1

    code, out, err = check(config(tmp_path, '{listen: "0.0.0.0:9090", token_env: null}'), capsys)
    assert code == 2 and err.startswith(REFUSAL) and "admin.token_env (it is null)" in err

    monkeypatch.setenv(TOKEN_ENV, "s3cret")  # the token serve would read
    code, out, err = check(path, capsys)
    assert (code, err) == (0, "") and out.startswith(f"{path}: ok")

    monkeypatch.delenv(TOKEN_ENV)
    for loopback in ("127.0.0.1:9090", "[::1]:9090", "localhost:9090"):
        code, out, err = check(config(tmp_path, f'{{listen: "{loopback}", token_env: {TOKEN_ENV}}}'), capsys)
        assert (code, err) == (0, ""), (loopback, err)


def test_check_accepts_the_opt_out_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = config(tmp_path, f'{{listen: "0.0.0.0:9090", token_env: {TOKEN_ENV}, allow_unauthenticated: true}}')
    code, out, err = check(path, capsys)
    assert code == 0 and out.startswith(f"{path}: ok")
    assert err.startswith("warning: admin.listen: 0.0.0.0:9090 serves the admin API to other hosts without a token")


async def test_serve_refuses_to_start_an_open_admin_api_off_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real command: it exits 2 before it listens anywhere, with the same line as `check`."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = config(tmp_path, f'{{listen: "0.0.0.0:9090", token_env: {TOKEN_ENV}}}')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "load_balancing_module.cli",
        "serve",
        "--config",
        str(path),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2, err
    assert REFUSAL in err.decode() and "config_error" in err.decode()


def test_serve_takes_the_opt_out_and_logs_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Built as `serve` builds it, not started: an open listener on every interface is not for a test run."""
    caplog.set_level(logging.WARNING, logger="load_balancing_module")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    closed = config(tmp_path, f'{{listen: "0.0.0.0:0", token_env: {TOKEN_ENV}}}')
    with pytest.raises(ConfigurationError, match=r"^admin\.listen: 0\.0\.0\.0:0 is not a loopback address"):
        Server(closed, load_config(closed))
    assert not caplog.records
    opted_out = config(tmp_path, f'{{listen: "0.0.0.0:0", token_env: {TOKEN_ENV}, allow_unauthenticated: true}}')
    server = Server(opted_out, load_config(opted_out))
    assert server.admin.token is None
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "admin_unauthenticated"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert warnings[0].fields["listen"] == "0.0.0.0:0"  # type: ignore[attr-defined]

    caplog.clear()
    monkeypatch.setenv(TOKEN_ENV, "s3cret")  # with a token the opt-out changes nothing, and says nothing
    assert Server(opted_out, load_config(opted_out)).admin.token == "s3cret"
    assert not caplog.records
