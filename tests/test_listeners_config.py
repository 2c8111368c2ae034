"""``listeners:`` in the server's config file: the rules of docs/config.md and docs/tls.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from load_balancing_module import ConfigurationError
from load_balancing_module.server.config import ListenerConfig, load_config
from load_balancing_module.server.tls import same_shape

TLS = "tls: {certificates: [{cert: /etc/lb/site.pem, key: /etc/lb/site.key}]}"


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    return load_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, text)
    return str(info.value).splitlines()


def test_the_contract_example_loads(tmp_path: Path) -> None:
    text = """
listeners:
  - address: "0.0.0.0:80"
    redirect_https: true
  - address: "0.0.0.0:443"
    tls:
      certificates:
        - {cert: /etc/lb/site.pem, key: /etc/lb/site.key}
        - {cert: /etc/lb/api.pem, key: /etc/lb/api.key}
      min_version: "1.2"
      client_ca: /etc/lb/clients.pem
"""
    config = load_config(_write(tmp_path, text))
    plain, secure = config.effective_listeners
    assert (plain.address, plain.redirect_https, plain.tls, plain.scheme) == ("0.0.0.0:80", True, None, "http")
    assert secure.tls is not None and secure.scheme == "https"
    assert [c.cert for c in secure.tls.certificates] == ["/etc/lb/site.pem", "/etc/lb/api.pem"]
    assert (secure.tls.min_version, secure.tls.client_ca) == ("1.2", "/etc/lb/clients.pem")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    return path


def test_listen_alone_is_one_plain_listener_and_the_default_too(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, 'listen: "127.0.0.1:8081"\n'))
    assert config.effective_listeners == [ListenerConfig(address="127.0.0.1:8081")]
    default = load_config(_write(tmp_path, "workers: 1\n"))
    assert default.effective_listeners == [ListenerConfig(address="127.0.0.1:8080")]


def test_min_version_unquoted_is_read_as_the_version(tmp_path: Path) -> None:
    text = f'listeners: [{{address: "127.0.0.1:443", {TLS[:-1]}, min_version: 1.3}}}}]\n'
    config = load_config(_write(tmp_path, text))
    assert config.effective_listeners[0].tls is not None
    assert config.effective_listeners[0].tls.min_version == "1.3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'listen: "127.0.0.1:80"\nlisteners: [{address: "127.0.0.1:81"}]\n',
            "(top): listen and listeners are both set",
        ),
        ("listeners: []\n", "listeners: is empty"),
        (
            'listeners: [{address: "127.0.0.1:80"}, {address: "127.0.0.1:81"}, {address: "127.0.0.1:80"}]\n',
            "listeners: entries 0 and 2 have the same address 127.0.0.1:80",
        ),
        (f'listeners: [{{address: "127.0.0.1:443", redirect_https: true, {TLS}}}]\n', "listeners[0]: redirect_https"),
        ('listeners: [{address: "127.0.0.1"}]\n', "listeners[0].address: '127.0.0.1' is not host:port"),
        ('listeners: [{address: "127.0.0.1:80", colour: red}]\n', "listeners[0].colour: unknown key"),
        ('listeners: [{address: "127.0.0.1:443", tls: {certificates: []}}]\n', "listeners[0].tls.certificates:"),
        (
            f'listeners: [{{address: "127.0.0.1:443", {TLS[:-1]}, min_version: "1.1"}}}}]\n',
            "listeners[0].tls.min_version:",
        ),
        (
            'listeners: [{address: "127.0.0.1:443", tls: {certificates: [{cert: a.pem}]}}]\n',
            "listeners[0].tls.certificates[0].key: required",
        ),
    ],
)
def test_listener_rules(tmp_path: Path, text: str, message: str) -> None:
    lines = problems(tmp_path, text)
    assert any(line.startswith(message) for line in lines), lines


def test_two_listeners_on_port_0_are_not_duplicates(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, 'listeners: [{address: "127.0.0.1:0"}, {address: "127.0.0.1:0"}]\n'))
    assert len(config.effective_listeners) == 2


def test_a_reload_may_change_certificates_but_not_addresses_or_roles() -> None:
    tls = {"certificates": [{"cert": "a.pem", "key": "a.key"}]}
    plain = ListenerConfig(address="127.0.0.1:80")
    secure = ListenerConfig.model_validate({"address": "127.0.0.1:443", "tls": tls})
    other_cert = ListenerConfig.model_validate(
        {"address": "127.0.0.1:443", "tls": {"certificates": [{"cert": "b.pem", "key": "b.key"}], "min_version": "1.3"}}
    )
    assert same_shape([plain, secure], [plain, other_cert])
    assert not same_shape([plain, secure], [plain])
    assert not same_shape([plain, secure], [plain, ListenerConfig(address="127.0.0.1:443")])
    assert not same_shape([plain], [ListenerConfig(address="127.0.0.1:80", redirect_https=True)])
