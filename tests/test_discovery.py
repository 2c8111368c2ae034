"""Service discovery: the watch applying a provider's sets, the file provider, the DNS provider
against a real DNS server on loopback (dnslib), and a proxy pool discovered from a file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from conftest import MakeLB
from load_balancing_module import BackendConfig, FakeClock, LoadBalancingModule, Request
from load_balancing_module.discovery import DiscoveryError, DnsProvider, FileProvider, parse_backends
from load_balancing_module.discovery.dns import parse_nameserver
from load_balancing_module.server.config import ServerConfig
from load_balancing_module.server.pools import PoolModules
from load_balancing_module.server.proxy import ProxyServer
from proxy_helpers import AioBackend, RawClient, get, server_config


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
    assert lb.counts()["discovery_errors"] == 3
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


# -- the DNS provider, against a real DNS server on loopback ------------------------------


class Zone:
    """A dnslib resolver whose records the test changes: ``records[(name, type)] = (ttl, [rdata])``."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[int, list[Any]]] = {}
        self.queries: list[tuple[str, str]] = []
        self.fail = False  # answer SERVFAIL

    def resolve(self, request: Any, handler: Any) -> Any:
        from dnslib import QTYPE, RCODE, RR

        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        kind = QTYPE[request.q.qtype]
        self.queries.append((name, kind))
        if self.fail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if not any(n == name for n, _ in self.records):
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        ttl, rdatas = self.records.get((name, kind), (0, []))
        for rdata in rdatas:
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=ttl))
        return reply

    def a(self, name: str, ttl: int, *addresses: str) -> None:
        from dnslib import A

        self.records[(name, "A")] = (ttl, [A(a) for a in addresses])

    def srv(self, name: str, ttl: int, *records: tuple[int, int, int, str]) -> None:
        from dnslib import SRV

        self.records[(name, "SRV")] = (
            ttl,
            [SRV(priority=p, weight=w, port=port, target=t) for p, w, port, t in records],
        )


@pytest.fixture
def zone() -> Iterator[tuple[Zone, str]]:
    from dnslib.server import DNSLogger, DNSServer

    resolver = Zone()
    server = DNSServer(
        resolver, address="127.0.0.1", port=0, logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data")
    )
    server.start_thread()
    try:
        yield resolver, f"127.0.0.1:{server.server.server_address[1]}"
    finally:
        server.stop()
        server.server.server_close()


async def wait_for(predicate: Any) -> None:
    """Until ``predicate()`` holds: a DNS answer crosses a real socket (bounded, a few ms each)."""
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met within 2 s")


async def test_dns_a_records_change_and_ttl_is_honoured_within_bounds(
    make_lb: MakeLB, fake_clock: FakeClock, zone: tuple[Zone, str]
) -> None:
    resolver, nameserver = zone
    resolver.a("api.test", 30, "127.0.0.1", "127.0.0.2")
    lb = await make_lb()
    await lb.initialize()
    provider = DnsProvider(
        "api.test", port=8080, nameservers=[nameserver], min_interval=10, max_interval=60, clock=fake_clock
    )
    watch = lb.watch(provider)
    await wait_for(lambda: ids(lb) == {"127.0.0.1:8080", "127.0.0.2:8080"})
    assert provider.last_ttl == 30
    asked = len(resolver.queries)
    resolver.a("api.test", 5, "127.0.0.3")  # a TTL under min_interval: asked again after 10 s, not 5
    await fake_clock.advance(29)
    await asyncio.sleep(0.05)
    assert len(resolver.queries) == asked  # the TTL of 30 s has not run out
    await fake_clock.advance(1)
    await wait_for(lambda: ids(lb) == {"127.0.0.3:8080"})
    asked = len(resolver.queries)
    await fake_clock.advance(9)
    await asyncio.sleep(0.05)
    assert len(resolver.queries) == asked
    resolver.a("api.test", 3600, "127.0.0.4")  # a TTL over max_interval: asked again after 60 s
    await fake_clock.advance(1)
    await wait_for(lambda: ids(lb) == {"127.0.0.4:8080"})
    asked = len(resolver.queries)
    await fake_clock.advance(59)
    await asyncio.sleep(0.05)
    assert len(resolver.queries) == asked
    resolver.a("api.test", 3600, "127.0.0.5")
    await fake_clock.advance(1)
    await wait_for(lambda: ids(lb) == {"127.0.0.5:8080"})
    assert watch.errors == 0
    await lb.shutdown()


async def test_dns_failure_keeps_the_last_good_set(
    make_lb: MakeLB, fake_clock: FakeClock, zone: tuple[Zone, str]
) -> None:
    resolver, nameserver = zone
    resolver.a("api.test", 10, "127.0.0.1")
    lb = await make_lb()
    await lb.initialize()
    provider = DnsProvider(
        "api.test", port=80, nameservers=[nameserver], min_interval=1, max_interval=60, timeout=1, clock=fake_clock
    )
    watch = lb.watch(provider, retry_min=2, retry_max=8)
    await wait_for(lambda: ids(lb) == {"127.0.0.1:80"})
    del resolver.records[("api.test", "A")]  # NXDOMAIN
    await fake_clock.advance(10)
    await wait_for(lambda: watch.errors == 1)
    assert "NXDOMAIN" in (watch.last_error or "") and ids(lb) == {"127.0.0.1:80"}
    resolver.a("api.test", 10, "127.0.0.2")
    resolver.fail = True  # SERVFAIL on the retry, 2 s later
    await fake_clock.advance(2)
    await wait_for(lambda: watch.errors == 2)
    assert ids(lb) == {"127.0.0.1:80"}
    resolver.fail = False
    await fake_clock.advance(4)  # the back-off doubled
    await wait_for(lambda: ids(lb) == {"127.0.0.2:80"})
    await lb.shutdown()


async def test_dns_srv_priorities_and_weights(make_lb: MakeLB, fake_clock: FakeClock, zone: tuple[Zone, str]) -> None:
    resolver, nameserver = zone
    resolver.srv(
        "_http._tcp.api.test", 60, (10, 3, 8001, "a.api.test"), (10, 1, 8002, "b.api.test"), (20, 0, 8003, "c.api.test")
    )
    resolver.a("a.api.test", 60, "127.0.0.1")
    resolver.a("b.api.test", 60, "127.0.0.2")
    resolver.a("c.api.test", 60, "127.0.0.3")
    lb = await make_lb()
    await lb.initialize()
    provider = DnsProvider(
        srv="_http._tcp.api.test", nameservers=[nameserver], backend={"max_connections": 7}, clock=fake_clock
    )
    lb.watch(provider)
    await wait_for(lambda: len(lb.backends) == 3)
    configs = {backend_id: backend.config for backend_id, backend in lb.backends.items()}
    assert configs["127.0.0.1:8001"] == BackendConfig(
        host="127.0.0.1", port=8001, weight=3, priority=-10, max_connections=7
    )
    assert configs["127.0.0.2:8002"].weight == 1 and configs["127.0.0.2:8002"].priority == -10
    assert configs["127.0.0.3:8003"].weight == 0.01 and configs["127.0.0.3:8003"].priority == -20
    # SRV priority 10 is preferred: only its tier is used while it has a candidate.
    picked = set()
    for _ in range(8):
        route = await lb.route_request(Request())
        picked.add(route.backend_id)
        await lb.complete_request(route, success=True)
    assert picked == {"127.0.0.1:8001", "127.0.0.2:8002"}
    # A target that no longer resolves is skipped; the others make the set.
    del resolver.records[("b.api.test", "A")]
    await fake_clock.advance(60)
    await wait_for(lambda: ids(lb) == {"127.0.0.1:8001", "127.0.0.3:8003"})
    await lb.shutdown()


def test_dns_provider_without_its_extra_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dns", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'omnixan-lb\[dns\]'"):
        DnsProvider("api.test", port=80)


def test_dns_provider_refuses_a_wrong_setup() -> None:
    with pytest.raises(ValueError, match="needs a port"):
        DnsProvider("api.test")
    with pytest.raises(ValueError, match="not both"):
        DnsProvider("api.test", port=1, srv="_http._tcp.api.test")
    with pytest.raises(ValueError, match="'weight' comes from DNS"):
        DnsProvider("api.test", port=1, backend={"weight": 2})


# -- the proxy: a pool discovered from a file ---------------------------------------------


@contextlib.asynccontextmanager
async def serving(cfg: ServerConfig, clock: FakeClock) -> AsyncIterator[tuple[ProxyServer, PoolModules]]:
    """The proxy in front of ``cfg``'s pools, made as ``serve`` makes them (discovery included)."""
    pools = PoolModules(cfg, lambda name, module_config: LoadBalancingModule(module_config, clock=clock))
    proxy = ProxyServer(pools.default, cfg, access_log=logging.getLogger("test.discovery.access"), pools=pools.modules)
    await pools.start(cfg)
    await proxy.start()
    try:
        yield proxy, pools
    finally:
        await proxy.close()
        await pools.shutdown()


async def served_by(proxy: ProxyServer, path: str) -> str:
    async with RawClient(proxy.port) as client:
        answer = await client.request(get(path))
    assert answer.status == 200, answer.status
    return str(answer.json()["backend"])


async def test_a_proxy_pool_discovered_from_a_file_follows_it(tmp_path: Path, fake_clock: FakeClock) -> None:
    path = tmp_path / "api.yaml"
    async with AioBackend("one") as one, AioBackend("two") as two, AioBackend("web") as web:
        write(path, f"- {{host: 127.0.0.1, port: {one.port}}}\n")
        cfg = server_config(
            backends=[{"host": "127.0.0.1", "port": web.port}],
            pools={"api": {"discovery": {"file": str(path), "interval": 1}}},
            routes=[{"match": {"path_prefix": "/api/"}, "pool": "api"}],
        )
        async with serving(cfg, fake_clock) as (proxy, pools):
            await settle()
            assert set(pools["api"].backends) == {f"127.0.0.1:{one.port}"}
            assert {await served_by(proxy, "/api/x") for _ in range(3)} == {"one"}
            assert await served_by(proxy, "/") == "web"
            write(path, f"backends:\n  - {{host: 127.0.0.1, port: {two.port}}}\n")
            await fake_clock.advance(1)
            await settle()
            assert {await served_by(proxy, "/api/x") for _ in range(3)} == {"two"}
            await fake_clock.advance(0.1)  # the drain of "one" ends: nothing was in flight
            await settle()
            assert set(pools["api"].backends) == {f"127.0.0.1:{two.port}"}
            # A bad file: logged and counted, the pool keeps serving from its last good set.
            write(path, "backends: [{host: 127.0.0.1}]\n")
            await fake_clock.advance(1)
            await settle()
            assert pools["api"].counts()["discovery_errors"] == 1
            assert await served_by(proxy, "/api/x") == "two"


def test_discovery_config_names_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match=r"discovery\n.*exactly one of file, dns or srv"):
        server_config(discovery={"file": "a.yaml", "dns": "api.test", "port": 1})
    with pytest.raises(ValidationError, match="dns needs a port"):
        server_config(discovery={"dns": "api.test"})
    with pytest.raises(ValidationError, match=r"pools\.api\.discovery\.nameservers"):
        server_config(pools={"api": {"discovery": {"srv": "_http._tcp.api.test", "nameservers": ["dns.test"]}}})
    with pytest.raises(ValidationError, match="weight come from DNS"):
        server_config(discovery={"srv": "_http._tcp.api.test", "backend": {"weight": 3}})
    cfg = server_config(discovery={"srv": "_http._tcp.api.test", "backend": {"max_connections": 5}})
    assert cfg.pool_discovery()["default"] is not None


async def test_a_reload_hands_the_backends_to_the_new_source_or_drains_them(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    write(first, "- {host: 127.0.0.1, port: 9001}\n- {host: 127.0.0.1, port: 9002}\n")
    write(second, "- {host: 127.0.0.1, port: 9002}\n- {host: 127.0.0.1, port: 9003}\n")
    old = server_config(discovery={"file": str(first), "interval": 1})
    pools = PoolModules(old, lambda name, module_config: LoadBalancingModule(module_config, clock=fake_clock))
    await pools.start(old)
    await settle()
    lb = pools.default
    kept = lb.backends["127.0.0.1:9002"]
    new = server_config(discovery={"file": str(second), "interval": 1})
    await pools.apply(old, new)
    await settle()
    assert ids(lb) == {"127.0.0.1:9002", "127.0.0.1:9003"}
    assert lb.backends["127.0.0.1:9002"] is kept  # the same backend, not drained and added again
    await pools.apply(new, new)  # the same discovery: the same watch
    assert pools.watches["default"][1].applied == 1
    await pools.apply(new, server_config())
    await settle()
    assert ids(lb) == set() and "default" not in pools.watches
    await pools.shutdown()
