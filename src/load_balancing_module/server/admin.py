"""The admin listener (aiohttp): health and metrics now; the full API later.

``GET /healthz``: 200 when at least one backend is HEALTHY, else 503.
``GET /metrics``: Prometheus text format from the module's collector.
"""

from __future__ import annotations

import ipaddress
import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..enums import HealthState
from ..exceptions import ConfigurationError
from ..module import LoadBalancingModule
from .config import AdminConfig, parse_address


def admin_token(config: AdminConfig) -> str | None:
    """The admin token from the environment; refuse a non-loopback listener without one."""
    token = os.environ.get(config.token_env) if config.token_env else None
    host, _ = parse_address(config.listen)
    if not token and not _is_loopback(host):
        raise ConfigurationError(
            f"admin.listen: {config.listen} is not a loopback address, and no admin token is set "
            f"(set the environment variable named by admin.token_env, {config.token_env or 'unset'})"
        )
    return token or None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminServer:
    def __init__(self, lb: LoadBalancingModule, registry: CollectorRegistry, config: AdminConfig) -> None:
        self.lb = lb
        self.registry = registry
        self.config = config
        self.token = admin_token(config)
        self.port = 0
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self) -> None:
        host, port = parse_address(self.config.listen)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or ()  # the real port when 0 was asked for
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def healthz(self, request: web.Request) -> web.Response:
        healthy = sum(1 for b in self.lb.backends.values() if b.health.state is HealthState.HEALTHY)
        status = 200 if healthy else 503
        return web.json_response({"status": "ok" if healthy else "unavailable", "healthy_backends": healthy,
                                  "backends": len(self.lb.backends)}, status=status)  # fmt: skip

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
