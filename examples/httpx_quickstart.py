"""httpx through the balancer: one line changes.

Starts two tiny HTTP backends on 127.0.0.1, sends 20 requests with an ``httpx.AsyncClient``
whose transport is ``LoadBalancedTransport(lb)``, and prints which backend answered how many::

    python examples/httpx_quickstart.py

Needs ``pip install 'omnixan-lb[httpx]'`` (or httpx beside the library).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from load_balancing_module import BackendConfig, LoadBalancingModule, LoadBalancingModuleConfig
from load_balancing_module.integrations.httpx import LoadBalancedTransport


async def start_backend(name: str) -> asyncio.Server:
    """A keep-alive HTTP/1.1 server that answers every request with its name."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = name.encode()
        try:
            while await reader.readuntil(b"\r\n\r\n"):  # requests without a body: GETs
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def main() -> None:
    servers = [await start_backend(f"backend-{i}") for i in (1, 2)]
    config = LoadBalancingModuleConfig(algorithm="round_robin")
    async with LoadBalancingModule(config) as lb:
        for server in servers:
            await lb.add_backend(BackendConfig(host="127.0.0.1", port=server.sockets[0].getsockname()[1]))

        # The one line: the client's transport picks a backend for each request.
        async with httpx.AsyncClient(transport=LoadBalancedTransport(lb)) as client:
            answers = Counter([(await client.get("http://api.internal/hello")).text for _ in range(20)])

    for name, count in sorted(answers.items()):
        print(f"{name}: {count} requests")
    for server in servers:
        server.close()
        await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
