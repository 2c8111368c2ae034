"""A watch: a provider's sets applied to a pool, one at a time, each all at once.

Each set is compared with the backends this watch added (by address, ``host:port``): an address
that came is added (through slow start when its ``slow_start_seconds`` is set), one that went is
drained (``begin_drain``: no new requests, removed once its requests in flight end), one whose
settings changed (weight, priority, ...) is replaced under the same id. The comparison and the
changes run without yielding to the event loop, so no request sees half a set. Backends the
watch did not add (static ones, the admin API's) are never touched.

A provider that raises, or a set that is empty, changes nothing: the error is logged
(``discovery_failed``) and counted (:attr:`Watch.errors`), and the provider is watched again
after a back-off that doubles from ``retry_min`` to ``retry_max`` seconds on the pool's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .._log import log_event
from ..clock import Clock
from ..config import BackendConfig
from .provider import DiscoveryError, Provider, Target


class Watch:
    """One provider applied to one target (see the module docstring). ``start()`` runs it."""

    def __init__(
        self,
        target: Target,
        provider: Provider,
        clock: Clock,
        *,
        name: str = "discovery",
        retry_min: float = 1.0,
        retry_max: float = 30.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        if not 0 < retry_min <= retry_max:
            raise ValueError(f"retry_min and retry_max: need 0 < retry_min <= retry_max, got {retry_min}, {retry_max}")
        self.target = target
        self.provider = provider
        self.clock = clock
        self.name = name
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.on_error = on_error  # told each error's text (the proxy counts them per pool)
        self.managed: dict[str, tuple[str, BackendConfig]] = {}  # address -> (backend id, its config)
        self.errors = 0
        self.applied = 0  # sets applied
        self.last_error: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._drains: set[asyncio.Future[Any]] = set()

    def start(self) -> asyncio.Task[None]:
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"omnixan-lb-watch-{self.name}")
        return self.task

    def cancel(self) -> None:
        """Stop watching, without waiting (backends stay as they are; drains under way go on)."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        """Stop watching and wait until the watch has stopped."""
        task = self.task
        self.cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = self.retry_min
        while True:
            try:
                async for backends in self.provider.watch():
                    if await self.apply(backends):
                        delay = self.retry_min
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
            else:
                log_event("discovery_ended", watch=self.name)
                return
            await self.clock.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    def _failed(self, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        self.errors += 1
        self.last_error = text
        log_event("discovery_failed", logging.ERROR, watch=self.name, error=text, keeping=len(self.managed))
        if self.on_error is not None:
            self.on_error(text)

    async def apply(self, backends: Sequence[BackendConfig]) -> bool:
        """Bring the backends this watch manages to ``backends``; False (and nothing changed) when
        the set is refused."""
        desired: dict[str, BackendConfig] = {}
        for backend in backends:
            desired[backend.address] = backend  # an address listed twice: the last entry wins
        if not desired:
            self._failed(DiscoveryError("the provider gave an empty set: refused, the last good set stays"))
            return False
        added = removed = changed = 0
        for address, (backend_id, config) in list(self.managed.items()):
            new = desired.get(address)
            if new is None:
                del self.managed[address]
                self._drain(backend_id)
                removed += 1
            elif new != config:
                with contextlib.suppress(KeyError):  # removed meanwhile (the admin API)
                    await self.target.remove_backend(backend_id)
                if backend_id in self.target.backends:
                    backend_id = self._free_id(address)
                self.managed[address] = (await self.target.add_backend(new, backend_id=backend_id), new)
                changed += 1
        for address, config in desired.items():
            if address not in self.managed:
                self.managed[address] = (
                    await self.target.add_backend(config, backend_id=self._free_id(address)),
                    config,
                )
                added += 1
        self.applied += 1
        if added or removed or changed:
            log_event(
                "discovery_applied", watch=self.name, added=added, drained=removed, changed=changed, total=len(desired)
            )
        return True

    def _free_id(self, address: str) -> str:
        """``address``, or ``address~N`` while a backend of that id is still there (one draining)."""
        taken = self.target.backends
        if address not in taken:
            return address
        n = 2
        while f"{address}~{n}" in taken:
            n += 1
        return f"{address}~{n}"

    def _drain(self, backend_id: str) -> None:
        if backend_id not in self.target.backends or backend_id in self.target.draining:
            return
        drain = asyncio.ensure_future(self.target.begin_drain(backend_id))
        self._drains.add(drain)
        drain.add_done_callback(self._drain_done)

    def _drain_done(self, drain: asyncio.Future[Any]) -> None:
        self._drains.discard(drain)
        if not drain.cancelled() and drain.exception() is not None:
            log_event("discovery_drain_failed", logging.WARNING, watch=self.name, error=str(drain.exception()))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backends": sorted(backend_id for backend_id, _ in self.managed.values()),
            "sets_applied": self.applied,
            "errors": self.errors,
            "last_error": self.last_error,
        }
