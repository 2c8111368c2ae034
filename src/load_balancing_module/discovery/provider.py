"""The provider interface, and what a watch drives (a module, or a module and its workers)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping, Set
from typing import Any, Protocol

from ..config import BackendConfig


class DiscoveryError(Exception):
    """A provider could not produce a set (a bad file, a failed lookup): the last good set stays."""


class Provider(Protocol):
    """Where a pool's backends come from.

    ``watch()`` yields, each time the provider learns of a change (or at its own interval), the
    FULL desired set of backends; the watch that consumes it adds, drains and replaces backends
    to match. Raising ends one ``watch()`` call: the error is logged and counted, the last good
    set stays, and ``watch()`` is called again after a back-off. Ending without an error ends
    the watch (a one-shot provider)."""

    def watch(self) -> AsyncIterator[list[BackendConfig]]: ...


class Target(Protocol):
    """What a watch changes: :class:`~load_balancing_module.LoadBalancingModule` is one."""

    @property
    def backends(self) -> Mapping[str, Any]: ...

    @property
    def draining(self) -> Set[str]: ...

    async def add_backend(self, backend: BackendConfig, *, backend_id: str | None = None) -> str: ...

    async def remove_backend(self, backend_id: str) -> None: ...

    def begin_drain(self, backend_id: str, timeout: float | None = None) -> Awaitable[Any]: ...
