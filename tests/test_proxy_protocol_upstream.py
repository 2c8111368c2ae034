"""PROXY protocol to a pool's backends (``proxy_protocol: v1|v2``): real backends that read the
header with the codec, real requests through the proxy, and the health probes that must send it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from load_balancing_module import HealthState
from load_balancing_module.server.proxy_protocol import ProxyHeader, ProxyHeaderReader, ProxyProtocolError
from proxy_helpers import HOST, RawClient, get, server_config, start_proxy


class ProxiedBackend:
    """An HTTP/1.1 backend that refuses a connection not starting with a PROXY header; answers each
    request with the header's source and destination as JSON."""

    def __init__(self) -> None:
        self.headers: list[ProxyHeader] = []
        self.refused = 0
        self.requests: list[str] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> ProxiedBackend:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = ProxyHeaderReader()
        try:
            found = None
            while found is None:
                data = await reader.read(4096)
                if not data:
                    return
                found = parser.feed(data)
            header, buffered = found
            self.headers.append(header)
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = await reader.read(4096)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                self.requests.append(line)
                body = json.dumps(
                    {
                        "version": header.version,
                        "command": header.command,
                        "source": header.source,
                        "destination": header.destination,
                    }
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
                await writer.drain()
        except ProxyProtocolError:
            self.refused += 1
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def backend() -> AsyncIterator[ProxiedBackend]:
    async with ProxiedBackend() as server:
        yield server


def config(port: int, version: str, **fields: Any) -> Any:
    return server_config(upstream={"proxy_protocol": version}, backends=[{"host": HOST, "port": port}], **fields)


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_each_client_connection_gets_its_own_upstream_connection_and_header(
    backend: ProxiedBackend, version: str
) -> None:
    async with start_proxy([], config=config(backend.port, version)) as proxy:
        await proxy.pools.start(proxy.proxy.config)
        first, second = RawClient(proxy.port), RawClient(proxy.port)
        async with first, second:
            answers = [await first.request(get("/a")), await first.request(get("/b")), await second.request(get("/c"))]
            mine = first.writer.get_extra_info("sockname") if first.writer else None
        seen = [a.json() for a in answers]
        assert all(s["version"] == int(version[1]) and s["command"] == "proxy" for s in seen)
        assert mine is not None and seen[0]["source"] == [HOST, mine[1]]  # the client's own address and port
        assert seen[0]["destination"] == [HOST, proxy.port]  # the address it reached
        assert seen[0] == seen[1] and seen[2]["source"] != seen[0]["source"]
        # keep-alive per client: two requests on one header, the other client on a connection of its own
        assert len(backend.headers) == 2 and backend.requests == [
            "GET /a HTTP/1.1",
            "GET /b HTTP/1.1",
            "GET /c HTTP/1.1",
        ]
        assert backend.refused == 0


async def test_the_pool_option_and_the_probes_speak_it(backend: ProxiedBackend) -> None:
    """A named pool with proxy_protocol: v2; its http probes send a LOCAL header first and pass,
    where the plain library probe would be refused."""
    cfg = server_config(
        health_check={"enabled": False, "type": "http", "path": "/health", "unhealthy_threshold": 1},
        pools={"pp": {"proxy_protocol": "v2", "backends": [{"host": HOST, "port": backend.port}]}},
        routes=[{"match": {"path_prefix": "/pp/"}, "pool": "pp"}],
    )
    async with start_proxy([], config=cfg) as proxy:
        await proxy.pools.start(cfg)
        lb = proxy.pools["pp"]
        backend_id = next(iter(lb.backends))
        assert (await lb.health_check(backend_id)).status is HealthState.HEALTHY
        assert backend.headers[-1].command == "local" and backend.requests[-1] == "GET /health HTTP/1.1"
        async with RawClient(proxy.port) as client:
            answer = await client.request(get("/pp/x"))
        assert answer.status == 200 and answer.json()["command"] == "proxy"
        lb.configure_probe(None)  # the library's own probe, without the header: refused
        assert (await lb.health_check(backend_id)).status is HealthState.UNHEALTHY
        assert backend.refused >= 1


async def test_v1_probes_send_their_own_addresses(backend: ProxiedBackend) -> None:
    cfg = config(backend.port, "v1", health_check={"enabled": False, "type": "tcp"})
    async with start_proxy([], config=cfg) as proxy:
        await proxy.pools.start(cfg)
        backend_id = next(iter(proxy.lb.backends))
        assert (await proxy.lb.health_check(backend_id)).status is HealthState.HEALTHY
        for _ in range(100):  # the probe's connection closes at once: the backend reads its header
            if backend.headers:
                break
            await asyncio.sleep(0.005)
        header = backend.headers[-1]
        assert header.version == 1 and header.source is not None and header.destination == (HOST, backend.port)


async def test_a_reload_that_turns_it_off_retires_the_connections_with_a_header(backend: ProxiedBackend) -> None:
    from load_balancing_module.server.reload import apply_config

    on = config(backend.port, "v2")
    async with start_proxy([], config=on) as proxy:
        await proxy.pools.start(on)
        async with RawClient(proxy.port) as client:
            assert (await client.request(get("/"))).status == 200
        assert proxy.proxy.pool.idle == 1
        off = config(backend.port, "v1")
        await apply_config(proxy.pools, on, off, proxy.proxy.configure)
        assert proxy.proxy.pool.idle == 0  # made with a v2 header: not reused for anything
        async with RawClient(proxy.port) as client:
            assert (await client.request(get("/"))).json()["version"] == 1


async def test_the_client_a_proxy_in_front_named_is_the_one_named_to_the_backend(backend: ProxiedBackend) -> None:
    from load_balancing_module.server.config import ServerConfig
    from load_balancing_module.server.proxy_protocol import encode_v1

    cfg = ServerConfig.model_validate(
        {
            "listeners": [{"address": f"{HOST}:0", "proxy_protocol": True}],
            "trusted_proxies": ["127.0.0.0/8"],
            "health_check": {"enabled": False},
            "upstream": {"proxy_protocol": "v2"},
            "backends": [{"host": HOST, "port": backend.port}],
        }
    )
    async with start_proxy([], config=cfg) as proxy:
        await proxy.pools.start(cfg)
        async with RawClient(proxy.port) as client:
            await client.send(encode_v1(("198.51.100.9", 40000), (HOST, proxy.port)))
            answer = await client.request(get("/"))
        assert answer.json()["source"] == ["198.51.100.9", 40000]
