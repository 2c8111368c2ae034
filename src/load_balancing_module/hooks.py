"""The integration hooks of the seed README: auto-scalers and redundant deployments.

An auto-scaler gets ``on_load_report(distribution)`` every
``load_report_interval`` and ``on_capacity_exhausted(request)`` when a request
finds no slot; a redundant deployment gets ``on_backend_health_change(id,
status)``. Every hook is optional, may be sync or async, and its errors are
logged, never raised into routing.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._log import log_event
from .clock import Clock
from .config import Request
from .health import HealthStatus
from .models import LoadDistribution


async def maybe_call(target: Any, name: str, *args: Any) -> Any:
    """Call ``target.name(*args)`` if defined, awaiting it if it is async; log its errors."""
    method = getattr(target, name, None)
    if method is None:
        return None
    try:
        outcome = method(*args)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        return outcome
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log_event("integration_hook_error", logging.ERROR, hook=f"{type(target).__name__}.{name}", error=repr(exc))
        return None


class Hooks:
    """The scalers and deployments integrated so far, and the task that sends load reports."""

    def __init__(self, clock: Clock, interval: float, report: Callable[[], Awaitable[LoadDistribution]]) -> None:
        self.clock = clock
        self.interval = interval
        self.report = report  # the distribution to send
        self.scalers: list[Any] = []
        self.deployments: list[Any] = []
        self._reports: asyncio.Task[None] | None = None

    def start_reports(self) -> None:
        """Send load reports while there is a scaler (one task, until :meth:`cancel`)."""
        if self.scalers and self._reports is None:
            self._reports = asyncio.create_task(self._report_loop(), name="omnixan-lb-load-report")

    def cancel(self) -> list[asyncio.Task[None]]:
        """Cancel the load reports; return the task to await."""
        task, self._reports = self._reports, None
        if task is None:
            return []
        task.cancel()
        return [task]

    async def _report_loop(self) -> None:
        while True:
            await self.clock.sleep(self.interval)
            distribution = await self.report()
            for scaler in self.scalers:
                await maybe_call(scaler, "on_load_report", distribution)

    async def capacity_exhausted(self, request: Request) -> None:
        for scaler in self.scalers:
            await maybe_call(scaler, "on_capacity_exhausted", request)

    async def health_changed(self, backend_id: str, status: HealthStatus) -> None:
        for deployment in self.deployments:
            await maybe_call(deployment, "on_backend_health_change", backend_id, status)
