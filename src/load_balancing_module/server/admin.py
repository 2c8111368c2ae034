"""The admin listener (aiohttp): the runtime API, the dashboard, health and metrics.

Routes (the JSON API's handlers are in :mod:`.admin_api`):

- ``GET /healthz``: 200 when at least one backend is HEALTHY, else 503.
- ``GET /metrics``: Prometheus text format from the module's collector.
- ``GET /openapi.json``: the OpenAPI 3 document of every route (:mod:`.openapi`).
- ``GET /`` and ``GET /dashboard/{file}``: the live dashboard, static files
  shipped in the package (``server/dashboard/``).
- ``/backends``, ``/backends/{backend_id}``, ``/backends/{backend_id}/drain``,
  ``/distribution``, ``/algorithm``, ``/execute``: the runtime API.

Everything but health, metrics, the OpenAPI document and the dashboard's
files needs ``Authorization: Bearer <token>`` when a token is configured
(compared in constant time); without a token the listener must be on a
loopback address (:func:`admin_token`), unless ``admin.allow_unauthenticated``.

No web page may reach the API, whatever the browser it runs in can connect to
(the admin listener is often on the operator's own machine):

- the ``Host`` must be one of the listener's own names (an IP literal,
  ``localhost``, the host of ``admin.listen``, or one of ``admin.allowed_hosts``),
  else 421: a page whose DNS name was rebound to 127.0.0.1 sends its own name;
- a request with an ``Origin`` other than the admin's own is refused (403), but
  for the dashboard page itself;
- POST, PUT and PATCH need ``Content-Type: application/json`` (415), which no
  cross-site form or ``no-cors`` fetch can send without a CORS preflight, and no
  preflight is ever answered with CORS headers.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .._log import log_event
from ..enums import HealthState
from ..exceptions import ConfigurationError
from ..module import LoadBalancingModule
from .admin_api import AdminApi, error_response
from .config import AdminConfig, parse_address
from .openapi import openapi_document

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json", "/"})
DASHBOARD_FILES = {
    "index.html": "text/html",
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
}


MUTATING = frozenset({"POST", "PUT", "PATCH"})


def admin_token(config: AdminConfig) -> str | None:
    """The admin token from the environment; refuse a non-loopback listener without one unless
    ``admin.allow_unauthenticated`` says so (``omnixan-lb check`` and ``serve`` both ask this)."""
    token = os.environ.get(config.token_env) if config.token_env else None
    host, _ = parse_address(config.listen)
    if not token and not _is_loopback(host) and not config.allow_unauthenticated:
        raise ConfigurationError(
            f"admin.listen: {config.listen} is not a loopback address, and no admin token is set "
            f"(set the environment variable named by admin.token_env, {config.token_env or 'unset'}, "
            "or, to run the admin API open on purpose, admin.allow_unauthenticated: true)"
        )
    return token or None


def host_name(host: str) -> str:
    """The name part of a ``Host`` value, lowercased: without the port, IPv6 brackets kept off."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def allowed_host(host: str, listen_host: str, allowed: list[str]) -> bool:
    """Whether ``host`` (a Host header) names this listener; see the module docstring."""
    name = host_name(host)
    if name in ("localhost", listen_host.lower()) or not name:
        return True
    try:
        ipaddress.ip_address(name)
        return True  # a rebinding page cannot make the browser send an IP literal as its Host
    except ValueError:
        pass
    for pattern in allowed:
        pattern = pattern.lower()
        if name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def dashboard_file(name: str) -> bytes:
    """A file of the dashboard, read from the package."""
    return resources.files("load_balancing_module").joinpath("server").joinpath("dashboard").joinpath(name).read_bytes()


class AdminServer:
    def __init__(self, lb: LoadBalancingModule, registry: CollectorRegistry, config: AdminConfig, *,
                 drain_timeout: float = 30.0) -> None:  # fmt: skip
        self.lb = lb
        self.registry = registry
        self.config = config
        self.token = admin_token(config)
        self._token_digest = None if self.token is None else _digest(self.token.encode())
        self._listen_host = parse_address(config.listen)[0]
        if self.token is None and not _is_loopback(self._listen_host):
            log_event(
                "admin_unauthenticated",
                logging.WARNING,
                listen=config.listen,
                reason="allow_unauthenticated and no token: whoever reaches it controls the balancer",
            )
        self.api = AdminApi(lb, drain_timeout=drain_timeout)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._files = {name: dashboard_file(name) for name in DASHBOARD_FILES}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors_as_json, self._same_site, self._authenticate, self._json_only],
                              client_max_size=1024**2)  # fmt: skip
        router = app.router
        router.add_get("/healthz", self.healthz)
        router.add_get("/metrics", self.metrics)
        router.add_get("/openapi.json", self.openapi)
        router.add_get("/", self.dashboard)
        router.add_get("/dashboard/{name}", self.dashboard_asset)
        self.api.add_routes(router)
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

    # -- middlewares -----------------------------------------------------------------

    def _public(self, request: web.Request) -> bool:
        if request.method not in ("GET", "HEAD"):
            return False
        return request.path in PUBLIC_PATHS or request.path.startswith("/dashboard/")

    @web.middleware
    async def _same_site(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Host and Origin: a page of another site, or one rebound to this address, gets nothing."""
        host = request.headers.get("Host", "")
        if not allowed_host(host, self._listen_host, self.config.allowed_hosts):
            return error_response(421, f"Host: {host_name(host)[:100]!r} is not a name of this admin listener "
                                       "(add it to admin.allowed_hosts)", "Host")  # fmt: skip
        origin = request.headers.get("Origin")
        dashboard_page = request.method in ("GET", "HEAD") and request.path == "/"
        if origin is not None and origin.lower() != f"http://{host.lower()}" and not dashboard_page:
            return error_response(403, f"Origin: requests from {origin[:100]!r} are refused "
                                           "(only the admin's own pages may call it)", "Origin")  # fmt: skip
        return await handler(request)

    @web.middleware
    async def _json_only(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A change needs ``Content-Type: application/json``: no cross-site form or ``no-cors`` fetch
        can send that without a CORS preflight, which is never granted."""
        unrouted = request.match_info.http_exception is not None  # 404/405 from the router say more
        if request.method in MUTATING and request.content_type != "application/json" and not unrouted:
            return error_response(415, f"Content-Type: must be application/json, not {request.content_type!r}",
                                  "Content-Type")  # fmt: skip
        return await handler(request)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        expected = self._token_digest
        if expected is None or self._public(request):
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Header values may hold any byte (aiohttp hands them over surrogate-escaped): compare
        # fixed-length digests of the raw bytes, in constant time.
        offered = _digest(given.strip().encode("utf-8", "surrogateescape"))
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered, expected):
            what = "missing" if not given else "wrong"
            response = error_response(401, f"Authorization: a bearer token is required ({what} token)",
                                      "Authorization")  # fmt: skip
            response.headers["WWW-Authenticate"] = 'Bearer realm="omnixan-lb admin"'
            return response
        return await handler(request)

    @web.middleware
    async def _errors_as_json(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp's own errors (unknown path, wrong method, body too large) as JSON, like the API's."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(exc.status, exc.reason, None)
            for name in ("Allow",):
                if name in exc.headers:
                    response.headers[name] = exc.headers[name]
            return response

    # -- public routes ---------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        healthy = sum(1 for b in self.lb.backends.values() if b.health.state is HealthState.HEALTHY)
        status = 200 if healthy else 503
        return web.json_response({"status": "ok" if healthy else "unavailable", "healthy_backends": healthy,
                                  "backends": len(self.lb.backends)}, status=status)  # fmt: skip

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def dashboard(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def dashboard_asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in DASHBOARD_FILES or name == "index.html":
            return error_response(404, f"no dashboard file {name!r}", None)
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        return web.Response(body=self._files[name], content_type=DASHBOARD_FILES[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})  # fmt: skip
