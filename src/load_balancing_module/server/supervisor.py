"""``serve`` with ``workers: N``: a small supervisor over N worker processes.

The supervisor binds each of the proxy's listeners N times with SO_REUSEPORT (the kernel spreads
new connections over the N sockets) and gives socket set *i* of every listener to worker *i*,
keeping every set open itself: when a worker dies, the connections waiting in its sockets'
queues wait for its replacement instead of being refused. It restarts a worker that exits (after 0.1 s, doubling up
to 10 s while replacements keep dying within 10 s of their start), forwards SIGHUP as a reload of
the config it validated once, and on SIGTERM or SIGINT tells every worker to drain, then exits 0
once all have exited 0.

It runs the one module that probes the backends (workers follow its outcomes, see
:mod:`.worker`), and the admin listener over that module: the backend list it holds is the one a
new worker starts with, and every change through the admin API reaches every worker
(:mod:`.admin.fleet`). With ``state: memory`` the workers share sticky sessions, token buckets and
flood blocks through a shared-memory region the supervisor creates (:mod:`..state.shared`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .._log import log_event
from ..config import BackendConfig, LoadBalancingModuleConfig
from ..exceptions import ConfigurationError
from ..health import HealthStatus
from ..models import DrainResult
from ..module import LoadBalancingModule
from ..state.base import StateStore
from ..state.redis_targets import redact
from .admin import AdminServer, Topology
from .affinity import affinity_key
from .app import announce_start, serving
from .app import serve as serve_one
from .channel import Channel, ChannelClosed, RemoteError
from .config import ServerConfig, parse_address
from .listener import bind, bound_address
from .notify import Notifier
from .pools import PoolModules
from .reload import Reloads, apply_config, handle_signals, load_all, read_config
from .route_config import DEFAULT_POOL
from .stores import open_store, pool_store
from .tls import ServerTLS, expiries, same_shape

RESTART_FIRST: Final = 0.1  # seconds before a dead worker's replacement starts
RESTART_MAX: Final = 10.0
STEADY: Final = 10.0  # a worker that lived this long resets the restart delay
START_TIMEOUT: Final = 60.0  # for a worker's start: interpreter, imports, backends
ASK_TIMEOUT: Final = 10.0


@dataclass
class Slot:
    """Worker *i*: its sockets (kept across restarts; ``sockets[j]`` are listener *j*'s), its
    process and channel, its history."""

    index: int
    sockets: list[list[socket.socket]]
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    live: bool = False  # started and answering
    started_at: float = 0.0  # wall clock
    restarts: int = 0
    delay: float = RESTART_FIRST
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


class Supervisor:
    def __init__(
        self, path: str | Path, config: ServerConfig, log_level: str, tls: list[ServerTLS | None] | None = None
    ) -> None:
        self.path = Path(path)
        self.config = config
        self._tls = tls
        # (listener, certificate file, notAfter) of the certificates the workers load, for the metric
        self.certificates: list[tuple[str, str, float]] = []
        self.addresses: list[str] = []  # each listener's host:port, with the port bound
        self.log_level = log_level
        self.count = config.worker_count
        self.store, self._region = _open_shared_store(config)
        # The supervisor's modules, one per pool: they probe, hold the backend lists and serve the admin API.
        self.pools = PoolModules(config, self._make_module, lambda name, lb: FleetPool(self, name, lb))
        self.lb = self.pools.default
        self.admin = AdminServer(
            self.lb,
            CollectorRegistry(),
            config.admin,
            drain_timeout=config.drain_timeout,
            fleet=self,
            topology=Topology(self.pools.modules, lambda: self.config),
        )
        self.slots: list[Slot] = []
        self.stopping = asyncio.Event()
        self.reload = Reloads(self._reload_once)
        self._reloading = asyncio.Lock()
        self._affinity_key = b""

    def _make_module(self, name: str, config: LoadBalancingModuleConfig) -> LoadBalancingModule:
        store = self.store if name == DEFAULT_POOL else pool_store(self.store, name)
        lb = LoadBalancingModule(config, state_store=store)
        lb.watch_probes(functools.partial(self._tell_health, name))
        return lb

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self.store is not None and self.config.state.shared and await _ping(self.store):
            log_event("state_store_ready", store="redis", url=redact(self.config.state.target))
        await self.pools.start(self.config)
        self._affinity_key = await affinity_key(self.config.affinity_secret_env, self.lb.store)
        addresses = [parse_address(listener.address) for listener in self.config.effective_listeners]
        for index in range(self.count):
            sets = []
            for j, (host, port) in enumerate(addresses):
                sockets = await bind(host, port, reuse_port=True)
                addresses[j] = (host, sockets[0].getsockname()[1])  # port 0: the other workers take the first one's
                sets.append(sockets)
            self.slots.append(Slot(index, sets))
        started = await asyncio.gather(*(self._start(slot) for slot in self.slots), return_exceptions=True)
        failed = [repr(outcome) for outcome in started if isinstance(outcome, BaseException)]
        if failed:
            raise RuntimeError(f"workers failed to start: {'; '.join(failed)}")
        for slot in self.slots:
            self._watch(slot)
        await self.admin.start()
        ports = [port for _, port in addresses]
        self.addresses = [bound_address(host, port) for host, port in addresses]
        if self._tls is not None:
            self.certificates = expiries(self.addresses, self._tls)
            self._tls = None
        announce_start(self.config, ports, self.admin.port, workers=self.count, pids=[slot.pid for slot in self.slots])

    @property
    def port(self) -> int:
        port: int = self.slots[0].sockets[0][0].getsockname()[1]
        return port

    async def _start(self, slot: Slot) -> None:
        """Start worker ``slot.index`` and wait until it serves."""
        parent, child = socket.socketpair()
        fds = [child.fileno(), *(sock.fileno() for sockets in slot.sockets for sock in sockets)]
        argv = [
            sys.executable,
            "-m",
            "load_balancing_module.server.worker",
            "--index",
            str(slot.index),
            "--control",
            str(child.fileno()),
            "--listeners",
            ",".join(f"{j}:{sock.fileno()}" for j, sockets in enumerate(slot.sockets) for sock in sockets),
            "--log-level",
            self.log_level,
        ]
        if self._region is not None:
            fds.append(self._region)
            argv += ["--state", str(self._region)]
        try:
            slot.process = await asyncio.create_subprocess_exec(*argv, pass_fds=fds)
        finally:
            child.close()
        slot.started_at = time.time()
        slot.channel = await Channel.open(parent, self._from_worker)
        # What the worker starts with is read now, in one go, and never in the middle of a reload:
        # every change after this goes to it over the channel, which it applies once started.
        async with self._reloading:
            backends = {
                name: [(b.id, b.config.model_dump(mode="json")) for b in lb.backends.values()]
                for name, lb in self.pools.items()
            }
            health = {
                name: [b.health.last.model_dump(mode="json") for b in lb.backends.values()]
                for name, lb in self.pools.items()
            }
            start = {
                "config": _dump(self.config),
                "backends": backends,
                "health": health,
                "affinity_key": self._affinity_key.hex(),
            }
            answer = asyncio.ensure_future(slot.channel.call("start", start, START_TIMEOUT))
            await asyncio.sleep(0)  # the ask is written before a reload can follow it
        try:
            await answer
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                slot.process.kill()
            raise
        slot.live = True

    def _watch(self, slot: Slot) -> None:
        task = asyncio.get_running_loop().create_task(self._watch_loop(slot), name=f"omnixan-lb-worker-{slot.index}")
        slot.tasks.add(task)
        task.add_done_callback(slot.tasks.discard)

    async def _watch_loop(self, slot: Slot) -> None:
        """Wait for the worker to exit; unless stopping, start a replacement (with back-off)."""
        while True:
            assert slot.process is not None
            code = await slot.process.wait()
            slot.live = False
            if slot.channel is not None:
                await slot.channel.close()
            if self.stopping.is_set():
                return
            lived = time.time() - slot.started_at
            # The first death, or one after a steady run: 0.1 s; one soon after a restart: twice the last.
            steady = lived >= STEADY or slot.restarts == 0
            slot.delay = RESTART_FIRST if steady else min(slot.delay * 2, RESTART_MAX)
            log_event(
                "worker_exited",
                logging.ERROR,
                worker=slot.index,
                pid=slot.pid,
                code=code if code >= 0 else None,
                signal=signal.Signals(-code).name if code < 0 else None,
                lived_seconds=round(lived, 3),
                restart_in=slot.delay,
            )
            while not self.stopping.is_set():
                await asyncio.sleep(slot.delay)
                if self.stopping.is_set():
                    return
                slot.restarts += 1
                try:
                    await self._start(slot)
                except Exception as exc:
                    slot.delay = min(slot.delay * 2, RESTART_MAX)
                    log_event("worker_start_failed", logging.ERROR, worker=slot.index, error=repr(exc))
                    if slot.process is not None and slot.process.returncode is None:
                        await slot.process.wait()
                    continue
                log_event("worker_restarted", worker=slot.index, pid=slot.pid, restarts=slot.restarts)
                break

    async def _from_worker(self, op: str, args: dict[str, Any]) -> Any:
        raise ValueError(f"the supervisor takes no {op!r} from a worker")

    async def shutdown(self) -> int:
        """Every worker drains and exits; 0 if all exited 0."""
        self.stopping.set()
        await self.admin.stop()
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(self._reap(slot) for slot in self.slots))
        for slot in self.slots:
            for task in list(slot.tasks):
                task.cancel()
            for sockets in slot.sockets:
                for sock in sockets:
                    sock.close()
        await self.pools.shutdown()
        if self.store is not None:  # the shared-memory store closes its region's descriptor too
            await self.store.close()
        failed = [slot.index for slot, code in zip(self.slots, codes, strict=True) if code != 0]
        log_event("server_stopped", workers=len(self.slots), failed_workers=failed)
        return 1 if failed else 0

    async def _reap(self, slot: Slot) -> int:
        process = slot.process
        if process is None:
            return 0
        try:
            return await asyncio.wait_for(process.wait(), self.config.drain_timeout + 5.0)
        except asyncio.TimeoutError:
            log_event("worker_killed", logging.ERROR, worker=slot.index, pid=process.pid, reason="drain overran")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()

    # -- reload ---------------------------------------------------------------------

    async def _reload_once(self) -> bool:
        read = await read_config(self.path)  # the certificates too: a bad one refuses the reload here
        if read is None:
            return False
        new, tls = read
        async with self._reloading:  # no worker starts from half of it
            old = self.config
            self.config = await apply_config(self.pools, self.config, new)
            if same_shape(old.effective_listeners, new.effective_listeners):
                self.certificates = expiries(self.addresses, tls)
            await self._each("reload", {"config": _dump(self.config)})
        log_event("reload_applied", path=str(self.path), backends=len(new.backends), workers=self.live_count)
        return True

    # -- what the workers are told ------------------------------------------------------

    @property
    def live_count(self) -> int:
        return sum(1 for slot in self.slots if slot.live)

    def _tell_health(self, pool: str, status: HealthStatus) -> None:
        """A probe's outcome in ``pool``, to every worker (each applies it as if it had probed)."""
        message = {"pool": pool, "status": status.model_dump(mode="json")}
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.tell("health", message)

    async def _each(
        self, op: str, args: dict[str, Any], wait: float = ASK_TIMEOUT, *, change: bool = True
    ) -> list[Any]:
        """Ask the workers; the answers of those that gave one. A change goes to every worker that
        has started or is starting (one starting applies it once started); a read only to those
        serving.

        A worker that fails a change the supervisor's own module took has fallen out of step, and
        one serving that does not apply it within ``wait`` is stuck: it is stopped, and its
        replacement starts with the current state. A worker that went away meanwhile is skipped;
        its replacement, too, starts with the current state. A read that fails skips the worker."""
        slots = [
            slot
            for slot in self.slots
            if slot.channel is not None and not slot.channel.closed.is_set() and (change or slot.live)
        ]
        answers = await asyncio.gather(
            *(slot.channel.call(op, args, wait) for slot in slots if slot.channel is not None),
            return_exceptions=True,
        )
        results = []
        for slot, answer in zip(slots, answers, strict=True):
            if isinstance(answer, (ChannelClosed, asyncio.CancelledError)):
                continue
            if isinstance(answer, (RemoteError, asyncio.TimeoutError)):
                stuck = isinstance(answer, RemoteError) or slot.live
                log_event("worker_out_of_step", logging.ERROR, worker=slot.index, op=op, error=repr(answer))
                if change and stuck and slot.process is not None and slot.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        slot.process.kill()
                continue
            if isinstance(answer, BaseException):
                raise answer
            results.append(answer)
        return results

    # -- the Fleet of the admin API --------------------------------------------------------

    async def add_backend(self, backend_id: str, config: BackendConfig, pool: str = DEFAULT_POOL) -> None:
        args = {"backend_id": backend_id, "config": config.model_dump(mode="json"), "pool": pool}
        await self._each("add_backend", args)

    async def remove_backend(self, backend_id: str, pool: str = DEFAULT_POOL) -> None:
        await self._each("remove_backend", {"backend_id": backend_id, "pool": pool})

    async def drain_backend(self, backend_id: str, timeout: float, pool: str = DEFAULT_POOL) -> list[DrainResult]:
        args = {"backend_id": backend_id, "timeout": timeout, "pool": pool}
        answers = await self._each("drain_backend", args, timeout + ASK_TIMEOUT)
        return [DrainResult.model_validate(answer) for answer in answers if answer is not None]

    async def configure_algorithm(self, algorithm: dict[str, Any], pool: str = DEFAULT_POOL) -> None:
        await self._each("algorithm", {"algorithm": algorithm, "pool": pool})

    async def figures(self, metrics: bool = False) -> list[dict[str, Any]]:
        answers = await self._each("figures", {"metrics": metrics}, change=False)
        return [answer for answer in answers if isinstance(answer, dict)]

    def workers(self, figures: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        by_index = {int(f["index"]): f for f in figures}
        rows = []
        for slot in self.slots:
            seen = by_index.get(slot.index)
            distribution = seen["distribution"] if seen else {}
            pools = seen.get("pools", {}) if seen else {}  # its traffic: every pool's
            rows.append(
                {
                    "index": slot.index,
                    "pid": slot.pid,
                    "up": seen is not None,
                    "restarts": slot.restarts,
                    "started_at": slot.started_at,
                    "total_requests": sum(int(d.get("total_requests", 0)) for d in pools.values()),
                    "requests_per_second": sum(float(d.get("requests_per_second") or 0.0) for d in pools.values()),
                    "in_flight": int(seen["in_flight"]) if seen else 0,
                    "connections": int(seen["connections"]) if seen else 0,
                    "algorithm": distribution.get("algorithm"),
                }
            )
        return rows

    def summed_metrics(self) -> str:
        """Discovery errors (discovery runs here, not in the workers), to add to the workers' zeros."""
        family = CounterMetricFamily(
            "omnixan_lb_discovery_errors",
            "Discovery lookups that failed or gave an empty set (the last good set of backends stayed).",
            labels=["pool"],
        )
        for name, lb in self.pools.items():
            family.add_metric([name], lb.counts()["discovery_errors"])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families([family]))
        return generate_latest(registry).decode()

    def own_metrics(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        live = GaugeMetricFamily("omnixan_lb_workers", "Worker processes serving, by state.", labels=["state"])
        live.add_metric(["up"], self.live_count)
        live.add_metric(["restarting"], len(self.slots) - self.live_count)
        restarts = CounterMetricFamily(
            "omnixan_lb_worker_restarts",
            "Workers started again after one exited.",
            value=sum(s.restarts for s in self.slots),
        )
        expiry = GaugeMetricFamily(
            "omnixan_lb_tls_certificate_expiry_seconds",
            "When each certificate of a TLS listener expires (its notAfter, unix time).",
            labels=["listener", "cert"],
        )
        for listener, cert, not_after in self.certificates:
            expiry.add_metric([listener, cert], not_after)
        registry.register(_Families([live, restarts, expiry]))
        return generate_latest(registry)


class FleetPool:
    """A pool's discovery in the supervisor: each change made on its module, then on every worker."""

    def __init__(self, supervisor: Supervisor, name: str, lb: LoadBalancingModule) -> None:
        self.supervisor = supervisor
        self.name = name
        self.lb = lb

    @property
    def backends(self) -> Mapping[str, Any]:
        return self.lb.backends

    @property
    def draining(self) -> Set[str]:
        return self.lb.draining

    async def add_backend(self, backend: BackendConfig, *, backend_id: str | None = None) -> str:
        backend_id = await self.lb.add_backend(backend, backend_id=backend_id)
        await self.supervisor.add_backend(backend_id, backend, self.name)
        return backend_id

    async def remove_backend(self, backend_id: str) -> None:
        await self.lb.remove_backend(backend_id)
        await self.supervisor.remove_backend(backend_id, self.name)

    def begin_drain(self, backend_id: str, timeout: float | None = None) -> asyncio.Future[Any]:
        wait = self.lb.config.request_timeout if timeout is None else timeout
        own = self.lb.begin_drain(backend_id, wait)
        return asyncio.gather(own, self.supervisor.drain_backend(backend_id, wait, self.name))


class _Families:
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> list[Any]:
        return self._families


def _dump(config: ServerConfig) -> dict[str, Any]:
    """``config`` as the worker rebuilds it: what was set, so validators see what the file said."""
    return config.model_dump(mode="json", exclude_unset=True)


def _open_shared_store(config: ServerConfig) -> tuple[StateStore | None, int | None]:
    """The store the workers share, and the descriptor of its region (None with Redis, or when
    nothing is to share: no sticky sessions, no rate limit; each worker then keeps its own)."""
    if config.state.shared:
        return open_store(config.state, config.max_sessions), None
    if not any(pool.session_affinity or pool.rate_limit.enabled for pool in config.pool_configs().values()):
        return None, None
    from ..clock import SystemClock
    from ..state.shared import SharedMemoryStore

    store = SharedMemoryStore.create(SystemClock(), max_sessions=config.max_sessions)
    return store, store.fd


async def _ping(store: StateStore) -> bool:
    ping = getattr(store, "ping", None)
    return bool(await ping()) if ping is not None else True


async def supervise(
    path: str | Path, config: ServerConfig, log_level: str, tls: list[ServerTLS | None] | None = None
) -> int:
    # Taken out of the environment before a worker starts: only the supervisor speaks to systemd.
    notify = Notifier.from_environ()
    supervisor = Supervisor(path, config, log_level, tls)
    try:
        await supervisor.start()
    except (OSError, RuntimeError) as exc:
        log_event("start_failed", logging.ERROR, error=str(exc))
        await supervisor.shutdown()
        return 1
    handle_signals(supervisor.stopping, notify.around_reload(supervisor.reload))
    gc.collect()
    gc.freeze()
    # MAINPID: the process systemd signals (ExecReload's $MAINPID) is this one, not a worker.
    ports = [int(address.rpartition(":")[2]) for address in supervisor.addresses]
    notify.ready(serving(ports, supervisor.count), MAINPID=os.getpid())
    watchdog = notify.start_watchdog()
    await supervisor.stopping.wait()
    notify.stopping()
    log_event("server_stopping", workers=supervisor.live_count)
    code = await supervisor.shutdown()
    if watchdog is not None:
        watchdog.cancel()
    notify.close()
    return code


async def serve(path: str | Path, log_level: str = "info") -> int:
    """``serve``: one process for ``workers: 1``, else a supervisor over the workers."""
    try:  # the config and the certificates it names, as `check` reads them
        config, tls = await asyncio.to_thread(load_all, Path(path))
    except ConfigurationError as exc:
        for line in str(exc).splitlines():
            log_event("config_error", logging.ERROR, problem=line)
        return 2
    if config.worker_count == 1:
        return await serve_one(path, config, tls)
    return await supervise(path, config, log_level, tls)


def run(path: str | Path, log_level: str = "info") -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.run(serve(path, log_level))
    return uvloop.run(serve(path, log_level))
