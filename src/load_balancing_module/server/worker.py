"""One worker process of ``serve`` with ``workers: N``: the proxy, on sockets the supervisor bound.

The supervisor (:mod:`.supervisor`) starts it as ``python -m load_balancing_module.server.worker``
with the inherited descriptors of its control channel, its listening sockets (``--listeners
0:7,0:8,1:9``: the index of the config's listener each belongs to, and its descriptor) and, with
the in-memory state, the shared-memory state region. It loads the TLS listeners' certificates
itself (in a thread), at start and on each reload; a reload whose certificates it cannot load
keeps the ones it has, and says so. Over the channel (:mod:`.channel`) it gets, in
its ``start`` ask, the config the supervisor validated, the backends with their ids, their health
and the key that signs affinity cookies; then the changes: health outcomes (the supervisor
probes, once for all workers), backends added, removed or drained and algorithm switches through
the admin API, reloads. It answers ``figures`` with its load distribution and metrics, which the
admin API sums. It has no admin listener of its own and probes nothing.

SIGTERM (from the supervisor): stop accepting, let requests in flight finish (``drain_timeout``),
exit 0. If the supervisor goes away (the channel closes), the worker drains and exits too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from .._log import log_event
from ..build import build_kind
from ..config import BackendConfig, LoadBalancingAlgorithm, LoadBalancingModuleConfig
from ..exceptions import BackendNotFoundError, ConfigurationError
from ..health import HealthStatus
from ..metrics import register_metrics
from ..module import LoadBalancingModule
from ..state.base import StateStore
from .affinity import AffinityCookies
from .channel import Channel
from .config import ServerConfig
from .logs import ACCESS_FLUSH_SECONDS, ACCESS_LOGGER, flush_access_log, flush_access_log_every, setup_logging
from .pools import PoolModules
from .proxy import ProxyServer
from .proxy_metrics import register_proxy_metrics
from .reload import apply_config
from .route_config import DEFAULT_POOL
from .stores import open_store, pool_store
from .tls import ServerTLS, load_tls


def follower_config(config: LoadBalancingModuleConfig) -> LoadBalancingModuleConfig:
    """A pool's ``config`` for a worker's module: the supervisor probes, the workers follow its outcomes."""
    health = config.health_check.model_copy(update={"enabled": False})
    return config.model_copy(update={"health_check": health})


class Worker:
    def __init__(
        self, index: int, config: ServerConfig, sockets: list[list[socket.socket]], store: StateStore | None
    ) -> None:
        self.index = index
        self.config = config
        self.sockets = sockets
        self.store = store if store is not None else open_store(config.state, config.max_sessions)
        self._own_store = store is None and self.store is not None
        self.pools = PoolModules(config, self._make_module)
        self.lb = self.pools.default
        self.registry = CollectorRegistry()
        register_metrics(self.pools.modules, self.registry)  # a pool label on every family
        self.proxy = ProxyServer(self.lb, config, access_log=logging.getLogger(ACCESS_LOGGER), pools=self.pools.modules)
        register_proxy_metrics(self.proxy, self.registry, certificates=False)  # the supervisor's to show
        self.started = asyncio.Event()
        self.stopping = asyncio.Event()
        self.started_at = time.time()

    def _make_module(self, name: str, config: LoadBalancingModuleConfig) -> LoadBalancingModule:
        """A pool's module: the default pool uses the store the workers share (the supervisor's
        shared-memory region, or Redis), every other pool a view of it under its name."""
        store = self.store if name == DEFAULT_POOL else pool_store(self.store, name)
        return LoadBalancingModule(follower_config(config), state_store=store)

    async def start(
        self,
        backends: Mapping[str, Sequence[tuple[str, BackendConfig]]],
        health: Mapping[str, Sequence[HealthStatus]],
    ) -> None:
        await self.pools.start(self.config, backends=False)
        for name, lb in self.pools.items():
            for backend_id, backend in backends.get(name, ()):
                await lb.add_backend(backend, backend_id=backend_id)
            for status in health.get(name, ()):
                await lb.follow_health(status)
        await self.proxy.start(self.sockets, await asyncio.to_thread(load_tls, self.config))
        self.started.set()
        gc.collect()  # as serve does: what lives as long as the process leaves the collector's passes
        gc.freeze()
        log_event("worker_started", worker=self.index, pid=os.getpid(), backends=len(backends), build=build_kind())

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        """One ask or tell of the supervisor (after ``start``, in the order they came)."""
        await self.started.wait()
        if op == "reload":
            # In a thread: validation reads the files the config names (TLS certificates).
            new = await asyncio.to_thread(ServerConfig.model_validate, args["config"])
            tls = await self._load_tls(new)
            self.config = await apply_config(
                self.pools,
                self.config,
                new,
                lambda config, modules: self.proxy.configure(config, modules, tls),
                announce=False,
            )
            return None
        if op == "figures":
            return await self.figures(bool(args.get("metrics")))
        found = self.pools.modules.get(args.get("pool", DEFAULT_POOL))
        if found is None:
            return None  # a pool a reload removed since: nothing to apply it to
        lb = found
        # A change may reach a worker twice (it started while the admin API made it: the start
        # carried it, then the change came too) or name a backend it no longer has: both are no-ops.
        backend_id = args.get("backend_id")
        if op == "health":
            with contextlib.suppress(BackendNotFoundError):
                await lb.follow_health(HealthStatus.model_validate(args["status"]))
        elif op == "add_backend":
            config = BackendConfig.model_validate(args["config"])
            known = lb.backends.get(backend_id) if isinstance(backend_id, str) else None
            if known is None or known.config != config:
                await lb.add_backend(config, backend_id=backend_id)
        elif op == "remove_backend":
            with contextlib.suppress(BackendNotFoundError):
                await lb.remove_backend(args["backend_id"])
        elif op == "drain_backend":
            if backend_id not in lb.backends:
                return None
            result = await lb.drain_backend(args["backend_id"], float(args["timeout"]))
            return result.model_dump(mode="json")
        elif op == "algorithm":
            await lb.configure_algorithm(LoadBalancingAlgorithm.model_validate(args["algorithm"]))
        else:
            raise ValueError(f"unknown op {op!r}")
        return None

    async def _load_tls(self, config: ServerConfig) -> list[ServerTLS | None] | None:
        """``config``'s certificates, loaded in a thread; None (the old ones stay) if one is bad now
        (the supervisor loaded them all before it sent the reload: a file changed since)."""
        try:
            return await asyncio.to_thread(load_tls, config)
        except ConfigurationError as exc:
            log_event("tls_reload_refused", logging.ERROR, worker=self.index, errors=str(exc).splitlines())
            return None

    async def figures(self, metrics: bool) -> dict[str, Any]:
        """What the admin API sums: every pool's distribution (the default's as ``distribution``
        too), the route filters' errors, and the metrics text if asked for."""
        pools = {name: (await lb.get_load_distribution()).model_dump(mode="json") for name, lb in self.pools.items()}
        return {
            "index": self.index,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "in_flight": self.proxy.in_flight,
            "connections": len(self.proxy.connections),
            "distribution": pools[DEFAULT_POOL],
            "pools": pools,
            "filter_errors": dict(self.proxy.filter_errors),
            "metrics": generate_latest(self.registry).decode() if metrics else "",
        }

    async def shutdown(self) -> int:
        await self.proxy.stop_accepting()
        left = await self.proxy.drain(self.config.drain_timeout)
        await self.proxy.close()
        await self.pools.shutdown()
        if self._own_store and self.store is not None:
            await self.store.close()
        log_event("worker_stopped", worker=self.index, unfinished_requests=left)
        return left


async def run(index: int, control: socket.socket, sockets: list[list[socket.socket]], store: StateStore | None) -> int:
    worker: Worker | None = None
    made = asyncio.Event()

    async def handle(op: str, args: dict[str, Any]) -> Any:
        nonlocal worker
        if op != "start":  # a probe's outcome may come while the start is under way
            await made.wait()
            assert worker is not None
            return await worker.handle(op, args)
        if worker is None:
            config = ServerConfig.model_validate(args["config"])
            worker = Worker(index, config, sockets, store)
            made.set()
            worker.proxy.ctx.affinity = AffinityCookies(bytes.fromhex(args["affinity_key"]))
            backends = {
                pool: [(b[0], BackendConfig.model_validate(b[1])) for b in listed]
                for pool, listed in args["backends"].items()
            }
            health = {pool: [HealthStatus.model_validate(h) for h in listed] for pool, listed in args["health"].items()}
            await worker.start(backends, health)
            return {"pid": os.getpid()}
        raise RuntimeError("started already")

    channel = await Channel.open(control, handle)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)  # Ctrl-C reaches the whole group: drain, as told
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor reloads, and tells
    flusher = loop.create_task(flush_access_log_every(ACCESS_FLUSH_SECONDS))
    closed = loop.create_task(channel.closed.wait())
    stopped = loop.create_task(stop.wait())
    await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
    if closed.done() and not stop.is_set():
        log_event("worker_orphaned", logging.WARNING, worker=index, reason="the supervisor went away")
    if worker is not None:
        await worker.shutdown()
    closed.cancel()
    stopped.cancel()
    flusher.cancel()
    flush_access_log()
    await channel.close()
    return 0


def _attach_store(fd: int | None) -> StateStore | None:
    if fd is None:
        return None
    from ..clock import SystemClock
    from ..state.shared import SharedMemoryStore

    return SharedMemoryStore.attach(fd, SystemClock(), purges=False)  # the supervisor sweeps it


def listener_sockets(spec: str) -> list[list[socket.socket]]:
    """``0:7,0:8,1:9`` -> the sockets of listener 0, then of listener 1 (non-blocking)."""
    grouped: dict[int, list[socket.socket]] = {}
    for item in spec.split(","):
        index, _, fd = item.partition(":")
        sock = socket.socket(fileno=int(fd))
        sock.setblocking(False)
        grouped.setdefault(int(index), []).append(sock)
    return [grouped[i] for i in range(len(grouped))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnixan-lb worker", description="a worker of omnixan-lb serve")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--control", type=int, required=True, help="the channel's descriptor")
    parser.add_argument(
        "--listeners",
        required=True,
        help="listening sockets, comma-separated, each as index:descriptor (the index of its listener in the config)",
    )
    parser.add_argument("--state", type=int, default=None, help="the shared-memory state region's descriptor")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    setup_logging(args.log_level, fields={"worker": args.index})
    control = socket.socket(fileno=args.control)
    sockets = listener_sockets(args.listeners)
    store = _attach_store(args.state)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.run(run(args.index, control, sockets, store))
    return uvloop.run(run(args.index, control, sockets, store))


if __name__ == "__main__":
    sys.exit(main())
