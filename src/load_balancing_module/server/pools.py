"""The pools of one server process: a library module per pool, by name, and their one owner.

``default`` is the top-level ``backends`` with the top-level settings; every entry of
``pools`` is a :class:`~..module.LoadBalancingModule` of its own (its algorithm, health checks,
breakers, retries, rate limit and sessions). :class:`PoolModules` makes them (through the
``make`` function its owner gives: the one process, the supervisor and a worker each build a
module their own way), starts them, applies a reloaded config to them, and shuts them down.

It also runs each pool's ``discovery`` (a watch on the pool's module, docs/discovery.md) where
backends are managed: the one process, or the supervisor (whose ``target`` hands every change
to the workers too); a worker, which is given its backends, runs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Final

from .._log import log_event
from ..config import BackendConfig, LoadBalancingModuleConfig
from ..discovery import Target, Watch
from ..module import LoadBalancingModule
from .config import ServerConfig
from .discovery import DiscoveryConfig, make_provider
from .probes import proxy_protocol_probe
from .route_config import DEFAULT_POOL

RELOAD_SLICE: Final = 0.005  # seconds of backend changes between two yields to the event loop
# Library settings a running module keeps until a restart (a pool's as the top level's).
MODULE_RESTART_ONLY: Final = ("health_check", "circuit_breaker", "rate_limit", "session_ttl")

# A pool's module, made by the pools' owner (with the state store it chooses for the pool).
MakeModule = Callable[[str, LoadBalancingModuleConfig], LoadBalancingModule]
# What a pool's discovery changes, by pool name (default: the pool's module alone).
MakeTarget = Callable[[str, LoadBalancingModule], Target]


class PoolModules:
    """The library module of every pool of a config (see the module docstring)."""

    def __init__(self, config: ServerConfig, make: MakeModule, target: MakeTarget | None = None) -> None:
        self._make = make
        self._target = target
        self.modules: dict[str, LoadBalancingModule] = {}
        self.watches: dict[str, tuple[DiscoveryConfig, Watch]] = {}  # by pool name
        self._discovers = False  # set by start(): only where backends are managed
        for name, module_config in config.pool_configs().items():
            self._add(name, module_config, config)

    def _add(self, name: str, module_config: LoadBalancingModuleConfig, config: ServerConfig) -> LoadBalancingModule:
        lb = self.modules[name] = self._make(name, module_config)
        _probe_as_pool(lb, name, module_config, config)
        return lb

    @property
    def default(self) -> LoadBalancingModule:
        return self.modules[DEFAULT_POOL]

    def __getitem__(self, name: str) -> LoadBalancingModule:
        return self.modules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    def items(self) -> list[tuple[str, LoadBalancingModule]]:
        return list(self.modules.items())

    async def start(self, config: ServerConfig, *, backends: bool = True) -> None:
        """Start every module, with its pool's backends unless ``backends`` is False (a worker
        gets them, with their ids, from its supervisor)."""
        lists = config.pool_backends()
        self._discovers = backends
        discovery = config.pool_discovery()
        for name, lb in self.modules.items():
            await lb.initialize()
            if backends:
                for backend in lists[name]:
                    await lb.add_backend(backend)
                self._watch(name, lb, discovery[name])

    def _watch(self, name: str, lb: LoadBalancingModule, discovery: DiscoveryConfig | None) -> None:
        """Run ``discovery`` on pool ``name``: a watch that differs replaces the running one, and
        takes over the backends it found (a new source's first set is compared with them); no
        discovery any more drains them."""
        running = self.watches.get(name)
        if not self._discovers or (running is None and discovery is None):
            return
        if running is not None and running[0] == discovery:
            return
        managed: dict[str, tuple[str, BackendConfig]] = {}
        if running is not None:
            old = running[1]
            managed = old.managed
            self.watches.pop(name)
            old.cancel()
            if discovery is None:
                for backend_id, _ in managed.values():
                    if backend_id in lb.backends and backend_id not in lb.draining:
                        lb.begin_drain(backend_id)
                log_event("discovery_stopped", pool=name, source=running[0].source)
                return
        assert discovery is not None
        target = None if self._target is None else self._target(name, lb)
        provider = make_provider(discovery, lb.clock)
        watch = lb.watch(provider, name=f"{name}:{discovery.source}", retry_max=discovery.retry_max, target=target)
        watch.managed = managed
        self.watches[name] = (discovery, watch)
        log_event("discovery_started", pool=name, source=discovery.source)

    async def apply(self, old: ServerConfig, new: ServerConfig, *, announce: bool = True) -> list[str]:
        """Bring the modules to ``new``: pools that came are made and started, those that stay get
        their backend and algorithm changes. Pools that went are left in place: the caller retires
        them (:meth:`retire`) once the proxy no longer routes to them. Returns those names."""
        old_backends, new_backends = old.pool_backends(), new.pool_backends()
        old_configs, new_configs = old.pool_configs(), new.pool_configs()
        discovery = new.pool_discovery()
        for name, module_config in new_configs.items():
            lb = self.modules.get(name)
            if lb is None:
                lb = self._add(name, module_config, new)
                await lb.initialize()
                await apply_backends(lb, [], new_backends[name])
                self._watch(name, lb, discovery[name])
                continue
            _probe_as_pool(lb, name, module_config, new)
            await apply_backends(lb, old_backends.get(name, []), new_backends[name])
            self._watch(name, lb, discovery[name])
            before = old_configs.get(name)
            if before is not None and module_config.algorithm != before.algorithm:
                await lb.configure_algorithm(module_config.algorithm)
            if before is not None and announce and name != DEFAULT_POOL:
                ignored = [k for k in MODULE_RESTART_ONLY if getattr(module_config, k) != getattr(before, k)]
                if ignored:
                    log_event("reload_needs_restart", logging.WARNING, pool=name, settings=ignored)
        return [name for name in self.modules if name not in new_configs]

    async def retire(self, names: list[str]) -> None:
        """Shut down the modules of pools that went (requests in flight on them have their slots
        released as they end; nothing new reaches them)."""
        for name in names:
            self.watches.pop(name, None)  # the module's shutdown stops it
            lb = self.modules.pop(name, None)
            if lb is not None:
                await lb.shutdown()
            log_event("pool_removed", pool=name)

    async def shutdown(self) -> None:
        for lb in self.modules.values():
            await lb.shutdown()


def _probe_as_pool(lb: LoadBalancingModule, name: str, module: LoadBalancingModuleConfig, config: ServerConfig) -> None:
    """Health probes speak to a pool's backends as its requests do: its TLS, its PROXY header."""
    tls = config.pool_tls()[name]
    version = config.pool_proxy_protocol()[name]
    lb.configure_probe_tls(None if tls is None else tls.probe_tls())
    lb.configure_probe(proxy_protocol_probe(version, module.health_check, tls) if version else None)


async def apply_backends(lb: LoadBalancingModule, old: list[BackendConfig], new: list[BackendConfig]) -> None:
    """Remove what went, add what came; a changed backend is replaced (in-flight requests finish).

    In slices of at most RELOAD_SLICE seconds, yielding to the event loop between them, so that
    a reload of thousands of backends delays no request by more than a slice."""
    old_by_address = {b.address: b for b in old}
    new_by_address = {b.address: b for b in new}
    clock = asyncio.get_running_loop().time
    slice_end = clock() + RELOAD_SLICE
    for address, backend in old_by_address.items():
        if new_by_address.get(address) != backend:
            with contextlib.suppress(KeyError):
                await lb.remove_backend(address)
            if clock() >= slice_end:
                await asyncio.sleep(0)
                slice_end = clock() + RELOAD_SLICE
    for address, backend in new_by_address.items():
        if old_by_address.get(address) != backend:
            await lb.add_backend(backend)
            if clock() >= slice_end:
                await asyncio.sleep(0)
                slice_end = clock() + RELOAD_SLICE
