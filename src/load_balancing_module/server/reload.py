"""Applying a new, validated config to a running module and proxy: what every process of a
server does on reload (the one process, or the supervisor's module and each worker alike).

Backends that went are removed, those that came are added, a changed one is replaced (its
requests in flight finish); the algorithm switches; limits, timeouts, retries, trusted proxies
and the access log apply to new requests; the TLS listeners' certificates to new connections.
What needs a restart (``RESTART_ONLY``, and the listeners' addresses and roles) is logged and
kept as it runs. The same old and new config give the same changes in every process, so the
processes keep agreeing on backend ids.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from .._log import log_event
from ..exceptions import ConfigurationError
from ..module import LoadBalancingModule
from .config import ServerConfig, load_config
from .pools import PoolModules
from .tls import ServerTLS, load_tls, same_shape

RESTART_ONLY = (
    "health_check",
    "circuit_breaker",
    "rate_limit",
    "listen",
    "admin",
    "state",
    "session_ttl",
    "workers",
    "tracing",  # its tracer provider is made once, at start
)


def load_all(path: Path) -> tuple[ServerConfig, list[ServerTLS | None]]:
    """The config at ``path`` and its listeners' certificates: reads files, so run it in a thread."""
    config = load_config(path)
    return config, load_tls(config)


async def read_config(path: Path) -> tuple[ServerConfig, list[ServerTLS | None]] | None:
    """The file at ``path``, read, parsed and validated, and the certificates it names loaded, in a
    thread (the event loop goes on serving); None, logged as ``reload_refused`` with every problem
    (a certificate's naming its file), if it is bad."""
    try:
        return await asyncio.to_thread(load_all, path)
    except ConfigurationError as exc:
        log_event("reload_refused", logging.ERROR, path=str(path), errors=str(exc).splitlines())
        return None


async def apply_config(
    pools: PoolModules,
    old: ServerConfig,
    new: ServerConfig,
    configure: Callable[[ServerConfig, Mapping[str, LoadBalancingModule]], None] | None = None,
    *,
    announce: bool = True,
) -> ServerConfig:
    """Apply ``new`` over ``old``; return the config now in force (``new``, with the running
    ``state``). ``configure`` takes it, with every pool's module, for the proxy (routes and pools
    switch there at once); ``announce`` logs what needs a restart."""
    gone = await pools.apply(old, new, announce=announce)
    if announce:
        new.warn_if_unverified()
    ignored = [key for key in RESTART_ONLY if getattr(new, key) != getattr(old, key)]
    if "listen" not in ignored and not same_shape(old.effective_listeners, new.effective_listeners):
        ignored.append("listeners")  # their addresses and roles; certificates apply (configure)
    if ignored and announce:
        log_event("reload_needs_restart", logging.WARNING, settings=ignored)
    if "state" in ignored:  # the running store stays, and the config says so
        new = new.model_copy(update={"state": old.state})
    if configure is not None:
        configure(new, pools.modules)
    await pools.retire(gone)  # nothing routes to them any more
    return new


class Reloads:
    """Reloads never overlap: one asked for during another runs once that one is done (several
    such asks make one more reload). ``once`` runs one reload and says whether it applied."""

    def __init__(self, once: Callable[[], Awaitable[bool]]) -> None:
        self._once = once
        self._running: asyncio.Future[bool] | None = None
        self._wanted = False

    async def __call__(self) -> bool:
        self._wanted = True
        if self._running is not None:
            return await asyncio.shield(self._running)
        ok = True
        while self._wanted:
            self._wanted = False
            self._running = asyncio.get_running_loop().create_future()
            try:
                ok = await self._once()
            finally:
                done, self._running = self._running, None
                done.set_result(ok)
        return ok


def handle_signals(stopping: asyncio.Event, reload: Callable[[], Coroutine[Any, Any, bool]]) -> None:
    """SIGTERM and SIGINT set ``stopping``; SIGHUP runs ``reload`` in a task."""
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()  # held by the handler: a task nothing holds may vanish

    def on_hup() -> None:
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
