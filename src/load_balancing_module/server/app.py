"""``omnixan-lb serve``: the proxy, the admin listener and the module, run together.

Signals: SIGTERM/SIGINT stop accepting, let requests in flight finish (up to
``drain_timeout``) and exit 0; SIGHUP reloads the config file, applying
backend, algorithm, limit, access-log and certificate changes without dropping
connections. A bad file is refused with a logged error and the old config
keeps running.

``state: redis://...`` makes the module keep sessions, token buckets and the
flood-block list in Redis (:class:`~..state.redis.RedisStore`), created here and
closed at shutdown. A reload that changes ``state`` keeps the running store and
logs that a restart is needed: the balancer never switches stores under live
sessions.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from .._log import log_event
from ..build import COMPILED, build_kind
from ..config import LoadBalancingModuleConfig
from ..exceptions import ConfigurationError
from ..metrics import register_metrics
from ..module import LoadBalancingModule
from ..state.redis_targets import redact
from .admin import AdminServer, Topology
from .config import ServerConfig, load_config
from .logs import ACCESS_FLUSH_SECONDS, ACCESS_LOGGER, flush_access_log, flush_access_log_every
from .notify import Notifier
from .pools import PoolModules
from .proxy import ProxyServer
from .proxy_metrics import register_proxy_metrics
from .reload import Reloads, apply_config, handle_signals, read_config
from .route_config import DEFAULT_POOL
from .stores import open_store, pool_store
from .tls import ServerTLS


def announce_start(config: ServerConfig, ports: list[int], admin_port: int, **extra: Any) -> None:
    """The ``server_started`` line (the ports really bound, for 0 in the config), and, as pip hides
    what a build prints, a warning where an operator looks if this build is pure Python."""
    listeners = config.effective_listeners
    log_event(
        "server_started",
        listen=f"{listeners[0].address.rpartition(':')[0]}:{ports[0]}",
        listeners=[
            f"{listener.scheme}://{listener.address.rpartition(':')[0]}:{port}"
            for listener, port in zip(listeners, ports, strict=True)
        ],
        admin=f"{config.admin.listen.rpartition(':')[0]}:{admin_port}",
        backends=len(config.backends),
        algorithm=str(config.algorithm.algorithm_type),
        build=build_kind(),
        **extra,
    )
    config.warn_if_unverified()
    if not COMPILED:
        log_event(
            "pure_python_build",
            logging.WARNING,
            hint="about half the requests per CPU second of the compiled build; reinstall where a C compiler"
            " and the Python headers are present (pip install .)",
        )


class Server:
    def __init__(self, path: str | Path, config: ServerConfig, tls: list[ServerTLS | None] | None = None) -> None:
        self.path = Path(path)
        self.config = config
        self._tls = tls  # the listeners' certificates, if loaded with the config
        self.store = open_store(config.state, config.max_sessions)
        self.pools = PoolModules(config, self._make_module)
        self.lb = self.pools.default
        self.registry = CollectorRegistry()
        register_metrics(self.pools.modules, self.registry)  # a pool label on every family
        self.proxy = ProxyServer(self.lb, config, access_log=logging.getLogger(ACCESS_LOGGER), pools=self.pools.modules)
        register_proxy_metrics(self.proxy, self.registry)
        topology = Topology(self.pools.modules, lambda: self.config, lambda: self.proxy.filter_errors)
        self.admin = AdminServer(
            self.lb, self.registry, config.admin, drain_timeout=config.drain_timeout, topology=topology
        )
        self.stopping = asyncio.Event()
        self._reloads = Reloads(self._reload_once)

    def _make_module(self, name: str, config: LoadBalancingModuleConfig) -> LoadBalancingModule:
        """A pool's module: the default pool uses the server's store (closed at shutdown), every
        other pool a view of it under its name (or, in memory, a store of its module's own)."""
        store = self.store if name == DEFAULT_POOL else pool_store(self.store, name)
        return LoadBalancingModule(config, state_store=store)

    async def start(self) -> None:
        if self.store is not None and await self.store.ping():  # if not, the store has logged it; serve anyway
            log_event("state_store_ready", store="redis", url=redact(self.store.url), prefix=self.store.prefix)
        await self.pools.start(self.config)
        await self.proxy.start(tls=self._tls)
        self._tls = None
        await self.admin.start()
        announce_start(self.config, self.proxy.ports, self.admin.port)

    async def reload(self) -> bool:
        """Re-read the file and apply what can change live; keep the old config if it is bad.

        The file is read, parsed and validated in a thread, so the event loop goes on serving;
        nothing of it applies unless all of it is valid. Reloads never overlap (:class:`Reloads`)."""
        return await self._reloads()

    async def _reload_once(self) -> bool:
        read = await read_config(self.path)
        if read is None:
            return False
        new, tls = read
        self.config = await apply_config(
            self.pools, self.config, new, lambda config, modules: self.proxy.configure(config, modules, tls)
        )
        log_event("reload_applied", path=str(self.path), backends=len(new.backends))
        return True

    async def shutdown(self) -> int:
        await self.proxy.stop_accepting()
        left = await self.proxy.drain(self.config.drain_timeout)
        await self.admin.stop()
        await self.proxy.close()
        await self.pools.shutdown()
        if self.store is not None:  # the module closes only a store it made itself
            await self.store.close()
        log_event("server_stopped", unfinished_requests=left)
        return left


async def serve(path: str | Path, config: ServerConfig | None = None, tls: list[ServerTLS | None] | None = None) -> int:
    """Run until SIGTERM/SIGINT; return the exit code. ``config`` and ``tls`` (its listeners'
    certificates): the file's, if read already."""
    try:
        config = load_config(path) if config is None else config
        server = Server(path, config, tls)
    except ConfigurationError as exc:
        _config_errors(exc)
        return 2
    try:
        await server.start()
    except ConfigurationError as exc:  # a certificate named by the config, loaded at start
        _config_errors(exc)
        await server.shutdown()
        return 2
    except OSError as exc:
        log_event("start_failed", logging.ERROR, error=str(exc))
        await server.shutdown()
        return 1
    notify = Notifier.from_environ()  # systemd's Type=notify (docs/deploy.md)
    handle_signals(server.stopping, notify.around_reload(server.reload))
    flusher = asyncio.get_running_loop().create_task(flush_access_log_every(ACCESS_FLUSH_SECONDS))
    notify.ready(serving(server.proxy.ports))
    watchdog = notify.start_watchdog()
    # Everything built so far lives as long as the process: keep it out of the cyclic garbage
    # collector's passes, which would otherwise walk it again and again under load.
    gc.collect()
    gc.freeze()
    await server.stopping.wait()
    notify.stopping()
    log_event("server_stopping", in_flight=server.proxy.in_flight)
    await server.shutdown()  # the watchdog goes on pinging while requests drain
    flusher.cancel()
    if watchdog is not None:
        watchdog.cancel()
    notify.close()
    flush_access_log()
    return 0


def serving(ports: list[int], workers: int = 1) -> str:
    """The STATUS= line of a server that serves."""
    listening = ", ".join(str(port) for port in ports)
    return f"serving on port {listening}" + (f" with {workers} workers" if workers > 1 else "")


def _config_errors(exc: ConfigurationError) -> None:
    for line in str(exc).splitlines():
        log_event("config_error", logging.ERROR, problem=line)
