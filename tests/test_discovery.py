"""Service discovery: the watch applying a provider's sets, the file provider, the DNS provider
against a real DNS server on loopback (dnslib), and a proxy pool discovered from a file."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import MakeLB
from load_balancing_module import BackendConfig, FakeClock, LoadBalancingModule, Request
from load_balancing_module.discovery import DiscoveryError, FileProvider, parse_backends
from load_balancing_module.discovery.dns import parse_nameserver


def b(port: int, **fields: Any) -> BackendConfig:
    return BackendConfig(host="127.0.0.1", port=port, **fields)


class Scripted:
    """A provider the test drives: each item put is yielded (a list) or raised (an exception)."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[list[BackendConfig] | Exception] = asyncio.Queue()
        self.calls = 0

    async def watch(self) -> AsyncIterator[list[BackendConfig]]:
        self.calls += 1
        while True:
            item = await self.items.get()
            if isinstance(item, Exception):
                raise item
            yield item


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def ids(lb: LoadBalancingModule) -> set[str]:
    return set(lb.backends) - set(lb.draining)


async def test_watch_adds_drains_and_replaces(make_lb: MakeLB, fake_clock: FakeClock) -> None:
    lb = await make_lb(backends=[b(9000)])  # a static backend: never touched by the watch
    await lb.initialize()
    provider = Scripted()
    watch = lb.watch(provider)
    provider.items.put_nowait([b(9001), b(9002, slow_start_seconds=10)])
    await settle()
    assert ids(lb) == {"127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002"}
    assert lb.backends["127.0.0.1:9002"].effective_weight < 1.0  # joins through slow start
    # 9001 holds a request in flight when it vanishes: it drains, then goes.
    held = await lb.route_request(Request(), prefer="127.0.0.1:9001")
    assert held.backend_id == "127.0.0.1:9001"
    provider.items.put_nowait([b(9002, slow_start_seconds=10, weight=3), b(9003)])
    await settle()
    assert "127.0.0.1:9001" in lb.draining
    assert ids(lb) == {"127.0.0.1:9000", "127.0.0.1:9002", "127.0.0.1:9003"}
    assert lb.backends["127.0.0.1:9002"].config.weight == 3  # changed: replaced under its id
    await lb.complete_request(held, success=True)
    await fake_clock.advance(0.1)
    await settle()
    assert set(lb.backends) == {"127.0.0.1:9000", "127.0.0.1:9002", "127.0.0.1:9003"}
    assert watch.applied == 2 and watch.errors == 0
    await lb.shutdown()
    assert watch.task is None


async def test_failures_keep_the_last_good_set_and_back_off(make_lb: MakeLB, fake_clock: FakeClock) -> None:
    lb = await make_lb()
    await lb.initialize()
    provider = Scripted()
    watch = lb.watch(provider, retry_min=1.0, retry_max=4.0)
    provider.items.put_nowait([b(9001), b(9002)])
    await settle()
    provider.items.put_nowait(DiscoveryError("lookup failed"))
    await settle()
    assert watch.errors == 1 and watch.last_error == "lookup failed"
    assert ids(lb) == {"127.0.0.1:9001", "127.0.0.1:9002"}  # kept
    assert provider.calls == 1
    await fake_clock.advance(0.9)
    assert provider.calls == 1  # still backing off
    await fake_clock.advance(0.2)
    await settle()
    assert provider.calls == 2
    # Backoff doubles: 2 s after the second failure, capped at 4.
    provider.items.put_nowait(RuntimeError("boom"))
    await settle()
    await fake_clock.advance(1.5)
    assert provider.calls == 2
    await fake_clock.advance(0.6)
    await settle()
    assert provider.calls == 3
    # An empty set is refused: it never empties the pool.
    provider.items.put_nowait([])
    await settle()
    assert watch.errors == 3 and ids(lb) == {"127.0.0.1:9001", "127.0.0.1:9002"}
    provider.items.put_nowait([b(9003)])
    await settle()
    assert ids(lb) == {"127.0.0.1:9003"}
    await lb.shutdown()


async def test_a_vanished_backend_that_returns_while_draining_gets_a_new_id(make_lb: MakeLB) -> None:
    lb = await make_lb()
    await lb.initialize()
    provider = Scripted()
    lb.watch(provider)
    provider.items.put_nowait([b(9001), b(9002)])
    await settle()
    held = await lb.route_request(Request(), prefer="127.0.0.1:9001")
    provider.items.put_nowait([b(9002)])
    await settle()
    provider.items.put_nowait([b(9001), b(9002)])
    await settle()
    assert ids(lb) == {"127.0.0.1:9001~2", "127.0.0.1:9002"}
    await lb.complete_request(held, success=True)
    await lb.shutdown()


# -- the file provider ------------------------------------------------------------------


def write(path: Path, text: str) -> None:
    """As a deploy tool should: a temporary file renamed over the watched one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_file_provider_follows_a_real_file(make_lb: MakeLB, fake_clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "backends.yaml"
    write(path, "backends:\n  - {host: 127.0.0.1, port: 9001}\n  - {host: 127.0.0.1, port: 9002, weight: 2}\n")
    lb = await make_lb()
    await lb.initialize()
    watch = lb.watch(FileProvider(path, interval=1.0, clock=fake_clock))
    await settle()
    assert ids(lb) == {"127.0.0.1:9001", "127.0.0.1:9002"}
    write(path, "- {host: 127.0.0.1, port: 9003}\n")
    await fake_clock.advance(1.0)
    await settle()
    assert ids(lb) == {"127.0.0.1:9003"}
    # A bad file is ignored with an error naming it; the last good set stays.
    write(path, "- {host: 127.0.0.1, port: 99999}\n")
    await fake_clock.advance(1.0)
    await settle()
    assert watch.errors == 1 and str(path) in (watch.last_error or "") and "port" in (watch.last_error or "")
    assert ids(lb) == {"127.0.0.1:9003"}
    json_path = tmp_path / "backends.json"
    json_path.write_text(json.dumps([{"host": "127.0.0.1", "port": 9004}]))
    assert FileProvider(json_path).read() == [b(9004)]
    await lb.shutdown()


def test_parse_backends_names_what_is_wrong() -> None:
    assert parse_backends({"backends": [{"host": "127.0.0.1", "port": 1}]}, "x") == [b(1)]
    with pytest.raises(DiscoveryError, match=r"f: expected a list"):
        parse_backends({"servers": []}, "f")
    with pytest.raises(DiscoveryError, match=r"f: backends\[1\]: weight"):
        parse_backends([{"host": "127.0.0.1", "port": 1}, {"host": "127.0.0.1", "port": 2, "weight": 0}], "f")
    with pytest.raises(DiscoveryError, match="cannot read"):
        FileProvider("/nonexistent/backends.yaml").read()


def test_parse_nameserver() -> None:
    assert parse_nameserver("10.0.0.2:5353") == ("10.0.0.2", 5353)
    assert parse_nameserver("10.0.0.2") == ("10.0.0.2", 53)
    assert parse_nameserver("[::1]:53") == ("::1", 53)
    assert parse_nameserver("fd00::2") == ("fd00::2", 53)
    with pytest.raises(ValueError, match=r"nameserver 'dns\.test'"):
        parse_nameserver("dns.test")
