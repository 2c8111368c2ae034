"""The proxy: its listeners, its client connections, its lifecycle.

A :class:`ProxyServer` binds ``config.listen``, accepts clients (each a
:class:`~.client.ClientConnection`), and starts, drains and stops them. What
its connections and their exchanges share (the library module, the upstream
pool, the settings of the current config) is its :class:`~.context.ProxyContext`.
One request through the proxy::

    listener -> ClientConnection (reader: llhttp, limits, smuggling checks)
      -> Exchange: route (lb.route_now / route_request) -> upstream connection (pool or connect)
      -> send head + body -> response head: forward it, or retry elsewhere
      -> stream the body -> lb.complete_now (the backend's own outcome, never the client's)

Bodies are streamed by callbacks, not by tasks: a client body piece goes
straight to the upstream socket, a response piece straight to the client
socket. Flow control pauses the reading side whenever the writing side's
buffer is full, so memory stays bounded whatever the sizes. Up to
:data:`.exchange.RETAIN_LIMIT` bytes of a request body are kept so that a
failed try can be replayed on another backend.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._log import log_event
from .affinity import AffinityCookies, affinity_key
from .client import ClientConnection
from .config import ServerConfig, parse_address
from .context import ProxyContext
from .listener import Listener, bind

if TYPE_CHECKING:
    from ..module import LoadBalancingModule
    from .context import Connection
    from .routing import RouteTable
    from .upstream import UpstreamPool

access_logger = logging.getLogger("load_balancing_module.access")


class ProxyServer:
    """The HTTP/1.1 reverse proxy on ``config.listen``, routing through ``lb``."""

    def __init__(
        self,
        lb: LoadBalancingModule,
        config: ServerConfig,
        *,
        access_log: logging.Logger | None = None,
        pools: Mapping[str, LoadBalancingModule] | None = None,
    ) -> None:
        """``lb``: the default pool's module; ``pools``: every pool's module by name (``default``
        included), when the config names pools."""
        self.lb = lb
        self.ctx = ProxyContext(lb, config, access_log or access_logger, pools)
        self.port = 0
        self._address = parse_address(config.listen)
        self._listeners: list[Listener] = []
        self._accepting: set[asyncio.Task[object]] = set()  # accepted sockets being wrapped in transports

    @property
    def config(self) -> ServerConfig:
        return self.ctx.config

    @config.setter
    def config(self, config: ServerConfig) -> None:
        self.configure(config)

    def configure(self, config: ServerConfig, pools: Mapping[str, LoadBalancingModule] | None = None) -> None:
        """A reloaded config: limits, timeouts, retries, trusted proxies, affinity, the access log
        switch, the routes and the pools (``pools``: their modules) apply to new requests at once.
        ``listen`` needs a restart."""
        self.ctx.configure(config, pools)

    # What the server's owner (app, admin, metrics) reads of the proxy.
    @property
    def pool(self) -> UpstreamPool:
        return self.ctx.pool

    @property
    def connections(self) -> set[Connection]:
        return self.ctx.connections

    @property
    def in_flight(self) -> int:
        return self.ctx.in_flight

    @property
    def exhausted(self) -> dict[str, int]:
        return self.ctx.exhausted

    @property
    def draining(self) -> bool:
        return self.ctx.draining

    @property
    def filter_errors(self) -> dict[str, int]:
        """Route filters that raised, by ``module:function``."""
        return self.ctx.filter_errors

    @property
    def routes(self) -> RouteTable | None:
        """The routes table in force (None: no routes)."""
        return self.ctx.routes

    @property
    def affinity(self) -> AffinityCookies | None:
        return self.ctx.affinity

    @property
    def linger_seconds(self) -> float:
        return self.ctx.linger_seconds

    @linger_seconds.setter
    def linger_seconds(self, seconds: float) -> None:
        self.ctx.linger_seconds = seconds

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen on ``config.listen``, or accept on ``sockets`` (bound by a supervisor)."""
        if self.ctx.affinity is None:
            self.ctx.affinity = AffinityCookies(await affinity_key(self.config.affinity_secret_env, self.lb.store))
        host, port = self._address
        if sockets is None:
            sockets = await bind(host, port)
        self._listeners = [Listener(sock, self._accepted, self._accept_exhausted) for sock in sockets]
        for listener in self._listeners:
            listener.start()
        self.port = self._listeners[0].port
        log_event("proxy_listening", host=host, port=self.port)

    def _accepted(self, sock: socket.socket) -> None:
        """A client's socket, accepted by a :class:`Listener`: give it a transport and a connection."""
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        ctx = self.ctx
        task = loop.create_task(loop.connect_accepted_socket(lambda: ClientConnection(ctx), sock=sock))
        self._accepting.add(task)
        task.add_done_callback(self._wrapped)

    def _wrapped(self, task: asyncio.Task[object]) -> None:
        self._accepting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log_event("accept_failed", logging.WARNING, error=repr(task.exception()))

    def _accept_exhausted(self, exc: OSError) -> None:
        self.ctx.note_exhaustion("accept", exc)

    async def stop_accepting(self) -> None:
        for listener in self._listeners:
            listener.close()

    async def drain(self, timeout: float) -> int:
        """Let requests in flight finish (up to ``timeout`` s) and close idle connections.

        Returns how many requests were still running at the timeout (they are cut off)."""
        ctx = self.ctx
        ctx.draining = True
        for conn in list(ctx.connections):
            conn.drain()
        await ctx.wait_drained(timeout)
        left = ctx.in_flight
        for conn in list(ctx.connections):
            conn.abort()
        log_event("proxy_drained", cut_off=left)
        return left

    async def close(self) -> None:
        """Close the listener, every client connection and every upstream connection."""
        await self.stop_accepting()
        for conn in list(self.ctx.connections):
            conn.abort()
        for pool in self.ctx.pools.values():
            pool.upstream.close()
        for task in list(self._accepting):
            task.cancel()
