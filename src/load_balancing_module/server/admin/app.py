"""The admin listener (aiohttp): the runtime API, the dashboard, health and metrics.

Routes: the table of :mod:`.routes` (handlers in :mod:`.api`), which the
OpenAPI document at ``GET /openapi.json`` is generated from (:mod:`.openapi`).
The dashboard is static files shipped in the package (``server/dashboard/``).

Every request first passes :class:`~.guard.RequestGuard` (Host 421,
Origin 403, Content-Type 415: no web page may drive the API, see that module).
Then everything but health, metrics, the OpenAPI document and the dashboard's
files needs ``Authorization: Bearer <token>`` when a token is configured
(compared in constant time, as digests of the bytes sent); without a token
the listener must be on a loopback address unless ``admin.allow_unauthenticated``
(:func:`admin_token`, the rule ``omnixan-lb check`` applies too).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..._log import log_event
from ...exceptions import ConfigurationError
from ...module import LoadBalancingModule
from ..config import AdminConfig, parse_address
from .api import AdminApi, error_response
from .fleet import Fleet
from .guard import RequestGuard
from .openapi import openapi_document
from .routes import ROUTES
from .topology import Topology

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Larger bodies get 413. Four times the largest real one (a backend whose metadata is 64 KiB of JSON),
# and small enough that the worst body of this size holds the event loop ~20 ms while parsed.
MAX_BODY_BYTES = 256 * 1024
PUBLIC = [route.path for route in ROUTES if route.public]
PUBLIC_PATHS = frozenset(path for path in PUBLIC if "{" not in path)
# A templated public path is public for all below its fixed part: /dashboard/x/y gets the router's 404, not 401.
PUBLIC_PREFIXES = tuple(path.partition("{")[0] for path in PUBLIC if "{" in path)


def admin_token(config: AdminConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The admin token from the environment, after :meth:`AdminConfig.exposure_problem` (raised as a
    :class:`ConfigurationError`): an admin listener off loopback needs one unless opted out."""
    token = config.read_token(os.environ if environ is None else environ)
    problem = config.exposure_problem(token)
    if problem is not None:
        raise ConfigurationError(problem)
    return token


def token_digest(token: str) -> bytes:
    """A fixed-length digest of a token's bytes: header values may hold any byte (aiohttp hands
    them over surrogate-escaped), and ``compare_digest`` wants equal lengths to stay constant-time."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class AdminServer:
    def __init__(
        self,
        lb: LoadBalancingModule,
        registry: CollectorRegistry,
        config: AdminConfig,
        *,
        drain_timeout: float = 30.0,
        fleet: Fleet | None = None,
        topology: Topology | None = None,
    ) -> None:
        """``lb``: the default pool's module; ``topology``: every pool and the routes (without it,
        ``lb`` is the only pool); ``fleet``: the workers, with ``workers: N``."""
        self.lb = lb
        self.registry = registry
        self.config = config
        self.token = admin_token(config)
        if config.open_to_network(self.token):  # only admin.allow_unauthenticated lets it get here
            log_event(
                "admin_unauthenticated",
                logging.WARNING,
                listen=config.listen,
                reason="admin.allow_unauthenticated: whoever reaches it controls the balancer",
            )
        self._token_digest = None if self.token is None else token_digest(self.token)
        self.guard = RequestGuard(config.listen_host, config.allowed_hosts)
        self.api = AdminApi(
            lb, registry, openapi_document(), drain_timeout=drain_timeout, fleet=fleet, topology=topology
        )
        self.port = 0
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        middlewares = [self._errors_as_json, self._guard, self._authenticate]
        app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
        for route in ROUTES:
            handler = partial(route.handler, self.api)
            if route.method == "GET":
                app.router.add_get(route.path, handler)  # and HEAD
            else:
                app.router.add_route(route.method, route.path, handler)
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
        return request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Host, Origin and Content-Type (:mod:`.guard`): before the token, on every route."""
        routed = request.match_info.http_exception is None
        refusal = self.guard.check(request.method, request.path, request.headers, routed=routed)
        if refusal is not None:
            return error_response(refusal.status, refusal.message, refusal.field)
        return await handler(request)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        expected = self._token_digest
        if expected is None or self._public(request):
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        offered = token_digest(given.strip())
        if not hmac.compare_digest(offered, expected) or scheme.lower() != "bearer":
            what = "missing" if not given else "wrong"
            response = error_response(401, f"Authorization: a bearer token is required ({what} token)", "Authorization")
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
