"""OMNIXAN_LB__... environment variables over the config file (server/env_overrides.py, docs/config.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from load_balancing_module import ConfigurationError
from load_balancing_module.cli import main
from load_balancing_module.server.config import load_config
from load_balancing_module.server.reload import read_config

FILE = """\
listen: 127.0.0.1:8080
backends:
  - {host: 10.0.0.1, port: 80}
admin:
  listen: 127.0.0.1:9090
  allowed_hosts: [lb.example.com]
limits:
  header_timeout: 5
"""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    file = tmp_path / "lb.yaml"
    file.write_text(FILE)
    return file


def problems(path: Path, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        load_config(path, environ)
    return str(caught.value).splitlines()


def test_a_nested_field_overrides_the_file_s_and_keeps_its_neighbours(path: Path) -> None:
    config = load_config(path, {"OMNIXAN_LB__ADMIN__LISTEN": "127.0.0.1:9191", "OMNIXAN_LB__LIMITS__IDLE_TIMEOUT": "7"})
    assert config.admin.listen == "127.0.0.1:9191"
    assert config.admin.allowed_hosts == ["lb.example.com"]  # the file's, beside the variable's
    assert config.limits.idle_timeout == 7.0 and config.limits.header_timeout == 5.0
    assert load_config(path, {}).admin.listen == "127.0.0.1:9090"


def test_names_are_case_insensitive_and_scalars_are_converted(path: Path) -> None:
    config = load_config(
        path,
        {
            "omnixan_lb__admin__listen": "127.0.0.1:9292",
            "OMNIXAN_LB__WORKERS": "3",
            "OMNIXAN_LB__RATE_LIMIT__ENABLED": "true",
            "OMNIXAN_LB__ALGORITHM__ALGORITHM_TYPE": "least_connections",
        },
    )
    assert config.admin.listen == "127.0.0.1:9292"
    assert config.workers == 3
    assert config.rate_limit.enabled is True
    assert config.algorithm.algorithm_type == "least_connections"


def test_a_list_is_json_and_replaces_the_file_s_whole(path: Path) -> None:
    config = load_config(
        path,
        {
            "OMNIXAN_LB__BACKENDS": '[{"host": "10.0.0.7", "port": 8081}, {"host": "10.0.0.8", "port": 8082}]',
            "OMNIXAN_LB__ADMIN__ALLOWED_HOSTS": '["a.example.com", "*.example.org"]',
        },
    )
    assert [(b.host, b.port) for b in config.backends] == [("10.0.0.7", 8081), ("10.0.0.8", 8082)]
    assert config.admin.allowed_hosts == ["a.example.com", "*.example.org"]


def test_a_mapping_as_json_merges_and_short_forms_and_null_are_taken(path: Path) -> None:
    config = load_config(
        path,
        {
            "OMNIXAN_LB__ADMIN": '{"allow_unauthenticated": true}',
            "OMNIXAN_LB__ADMIN__TOKEN_ENV": "null",
            "OMNIXAN_LB__STATE": "redis://127.0.0.1:6379/2",
            "OMNIXAN_LB__UPSTREAM__TLS": "true",
            "OMNIXAN_LB__POOLS__API__BACKENDS": '[{"host": "10.0.1.1", "port": 80}]',
        },
    )
    assert config.admin.allow_unauthenticated and config.admin.listen == "127.0.0.1:9090"
    assert config.admin.token_env is None
    assert config.state.url == "redis://127.0.0.1:6379/2"
    assert config.upstream.tls is not None and config.upstream.tls.verify
    assert [b.host for b in config.pools["api"].backends] == ["10.0.1.1"]


def test_a_bad_value_names_the_field_and_the_variable(path: Path) -> None:
    assert problems(path, {"OMNIXAN_LB__ADMIN__LISTEN": "nowhere"}) == [
        "admin.listen: 'nowhere' is not host:port with a port in 0..65535 (from OMNIXAN_LB__ADMIN__LISTEN)"
    ]
    assert problems(path, {"OMNIXAN_LB__LIMITS__HEADER_TIMEOUT": "-1"}) == [
        "limits.header_timeout: must be > 0 (from OMNIXAN_LB__LIMITS__HEADER_TIMEOUT)"
    ]
    assert problems(path, {"OMNIXAN_LB__BACKENDS": '[{"host": "10.0.0.7", "port": 70000}]'}) == [
        "backends[0].port: must be <= 65535 (from OMNIXAN_LB__BACKENDS)"
    ]
    assert problems(path, {"OMNIXAN_LB__BACKENDS": '[{"host": "10.0.0.7", "port": 80'}) == [
        "backends: not valid JSON: Expecting ',' delimiter at character 33 (from OMNIXAN_LB__BACKENDS)"
    ]


def test_a_file_error_names_no_variable(path: Path) -> None:
    path.write_text(FILE.replace("header_timeout: 5", "header_timeout: 0"))
    assert problems(path, {"OMNIXAN_LB__ADMIN__LISTEN": "127.0.0.1:9191"}) == ["limits.header_timeout: must be > 0"]


def test_an_unknown_variable_is_refused_as_an_unknown_key_is(path: Path) -> None:
    assert problems(path, {"OMNIXAN_LB__NOPE": "1"}) == ["nope: unknown key (from OMNIXAN_LB__NOPE)"]
    # One underscore short: a typo that would otherwise be silently ignored.
    assert problems(path, {"OMNIXAN_LB__ADMIN_LISTEN": "127.0.0.1:1"}) == [
        "admin_listen: unknown key (from OMNIXAN_LB__ADMIN_LISTEN)"
    ]
    assert problems(path, {"OMNIXAN_LB__ADMIN__NOPE": "1"}) == [
        "admin.nope: unknown key (from OMNIXAN_LB__ADMIN__NOPE)"
    ]
    # Other variables, the config file's own OMNIXAN_LB_CONFIG included, are not ours.
    assert load_config(path, {"OMNIXAN_LB_CONFIG": str(path), "OMNIXAN_ADMIN_TOKEN": "x"}).admin.listen


def test_the_file_s_env_expansion_still_works_beside_overrides(path: Path) -> None:
    path.write_text(FILE.replace("10.0.0.1", "'${BACKEND_HOST}'"))
    config = load_config(path, {"BACKEND_HOST": "10.9.9.9", "OMNIXAN_LB__LISTEN": "127.0.0.1:8181"})
    assert config.backends[0].host == "10.9.9.9" and config.listen == "127.0.0.1:8181"


def test_check_reads_the_environment(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNIXAN_LB__BACKENDS", '[{"host": "10.0.0.7", "port": 81}, {"host": "10.0.0.8", "port": 82}]')
    assert main(["check", "--config", str(path)]) == 0
    assert capsys.readouterr().out == (
        f"{path}: ok (2 backends, algorithm round_robin; over it: OMNIXAN_LB__BACKENDS)\n"
    )
    # The exposure rule sees the overridden admin.listen.
    monkeypatch.setenv("OMNIXAN_LB__ADMIN__LISTEN", "0.0.0.0:9090")
    monkeypatch.delenv("OMNIXAN_ADMIN_TOKEN", raising=False)
    assert main(["check", "--config", str(path)]) == 2
    assert "admin.listen: 0.0.0.0:9090 is not a loopback address" in capsys.readouterr().err
    monkeypatch.setenv("OMNIXAN_LB__ADMIN__LISTEN", "bad")
    assert main(["check", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        "admin.listen: 'bad' is not host:port with a port in 0..65535 (from OMNIXAN_LB__ADMIN__LISTEN)\n"
    )


async def test_a_reload_applies_the_variables_again(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP reads the file and this process's environment (the one it started with) again."""
    monkeypatch.setenv("OMNIXAN_LB__LIMITS__IDLE_TIMEOUT", "9")
    path.write_text(FILE.replace("header_timeout: 5", "header_timeout: 6"))
    read = await read_config(path)
    assert read is not None
    config, _ = read
    assert config.limits.header_timeout == 6.0  # the file as it is now
    assert config.limits.idle_timeout == 9.0  # and the variable over it
    monkeypatch.setenv("OMNIXAN_LB__LIMITS__IDLE_TIMEOUT", "0")
    assert await read_config(path) is None  # refused (reload_refused), as a bad file is
