"""contrib/: the Grafana dashboard and the Prometheus alert rules name only metrics the proxy exposes.

A whole server is started (a plain and a TLS listener, a Redis state store that is down, so that
the TLS and state-store families are there too), one request goes through, and its admin
``/metrics`` is scraped. Every ``omnixan_lb_...`` name in the dashboard's and the rules'
expressions must be a family there (``_bucket``, ``_sum`` and ``_count`` of a histogram,
``_total`` of a counter). With ``promtool`` installed (Debian: prometheus), the rules are checked
and unit-tested by it, and the dashboard's expressions are checked as PromQL.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from prometheus_client.parser import text_string_to_metric_families

from admin_helpers import HOST, SlowBackend
from load_balancing_module.server.app import Server
from load_balancing_module.server.config import load_config
from servers import closed_port

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "contrib" / "grafana" / "omnixan-lb.json"
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "contrib" / "prometheus" / "alerts_test.yml"
NAME = re.compile(r"\bomnixan_lb_[a-zA-Z0-9_]*")
PROMTOOL = shutil.which("promtool")


def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text())
    assert isinstance(document, dict)
    return document


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in document["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_queries(document: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' and its variables' queries."""
    queries = [target["expr"] for panel in panels(document) for target in panel.get("targets", [])]
    for variable in document["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            queries.append(query["query"])
    return queries


def names(expressions: list[str]) -> set[str]:
    return {name for expression in expressions for name in NAME.findall(expression)}


def exposed(text: str) -> set[str]:
    """The names a query may use for the families of an exposition (empty families included)."""
    known = set()
    for family in text_string_to_metric_families(text):
        known.add(family.name)
        known.update(sample.name for sample in family.samples)
        if family.type == "counter":
            known.add(family.name + "_total")
        elif family.type == "histogram":
            known.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return known


@pytest.fixture
async def metrics_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("OMNIXAN_ADMIN_TOKEN", raising=False)
    leaf = trustme.CA().issue_cert("localhost")
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    backend = await SlowBackend("a").start()
    path = tmp_path / "lb.yaml"
    path.write_text(
        f"""\
listeners:
  - {{address: "{HOST}:0"}}
  - {{address: "{HOST}:0", tls: {{certificates: [{{cert: "{cert}", key: "{key}"}}]}}}}
admin: {{listen: "{HOST}:0"}}
health_check: {{enabled: false}}
access_log: false
state: {{url: "redis://{HOST}:{closed_port()}/0", timeout: 0.05}}
backends: [{{host: {HOST}, port: {backend.port}}}]
"""
    )
    server = Server(path, load_config(path, {}))
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{HOST}:{server.proxy.port}/") as response:
                assert response.status == 200  # the request histogram and counter get samples
            async with session.get(f"http://{HOST}:{server.admin.port}/metrics") as response:
                assert response.status == 200
                return await response.text()
    finally:
        await server.shutdown()
        await backend.stop()


def test_the_files_parse_and_hold_what_they_should() -> None:
    document = dashboard()
    assert document["uid"] == "omnixan-lb" and document["title"]
    ids = [panel["id"] for panel in panels(document)]
    assert len(ids) == len(set(ids))
    for panel in panels(document):
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    used = names(dashboard_queries(document))
    for wanted in (
        "omnixan_lb_requests_total",  # request rate by status class
        "omnixan_lb_request_duration_seconds_bucket",  # p50 / p99
        "omnixan_lb_backend_up",
        "omnixan_lb_circuit_state",
        "omnixan_lb_retries_total",
        "omnixan_lb_rate_limited_total",
        "omnixan_lb_active_connections",  # in flight
        "omnixan_lb_tls_certificate_expiry_seconds",
    ):
        assert wanted in used, wanted

    alerts = {rule["alert"]: rule for rule in rules()}
    assert set(alerts) == {
        "OmnixanLBBackendDown",
        "OmnixanLBCircuitOpen",
        "OmnixanLBHigh5xxRatio",
        "OmnixanLBCertificateExpiringSoon",
        "OmnixanLBStateStoreDown",
        "OmnixanLBNoHealthyBackend",
    }
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule["for"], name
    assert "14 * 86400" in alerts["OmnixanLBCertificateExpiringSoon"]["expr"]


async def test_every_metric_the_dashboard_and_the_rules_use_is_exposed(metrics_text: str) -> None:
    known = exposed(metrics_text)
    dashboard_names = names(dashboard_queries(dashboard()))
    rule_names = names([rule["expr"] for rule in rules()])
    assert dashboard_names and rule_names
    assert dashboard_names - known == set()
    assert rule_names - known == set()
    # The test's own check: a name the proxy does not expose is caught.
    assert names(["rate(omnixan_lb_requests_total[5m]) + omnixan_lb_no_such_family"]) - known == {
        "omnixan_lb_no_such_family"
    }


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    assert PROMTOOL is not None
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERTS_TEST)]):
        done = subprocess.run([PROMTOOL, *command], capture_output=True, text=True, timeout=60, cwd=ALERTS.parent)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_parses_the_dashboard_queries(tmp_path: Path) -> None:
    """Each query as a recording rule, Grafana's variables replaced by what they stand for."""
    assert PROMTOOL is not None
    substitutions = {"$__rate_interval": "5m", "$instance": ".*", "$pool": ".*"}
    records = []
    for i, query in enumerate(dashboard_queries(dashboard())):
        if query.startswith("label_values("):
            query = query.removeprefix("label_values(").rpartition(",")[0]  # its series selector
        for variable, value in substitutions.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        records.append({"record": f"dashboard:query_{i}", "expr": query})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
