"""The proxy: its listeners, its client connections, its lifecycle.

A :class:`ProxyServer` binds every listener of the config (``listeners``, or
``listen``'s one), accepts clients (each a :class:`~.client.ClientConnection`:
on a TLS listener a :class:`~.client.TLSConnection` once its handshake is done,
on a listener that redirects to https a :class:`~.client.RedirectConnection`),
and starts, drains and stops them. What
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
import functools
import logging
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._log import log_event
from .affinity import AffinityCookies, affinity_key
from .client import ClientConnection, RedirectConnection, TLSConnection
from .config import ListenerConfig, ServerConfig, parse_address
from .context import ProxyContext
from .listener import Listener, bind, bound_address
from .preamble import Preamble
from .proxy_protocol import ProxyHeader
from .tls import ServerTLS, expired, load_tls, same_shape

if TYPE_CHECKING:
    from ..module import LoadBalancingModule
    from .context import Connection
    from .routing import RouteTable
    from .tracing import ProxyTracer
    from .upstream import UpstreamPool

access_logger = logging.getLogger("load_balancing_module.access")


class Endpoint:
    """One listener of the config: its sockets, its role, and what each socket accepted on it becomes."""

    def __init__(self, proxy: ProxyServer, config: ListenerConfig, tls: ServerTLS | None) -> None:
        self.proxy = proxy
        self.ctx = proxy.ctx
        self.address = config.address  # the metrics' label: with the port bound, once it is
        self.redirect = config.redirect_https
        self.tls = tls  # swapped by a reload: new connections take the new contexts
        self.https_port = 443  # where redirect_https points: set once every listener is bound
        self.listeners: list[Listener] = []
        self.handshake_failures = 0
        # PROXY protocol: a trusted peer's connection begins with a header naming the client.
        self.proxy_protocol = config.proxy_protocol
        self.proxy_protocol_errors = 0
        self.preambles: set[Preamble] = set()  # headers being read

    @property
    def port(self) -> int:
        return self.listeners[0].port

    def accepted(self, sock: socket.socket) -> None:
        """A client's socket, accepted by a :class:`Listener`: give it a transport and a connection
        (on a PROXY protocol listener, a trusted peer's header is read first)."""
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.proxy_protocol and self._trusted(sock):
            self.preambles.add(Preamble(sock, self.ctx.header_timeout, self._preambled, self._not_preambled))
            return
        # Anyone else's connection is HTTP (or TLS) from its first byte: one that begins with a
        # PROXY header is refused by the HTTP parser (400) or the TLS handshake.
        self._wrap(sock, None)

    def _trusted(self, sock: socket.socket) -> bool:
        try:
            peer = sock.getpeername()
        except OSError:
            return False
        return isinstance(peer, tuple) and self.ctx.trusted.trusts(str(peer[0]))

    def _preambled(self, sock: socket.socket, header: ProxyHeader) -> None:
        self._forget_preamble(sock)
        self._wrap(sock, header.source)  # None for LOCAL: the proxy's own connection, as it is

    def _not_preambled(self, sock: socket.socket, problem: str) -> None:
        self._forget_preamble(sock)
        self.proxy_protocol_errors += 1
        log_event("proxy_protocol_refused", logging.DEBUG, listener=self.address, error=problem)
        sock.close()

    def _forget_preamble(self, sock: socket.socket) -> None:
        for preamble in list(self.preambles):
            if preamble.sock is sock:
                self.preambles.discard(preamble)

    def _wrap(self, sock: socket.socket, source: tuple[str, int] | None) -> None:
        loop = asyncio.get_running_loop()
        tls = self.tls
        if tls is not None:
            # The connection is made once the handshake is done, within the head's time limit.
            factory = self._secure if source is None else functools.partial(self._secure, source)
            wrap = loop.connect_accepted_socket(
                factory, sock=sock, ssl=tls.context, ssl_handshake_timeout=self.ctx.header_timeout
            )
            task = loop.create_task(wrap)
            task.add_done_callback(self._handshaken)
        else:
            factory = self._redirecting if self.redirect else self._plain
            if source is not None:
                factory = functools.partial(factory, source)
            task = loop.create_task(loop.connect_accepted_socket(factory, sock=sock))
            task.add_done_callback(self._wrapped)
        self.proxy.accepting.add(task)

    def _plain(self, source: tuple[str, int] | None = None) -> ClientConnection:
        conn = ClientConnection(self.ctx)
        conn.proxied = source
        return conn

    def _redirecting(self, source: tuple[str, int] | None = None) -> ClientConnection:
        conn = RedirectConnection(self.ctx, self.https_port)
        conn.proxied = source
        return conn

    def _secure(self, source: tuple[str, int] | None = None) -> ClientConnection:
        tls = self.tls
        conn = TLSConnection(self.ctx, tls is not None and tls.client_certs)
        conn.proxied = source
        return conn

    def _wrapped(self, task: asyncio.Task[object]) -> None:
        self.proxy.accepting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log_event("accept_failed", logging.WARNING, error=repr(task.exception()))

    def _handshaken(self, task: asyncio.Task[object]) -> None:
        """A TLS handshake that failed or timed out: the client's doing, counted and logged quietly."""
        self.proxy.accepting.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.handshake_failures += 1
            log_event("tls_handshake_failed", logging.DEBUG, listener=self.address, error=repr(exc))

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        for preamble in list(self.preambles):  # headers not read yet: those connections go
            preamble.cancel()
            preamble.sock.close()
        self.preambles.clear()


def _tracer_of(config: ServerConfig) -> ProxyTracer:
    """The tracer of ``config.tracing``: OpenTelemetry is imported here, and only when it is set."""
    from .tracing import proxy_tracer

    settings = config.tracing
    assert settings is not None
    return proxy_tracer(settings.otlp_endpoint, settings.service_name, settings.sample_ratio)


class ProxyServer:
    """The HTTP/1.1 reverse proxy on the config's listeners, routing through ``lb``."""

    def __init__(
        self,
        lb: LoadBalancingModule,
        config: ServerConfig,
        *,
        access_log: logging.Logger | None = None,
        pools: Mapping[str, LoadBalancingModule] | None = None,
        tracer: ProxyTracer | None = None,
    ) -> None:
        """``lb``: the default pool's module; ``pools``: every pool's module by name (``default``
        included), when the config names pools; ``tracer``: spans of every request (tracing.py)."""
        self.lb = lb
        if tracer is None and config.tracing is not None:
            tracer = _tracer_of(config)
        self.ctx = ProxyContext(lb, config, access_log or access_logger, pools, tracer)
        self.port = 0  # the first listener's
        self.endpoints: list[Endpoint] = []
        self.accepting: set[asyncio.Task[object]] = set()  # accepted sockets being wrapped in transports

    @property
    def config(self) -> ServerConfig:
        return self.ctx.config

    @config.setter
    def config(self, config: ServerConfig) -> None:
        self.configure(config)

    def configure(
        self,
        config: ServerConfig,
        pools: Mapping[str, LoadBalancingModule] | None = None,
        tls: list[ServerTLS | None] | None = None,
    ) -> None:
        """A reloaded config: limits, timeouts, retries, trusted proxies, affinity, the access log
        switch, the routes and the pools (``pools``: their modules) apply to new requests at once;
        ``tls`` (loaded from ``config`` off the event loop) to new connections. The listeners
        themselves (addresses, roles) need a restart."""
        old = self.ctx.config
        self.ctx.configure(config, pools)
        if tls is None or not self.endpoints:
            return
        if not same_shape(old.effective_listeners, config.effective_listeners):
            return  # reload_needs_restart says so
        for endpoint, loaded in zip(self.endpoints, tls, strict=True):
            endpoint.tls = loaded
        self._warn_expired(tls)

    @property
    def ports(self) -> list[int]:
        """Each listener's port, in the config's order (the ports really bound, for 0 in the config)."""
        return [endpoint.port for endpoint in self.endpoints]

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

    async def start(
        self, sockets: list[list[socket.socket]] | None = None, tls: list[ServerTLS | None] | None = None
    ) -> None:
        """Listen on every listener of the config, or accept on ``sockets`` (bound by a supervisor:
        ``sockets[i]`` are listener *i*'s). ``tls``: the listeners' certificates, if loaded already
        (else they are loaded here, in a thread; :class:`ConfigurationError` if one is bad)."""
        if self.ctx.affinity is None:
            self.ctx.affinity = AffinityCookies(await affinity_key(self.config.affinity_secret_env, self.lb.store))
        specs = self.config.effective_listeners
        loaded_tls: list[ServerTLS | None] = [None] * len(specs)
        if tls is not None:
            loaded_tls = tls
        elif any(spec.tls is not None for spec in specs):
            loaded_tls = await asyncio.to_thread(load_tls, self.config)
        endpoints = [Endpoint(self, spec, loaded) for spec, loaded in zip(specs, loaded_tls, strict=True)]
        try:
            for i, endpoint in enumerate(endpoints):
                if sockets is not None:
                    bound = sockets[i]
                else:
                    host, port = parse_address(endpoint.address)
                    bound = await bind(host, port)
                endpoint.listeners = [Listener(sock, endpoint.accepted, self._accept_exhausted) for sock in bound]
        except OSError:
            for endpoint in endpoints:
                endpoint.close()
            raise
        self.endpoints = endpoints
        https = [e.port for e in endpoints if e.tls is not None]
        for endpoint in endpoints:
            if https:
                endpoint.https_port = https[0]
            for listener in endpoint.listeners:
                listener.start()
            host = parse_address(endpoint.address)[0]
            endpoint.address = bound_address(host, endpoint.port)
            scheme = "https" if endpoint.tls is not None else "http"
            log_event("proxy_listening", host=host, port=endpoint.port, scheme=scheme, redirect=endpoint.redirect)
        self.port = endpoints[0].port
        self._warn_expired(loaded_tls)

    def _warn_expired(self, tls: list[ServerTLS | None]) -> None:
        for certificate in expired(tls, self.lb.clock.time()):
            log_event("tls_certificate_expired", logging.WARNING, cert=certificate.cert, names=list(certificate.names))

    def _accept_exhausted(self, exc: OSError) -> None:
        self.ctx.note_exhaustion("accept", exc)

    @property
    def proxy_protocol_errors(self) -> dict[str, int]:
        """PROXY headers refused (malformed, late, missing), by PROXY protocol listener."""
        return {e.address: e.proxy_protocol_errors for e in self.endpoints if e.proxy_protocol}

    @property
    def handshake_failures(self) -> dict[str, int]:
        """TLS handshakes that failed or timed out, by listener address."""
        return {e.address: e.handshake_failures for e in self.endpoints if e.tls is not None}

    def certificates(self) -> list[tuple[str, str, float]]:
        """(listener address, certificate file, notAfter) of the certificates in use."""
        return [
            (e.address, c.cert, c.not_after) for e in self.endpoints if e.tls is not None for c in e.tls.certificates
        ]

    async def stop_accepting(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()

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
        """Close the listeners, every client connection and every upstream connection."""
        await self.stop_accepting()
        for conn in list(self.ctx.connections):
            conn.abort()
        for pool in self.ctx.pools.values():
            pool.upstream.close()
        for task in list(self.accepting):
            task.cancel()
        tracer = self.ctx.tracer
        if tracer is not None:  # the spans still batched go out (a tracer made from the config only)
            await asyncio.to_thread(tracer.shutdown)
