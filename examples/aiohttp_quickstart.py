"""aiohttp through the balancer: one line changes.

Starts two aiohttp backends on 127.0.0.1, sends 20 requests with a session made by
``load_balanced_session(lb)`` (a ``ClientSession`` with ``LoadBalancedMiddleware``), and prints
which backend answered how many::

    python examples/aiohttp_quickstart.py

Needs ``pip install 'omnixan-lb[aiohttp]'`` (or aiohttp beside the library).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp import web

from load_balancing_module import BackendConfig, LoadBalancingModule, LoadBalancingModuleConfig
from load_balancing_module.integrations.aiohttp import load_balanced_session


async def start_backend(name: str) -> tuple[web.AppRunner, int]:
    """An aiohttp server on a free port that answers every request with its name."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


async def main() -> None:
    backends = [await start_backend(f"backend-{i}") for i in (1, 2)]
    config = LoadBalancingModuleConfig(algorithm="round_robin")
    async with LoadBalancingModule(config) as lb:
        for _, port in backends:
            await lb.add_backend(BackendConfig(host="127.0.0.1", port=port))

        answers: Counter[str] = Counter()
        # The one line: aiohttp.ClientSession() becomes load_balanced_session(lb).
        async with load_balanced_session(lb) as session:
            for _ in range(20):
                async with session.get("http://api.internal/hello") as response:
                    answers[await response.text()] += 1

    for name, count in sorted(answers.items()):
        print(f"{name}: {count} requests")
    for runner, _ in backends:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
