"""The server's config file and ``omnixan-lb check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from load_balancing_module import ConfigurationError, LoadBalancingAlgorithmType
from load_balancing_module.cli import main
from load_balancing_module.server.config import load_config, parse_address
from load_balancing_module.state.redis_targets import Nodes, parse_nodes, redact

GOOD = """
listen: "127.0.0.1:8080"
algorithm: least_connections
backends:
  - {host: 127.0.0.1, port: 9001, weight: 2, priority: 10}
  - {host: 127.0.0.1, port: 9002, quantum_capable: true}
admin:
  listen: "127.0.0.1:9090"
  token_env: OMNIXAN_ADMIN_TOKEN
state: memory
trusted_proxies: [10.0.0.0/8]
limits: {max_header_bytes: 16384, max_body_bytes: 10485760, header_timeout: 10, idle_timeout: 60}
request_timeout: ${LB_TIMEOUT}
health_check: {type: http, path: /healthz}
"""


def write(tmp_path: Path, text: str, name: str = "lb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_contract_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), {"LB_TIMEOUT": "7.5"})
    assert config.algorithm.algorithm_type is LoadBalancingAlgorithmType.LEAST_CONNECTIONS
    assert [(b.port, b.weight, b.priority) for b in config.backends] == [(9001, 2.0, 10), (9002, 1.0, 0)]
    assert config.request_timeout == 7.5
    assert config.limits.max_header_bytes == 16384 and config.admin.listen == "127.0.0.1:9090"
    module_config = config.module_config()
    assert module_config.health_check.path == "/healthz" and module_config.request_timeout == 7.5
    assert not hasattr(module_config, "backends")


def test_every_problem_is_reported_with_its_field_path(tmp_path: Path) -> None:
    bad = GOOD.replace("port: 9002", "port: 99999, colour: red").replace("10.0.0.0/8", "nope")
    bad += "max_retries: -1\nalgorithm_typo: 1\n"
    with pytest.raises(ConfigurationError) as info:
        load_config(write(tmp_path, bad), {"LB_TIMEOUT": "1"})
    lines = str(info.value).splitlines()
    assert "backends[1].port: must be <= 65535" in lines
    assert "backends[1].colour: unknown key" in lines
    assert "max_retries: must be >= 0" in lines
    assert "algorithm_typo: unknown key" in lines
    assert any(line.startswith("trusted_proxies: entry 0 ('nope')") for line in lines)
    assert len(lines) == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: localhost\n", "listen: 'localhost' is not host:port"),
        ("state: http://127.0.0.1:6379/0\n", "state: must be 'memory' or a Redis URL"),
        ("state: redis://127.0.0.1:99999/0\n", "state: the Redis URL's port must be a number in 1..65535"),
        ("state: redis://127.0.0.1:6379/zero\n", "state: the Redis database must be a number"),
        ("state: redis:///0\n", "state: the Redis URL has no host"),
        ("state: redis://h/0?db=1\n", "state: the Redis URL takes no query parameters"),
        ("state: {url: redis://h/0, prefix: ''}\n", "state.prefix: String should have at least 1 character"),
        ("state: {url: redis://h/0, timeout: 0}\n", "state.timeout: must be > 0"),
        ("state: {url: rediss://h/0, colour: red}\n", "state.colour: unknown key"),
        ("state: {url: memory, prefix: 'a:'}\n", "state: prefix and timeout apply only to a Redis state store"),
        ("state: [redis://h/0]\n", "state: must be 'memory', a Redis URL (redis://, redis.sentinel://"),
        ("state: redis+sentinel://h:26379\n", "state: the Sentinel URL needs the service name"),
        ("state: redis+sentinel://h:26379/m/x\n", "state: after the service name, only a database number"),
        ("state: 'redis+sentinel://h:26379,:1/m'\n", "state: each node is host:port"),
        ("state: redis+sentinel://h:99999/m\n", "state: the port of node 'h:99999' must be in 1..65535"),
        ("state: redis+cluster://h:7000/0\n", "state: a Redis Cluster URL names nodes only, no database"),
        ("state: redis+cluster://h:7000?x=1\n", "state: the Redis URL takes no query parameters"),
        ("state: {sentinels: ['h:26379']}\n", "state: sentinels and service go together"),
        ("state: {service: m}\n", "state: sentinels and service go together"),
        ("state: {sentinels: ['h:26379'], service: m, cluster: ['h:7000']}\n", "state: give one of url, sentinels"),
        ("state: {url: redis://h/0, cluster: ['h:7000']}\n", "state: give one of url, sentinels and cluster"),
        ("state: {cluster: ['h:7000', 'h:x']}\n", "state: each node is host:port"),
        ("state: {cluster: []}\n", "state.cluster: List should have at least 1 item"),
        ("state: {url: redis://h/0, db: 2}\n", "state: db goes with sentinels"),
        ("state: {url: redis://h/0, password: pw}\n", "state: password goes with sentinels or cluster"),
        ("algorithm: {algorithm_type: ip_hash, config: {balance_factor: 0.5}}\n", "algorithm.config: ip_hash"),
        ("backends: [{host: a.test}]\n", "backends[0].port: required"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("listen: [unclosed\n", "not valid yaml"),
        ("request_timeout: ${NOPE}\n", "request_timeout: environment variable NOPE is not set"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(write(tmp_path, text), {})


def test_state_is_memory_a_redis_url_or_a_mapping(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "listen: 127.0.0.1:0\n"), {}).state.url == "memory"
    short = load_config(write(tmp_path, "state: redis://10.0.0.5:6380/2\n"), {}).state
    assert (short.url, short.prefix, short.timeout, short.shared) == ("redis://10.0.0.5:6380/2", "omnixan:", 0.25, True)
    text = "state: {url: 'rediss://:${PW}@cache.internal/0', prefix: 'shop:', timeout: 0.5}\n"
    full = load_config(write(tmp_path, text), {"PW": "s3cret"}).state
    assert (full.url, full.prefix, full.timeout) == ("rediss://:s3cret@cache.internal/0", "shop:", 0.5)


def test_state_names_sentinels_or_a_cluster(tmp_path: Path) -> None:
    url = "redis+sentinel://s3cret@10.0.0.1:26379,[::1]:26380,sentinel.internal/mymaster/2"
    short = load_config(write(tmp_path, f"state: '{url}'\n"), {}).state
    assert (short.target, short.shared) == (url, True)
    text = "state: {sentinels: ['10.0.0.1:26379', 's2:26379'], service: mymaster, db: 3, password: '${PW}'}\n"
    mapping = load_config(write(tmp_path, text), {"PW": "p@ss/word"}).state
    assert mapping.target == "redis+sentinel://p%40ss%2Fword@10.0.0.1:26379,s2:26379/mymaster/3"
    assert parse_nodes(mapping.target) == Nodes(
        "redis+sentinel", (("10.0.0.1", 26379), ("s2", 26379)), "mymaster", 3, None, "p@ss/word"
    )
    text = "state: {cluster: ['10.0.0.1:7000', '10.0.0.2'], prefix: 'eu:', timeout: 0.5}\n"
    cluster = load_config(write(tmp_path, text), {}).state
    assert (cluster.target, cluster.prefix, cluster.timeout) == ("redis+cluster://10.0.0.1:7000,10.0.0.2", "eu:", 0.5)
    assert parse_nodes(cluster.target).hosts == (("10.0.0.1", 7000), ("10.0.0.2", 6379))
    assert parse_nodes("redis+cluster://u:pw@h:7000") == Nodes("redis+cluster", (("h", 7000),), "", 0, "u", "pw")


def test_multi_node_urls_are_logged_without_the_password(tmp_path: Path) -> None:
    assert redact("redis+sentinel://s3cret@h:26379,h2:26379/m/0") == "redis+sentinel://***@h:26379,h2:26379/m/0"
    assert redact("redis+cluster://user:s3cret@h:7000") == "redis+cluster://user:***@h:7000"
    assert redact("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("redis://user@h:6379/0") == "redis://user@h:6379/0"  # a user name only
    assert redact("redis+cluster://h:7000") == "redis+cluster://h:7000"
    with pytest.raises(ConfigurationError) as info:
        load_config(write(tmp_path, "state: redis+sentinel://s3cret@h:26379/bad name\n"), {})
    assert str(info.value).startswith("state: the Sentinel URL needs the service name")
    assert "s3cret" not in str(info.value)


def test_a_bad_state_is_reported_without_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_config(write(tmp_path, "state: redis://:s3cret@cache:6379/db0\n"), {})
    assert str(info.value).startswith("state: the Redis database must be a number")
    assert "s3cret" not in str(info.value)


def test_toml_and_env_escape(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:${PORT}"\n[admin]\ntoken_env = "$${NOT_EXPANDED}"\n', "lb.toml")
    config = load_config(path, {"PORT": "8181"})
    assert config.listen == "127.0.0.1:8181" and config.admin.token_env == "${NOT_EXPANDED}"


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_address("[::1]:8080") == ("::1", 8080)
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)  # any free port
    for bad in ("80", ":80", "host:65536", "host:http", "host:-1"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LB_TIMEOUT", "3")
    assert main(["check", "--config", str(write(tmp_path, GOOD))]) == 0
    assert "ok (2 backends, algorithm least_connections)" in capsys.readouterr().out
    bad = write(tmp_path, "backends: [{host: a.test, port: 0}, {host: b.test, port: 1, weight: 0}]\n", "bad.yaml")
    assert main(["check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["backends[0].port: must be >= 1", "backends[1].weight: must be > 0"]
    bad_state = write(tmp_path, "state: {url: redis://cache:6379/0, prefix: 'a:', database: 2}\n", "state.yaml")
    assert main(["check", "--config", str(bad_state)]) == 2
    assert capsys.readouterr().err.splitlines() == ["state.database: unknown key"]
    monkeypatch.setenv("OMNIXAN_LB_CONFIG", str(bad))
    assert main(["check"]) == 2
    assert main(["check", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "257", "-1", "true", "two", "1.5"])
def test_workers_is_a_count_or_auto(tmp_path: Path, value: str) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(f"workers: {value}\n")
    with pytest.raises(ConfigurationError, match=r"workers: must be a number of processes in 1\.\.256, or auto"):
        load_config(path)


def test_workers_auto_is_the_cpus_this_process_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text("workers: auto\n")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 3, 5})
    assert load_config(path).worker_count == 3
    path.write_text("workers: 4\n")
    assert load_config(path).worker_count == 4
    path.write_text("listen: 127.0.0.1:8080\n")
    assert load_config(path).worker_count == 1
