"""GET /metrics on a live server, parsed with prometheus_client's text parser: values move with traffic."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from admin_helpers import Live, SlowBackend, live_server

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(live: Live) -> tuple[Samples, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(live.admin + "/metrics") as response:  # no token
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("omnixan_lb_"), family.name
        types[family.name] = family.type
        for s in family.samples:
            labels = dict(s.labels)
            assert labels.pop("pool", "default") == "default"  # one pool here (tests/test_admin_pools.py: several)
            samples[(s.name, tuple(sorted(labels.items())))] = s.value
    return samples, types


async def test_metrics_follow_conventions_and_move_with_traffic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ["rate_limit: {enabled: true, requests_per_second: 0.001, burst_size: 12}", "retry_backoff_base: 0.001"]
    async with live_server(tmp_path, monkeypatch, [SlowBackend("a"), SlowBackend("b")], extra) as live:
        a, b = (live.backend_id(x) for x in live.backends)
        before, types = await scrape(live)
        assert types["omnixan_lb_requests"] == "counter"
        assert types["omnixan_lb_request_duration_seconds"] == "histogram"
        assert types["omnixan_lb_backend_up"] == types["omnixan_lb_circuit_state"] == "gauge"
        for name in ("rate_limited", "retries", "ddos_blocked", "completed_requests", "routed_requests"):
            assert types[f"omnixan_lb_{name}"] == "counter", name
        assert before[("omnixan_lb_backend_up", (("backend", a),))] == 1
        assert before[("omnixan_lb_circuit_state", (("backend", b),))] == 0
        assert before[("omnixan_lb_rate_limited_total", ())] == 0
        assert not any(name == "omnixan_lb_requests_total" for name, _ in before)

        # Both answer /fail with 503: the proxy retries on the other backend, then passes the 503 on.
        statuses = []
        async with aiohttp.ClientSession() as client:
            for path in ["/"] * 6 + ["/fail"] * 4 + ["/"] * 6:
                async with client.get(live.proxy + path) as response:
                    statuses.append(response.status)
        after, _ = await scrape(live)

        two = [after.get(("omnixan_lb_requests_total", (("backend", x), ("code_class", "2xx"))), 0) for x in (a, b)]
        five = [after.get(("omnixan_lb_requests_total", (("backend", x), ("code_class", "5xx"))), 0) for x in (a, b)]
        limited = after[("omnixan_lb_requests_total", (("backend", "none"), ("code_class", "4xx")))]
        assert statuses.count(429) == limited == after[("omnixan_lb_rate_limited_total", ())] == 4
        assert sum(two) == statuses.count(200) == 8 and sum(five) == statuses.count(503) == 4
        assert after[("omnixan_lb_retries_total", ())] == 4  # each /fail was tried on both backends
        failures = [
            after[("omnixan_lb_completed_requests_total", (("backend", x), ("outcome", "failure")))] for x in (a, b)
        ]
        assert failures == [4, 4]
        for x, n in zip((a, b), two, strict=True):
            labels = (("backend", x), ("code_class", "2xx"))
            assert after[("omnixan_lb_request_duration_seconds_count", labels)] == n
            assert after[("omnixan_lb_request_duration_seconds_bucket", (*labels, ("le", "+Inf")))] == n
            assert 0 < after[("omnixan_lb_request_duration_seconds_sum", labels)] < n * 1.0
            buckets = sorted(
                (float(dict(lbl)["le"]), v)
                for (name, lbl), v in after.items()
                if name == "omnixan_lb_request_duration_seconds_bucket"
                and dict(lbl)["backend"] == x
                and dict(lbl)["code_class"] == "2xx"
            )
            assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
            assert after[("omnixan_lb_routed_requests_total", (("backend", x),))] > 0
            assert after[("omnixan_lb_active_connections", (("backend", x),))] == 0
