"""What every client connection and every exchange of a proxy shares, and its one owner.

A :class:`ProxyContext` holds the library module, the upstream pool, the
settings taken from the current config (a reload assigns a new config: the
requests in flight keep the deadlines they started with), the request-id
generator, the access log, the count of exchanges in flight (which ``drain``
waits on) and the count of the proxy's own resource exhaustion. The
:class:`~.proxy.ProxyServer` makes one and hands it to every connection; the
connections and exchanges read it and change it only through its methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Protocol

from .._log import log_event
from .accesslog import AccessLog
from .affinity import AffinityCookies
from .config import ServerConfig
from .http import AFFINITY_COOKIE, RequestInfo, cookie_in
from .logformat import Entry, build
from .outcomes import DEFAULT_FAILURE_STATUSES, RetryOn, status_set
from .route_config import DEFAULT_POOL
from .routing import RouteTable
from .trusted import TrustedProxies
from .upstream import UpstreamPool
from .upstream_tls import UpstreamTLSError

if TYPE_CHECKING:
    from ..module import LoadBalancingModule
    from .tracing import ProxyTracer

# After an answer that closes the connection while the client may still be sending (an error, an
# early answer before its body), read and drop what it sends, so that a close with unread input
# (a reset) cannot destroy the answer before the client has read it: until it has been quiet for
# LINGER_SECONDS (NGINX's lingering_timeout).
LINGER_SECONDS: Final = 1.0


class Connection(Protocol):
    """What the proxy does with a client connection as a whole."""

    def drain(self) -> None: ...
    def abort(self) -> None: ...


class Pool:
    """A pool as the proxy uses it: its library module, its idle upstream connections, and its
    affinity cookie (each pool its own, named ``OMNIXAN_AFFINITY_<pool>``, so that a client that
    uses two pools is bound in each), and what its backends' answers mean (``retry_on``,
    ``failure_statuses``: :meth:`set_outcomes`)."""

    __slots__ = (
        "name",
        "lb",
        "upstream",
        "sticky",
        "affinity",
        "failure_statuses",
        "retry_statuses",
        "retry_connect",
        "retry_empty",
        "retry_junk",
        "request_timeout",
        "max_retries",
    )

    def __init__(self, name: str, lb: LoadBalancingModule, upstream: UpstreamPool) -> None:
        self.name = name
        self.lb = lb
        self.upstream = upstream
        self.sticky = lb.config.session_affinity
        self.affinity: AffinityCookies | None = None
        self.set_outcomes(RetryOn(), status_set(list(DEFAULT_FAILURE_STATUSES)))
        self.request_timeout = lb.config.request_timeout  # the pool's own, or the top level's
        self.max_retries = lb.config.max_retries

    def set_outcomes(self, retry_on: RetryOn, failure_statuses: frozenset[int]) -> None:
        """Take the pool's ``retry_on`` and failure statuses (read per try, so kept as sets and flags)."""
        self.failure_statuses = failure_statuses
        self.retry_statuses = retry_on.status_set()
        self.retry_connect = retry_on.connect_failure
        self.retry_empty = retry_on.empty_response
        self.retry_junk = retry_on.junk_response

    def cookie_name(self) -> bytes:
        return AFFINITY_COOKIE if self.name == DEFAULT_POOL else AFFINITY_COOKIE + b"_" + self.name.encode()

    def binding(self, info: RequestInfo, session: str | None) -> tuple[bool, str | None]:
        """Whether the answer binds the client by cookie, and the backend its cookie names (verified)."""
        affinity = self.affinity
        if not self.sticky or session is not None or affinity is None:
            return False, None
        return True, affinity.backend_of(cookie_in(info.headers, affinity.name))


class ProxyContext:
    """The settings and shared services of one proxy (see the module docstring)."""

    def __init__(
        self,
        lb: LoadBalancingModule,
        config: ServerConfig,
        access_logger: logging.Logger,
        pools: Mapping[str, LoadBalancingModule] | None = None,
        tracer: ProxyTracer | None = None,
    ) -> None:
        self.lb = lb  # the default pool's module
        self.tracer = tracer  # tracing: on, exchanges are TracedExchange (client.py); off, nothing checks more
        self.pool = UpstreamPool()  # the default pool's connections; the write batch every connection shares
        self.default_pool = Pool(DEFAULT_POOL, lb, self.pool)
        self.pools: dict[str, Pool] = {DEFAULT_POOL: self.default_pool}
        self.routes: RouteTable | None = None  # None: no routes, every request goes to the default pool
        self.filter_errors: dict[str, int] = {}  # by filter ("module:function"), for the metrics
        self._access_logger = access_logger
        self.draining = False
        self.connections: set[Connection] = set()  # the open client connections
        self.in_flight = 0  # exchanges begun and not finished, on every connection
        self._drained: asyncio.Future[None] | None = None
        self._rid_prefix = f"{lb.rng.getrandbits(40):010x}-"
        self.rid_line_prefix = b"X-Request-ID: " + self._rid_prefix.encode()
        self._rid_seq = 0
        self._affinity: AffinityCookies | None = None  # made at start (its key may come from the store)
        # The proxy's own host out of descriptors or memory, by where it showed: never a backend's failure.
        self.exhausted = {"accept": 0, "connect": 0}
        self._exhausted_logged_at = -math.inf
        self._tls_failures: dict[str, tuple[float, int]] = {}  # backend id -> (last logged at, failures since)
        self.linger_seconds = LINGER_SECONDS
        self.configure(config, pools)

    def configure(self, config: ServerConfig, pools: Mapping[str, LoadBalancingModule] | None = None) -> None:
        """Take limits, timeouts, retries, what answers mean (``retry_on``, ``failure_statuses``),
        trusted proxies, affinity, the access log switch and the routes from ``config``, and the
        pools' modules from ``pools`` (by name; None: the pools stay as they are). What is in
        flight keeps the deadlines it started with, and its pool."""
        self.config = config
        limits = config.limits
        self.max_header_bytes = limits.max_header_bytes
        self.max_body_bytes = limits.max_body_bytes  # 0: no limit (as NGINX's client_max_body_size 0)
        self.header_timeout = limits.header_timeout
        self.idle_timeout = limits.idle_timeout
        self.connect_timeout = config.upstream.connect_timeout
        self.sticky = self.default_pool.sticky = config.session_affinity
        self.trusted = TrustedProxies(config.trusted_proxies)
        log_format = config.access_log_format  # compiled here, once per config
        self.access = None if log_format is None else AccessLog(self._access_logger, self.lb.clock, build(log_format))
        if pools is not None:
            self._set_pools(config, pools)
        missing = [name for name in config.pools if name not in self.pools]
        if missing:
            raise ValueError(f"no module for the pools {', '.join(missing)}: pass them as pools=")
        tls = config.pool_tls()
        proxy_protocol = config.pool_proxy_protocol()
        outcomes = config.pool_outcomes()
        modules = config.pool_configs()
        for name, pool in self.pools.items():
            pool.set_outcomes(*outcomes[name])
            pool.request_timeout = modules[name].request_timeout
            pool.max_retries = modules[name].max_retries
            pool.upstream.configure_proxy_protocol(proxy_protocol.get(name, 0))
            pool.upstream.idle_timeout = config.upstream.idle_timeout
            pool.upstream.max_idle = config.upstream.max_idle_per_backend
            pool.upstream.configure_tls(tls.get(name))
        # Built at once with the pools it names: a request sees the old table and pools or the new.
        routes = RouteTable(config.routes) if config.routes else None
        if routes is not None and self.routes is not None:
            routes.keep_counts(self.routes)
        self.routes = routes

    @property
    def affinity(self) -> AffinityCookies | None:
        """The affinity cookies of the default pool (made at start: the key may come from the store)."""
        return self._affinity

    @affinity.setter
    def affinity(self, affinity: AffinityCookies | None) -> None:
        self._affinity = affinity
        for pool in self.pools.values():
            self._cookies_for(pool)

    def _cookies_for(self, pool: Pool) -> None:
        affinity = self._affinity
        if affinity is not None and pool is not self.default_pool:
            affinity = affinity.named(pool.cookie_name())
        pool.affinity = affinity

    def _set_pools(self, config: ServerConfig, modules: Mapping[str, LoadBalancingModule]) -> None:
        """The pools of ``config``, each with its module from ``modules``: a pool whose module is
        the same keeps its connections; a pool that went closes its idle ones."""
        pools: dict[str, Pool] = {DEFAULT_POOL: self.default_pool}
        for name in config.pools:
            lb = modules[name]
            known = self.pools.get(name)
            if known is not None and known.lb is lb:
                pools[name] = known
            else:
                upstream = UpstreamPool(batch=self.pool.batch)
                pools[name] = pool = Pool(name, lb, upstream)
                self._cookies_for(pool)
        for name, pool in self.pools.items():
            if pools.get(name) is not pool:
                pool.upstream.retire()
        self.pools = pools

    # -- exchanges in flight ------------------------------------------------------------------

    def exchange_begun(self) -> None:
        self.in_flight += 1

    def exchange_ended(self) -> None:
        """After an exchange ended: wake :meth:`wait_drained` once nothing is left."""
        self.in_flight -= 1
        drained = self._drained
        if self.in_flight == 0 and drained is not None and not drained.done():
            drained.set_result(None)

    async def wait_drained(self, timeout: float) -> None:
        """Until no exchange is in flight, or ``timeout`` seconds."""
        if self.in_flight:
            self._drained = asyncio.get_running_loop().create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)

    # -- request ids ---------------------------------------------------------------------------

    def new_request_id(self) -> str:
        return self.request_id_of(self.next_request_seq())

    def next_request_seq(self) -> int:
        """The sequence number of a new generated request id (formatted only when needed)."""
        self._rid_seq += 1
        return self._rid_seq

    def request_id_of(self, seq: int) -> str:
        return self._rid_prefix + str(seq)  # "<10 hex digits>-<decimal sequence>"

    # -- the proxy's own troubles, the access log -------------------------------------------------

    def note_exhaustion(self, where: str, exc: OSError) -> None:
        """Count the proxy's own resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM); log it at most
        once a second, so that a flood of it does not become a flood of log lines."""
        self.exhausted[where] += 1
        now = self.lb.clock.monotonic()
        if now - self._exhausted_logged_at >= 1.0:
            self._exhausted_logged_at = now
            log_event(
                "proxy_out_of_resources",
                logging.ERROR,
                where=where,
                error=exc.strerror or repr(exc),
                errno=exc.errno,
                count=self.exhausted[where],
            )

    def note_tls_failure(self, backend_id: str, address: str, exc: UpstreamTLSError) -> None:
        """Log a backend's failed TLS handshake as ``upstream_tls_failed``: at most once a second per
        backend (a broken certificate fails every connect until the breaker opens), with the count."""
        now = self.lb.clock.monotonic()
        logged_at, count = self._tls_failures.get(backend_id, (-math.inf, 0))
        count += 1
        if now - logged_at < 1.0:
            self._tls_failures[backend_id] = (logged_at, count)
            return
        self._tls_failures[backend_id] = (now, 0)
        log_event(
            "upstream_tls_failed",
            logging.WARNING,
            backend_id=backend_id,
            backend=address,
            reason=exc.reason,
            error=exc.detail,
            failures=count,
        )

    def log_wanted(self) -> bool:
        """Whether a request's access log entry is wanted (make one only then)."""
        access = self.access
        return access is not None and access.enabled()

    def log(self, entry: Entry) -> None:
        """Write ``entry`` to the access log (the caller asked :meth:`log_wanted` first)."""
        access = self.access
        if access is not None:
            access.emit(entry)
