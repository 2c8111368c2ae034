"""Active health checking: real probes and the threshold state machine.

A probe either passes (returning its latency) or raises. The
:class:`HealthTracker` of each backend turns probe outcomes into a
:class:`HealthState`:

- a failed probe: ``unhealthy_threshold`` consecutive failures -> UNHEALTHY;
- a passing probe slower than ``degraded_latency_ms`` -> DEGRADED at once
  (from HEALTHY), or DEGRADED instead of HEALTHY when leaving UNHEALTHY;
- UNHEALTHY -> HEALTHY (or DEGRADED) after ``healthy_threshold`` consecutive
  passing probes; DEGRADED -> HEALTHY after ``healthy_threshold`` consecutive
  fast passing probes.

:class:`HealthStatus` is the tracker's account of the latest probe, the
answer of ``LoadBalancingModule.health_check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from ._extras import require
from .clock import Clock
from .config import BackendConfig, HealthCheckConfig
from .enums import HealthState

Probe = Callable[[BackendConfig], Awaitable[object]]
"""A custom probe: awaited with the backend's config; raising or returning
``False`` is a failure, anything else a pass."""


class HealthStatus(BaseModel):
    """The outcome of the latest health probe of one backend."""

    model_config = ConfigDict(frozen=True)

    backend_id: str
    status: HealthState
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    latency_ms: float | None = None
    checked_at: float | None = None  # wall-clock seconds since the epoch
    error: str | None = None


class ProbeFailed(Exception):
    """A probe's negative answer (refused, timed out, bad status...)."""


class ProbeNotRun(Exception):
    """The probe could not be made for a reason of this host's own (out of file descriptors or
    memory): it says nothing about the backend, so it is not counted either way."""


# errno values that describe this host, not the backend probed.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _local_os_error(exc: BaseException) -> OSError | None:
    """The OSError of this host's own exhaustion behind ``exc`` (aiohttp wraps it), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in LOCAL_ERRNOS:
            return current
        wrapped = _os_error(current)
        if wrapped is not None:
            current = wrapped
            continue
        current = current.__cause__ or current.__context__
    return None


def _os_error(exc: BaseException) -> OSError | None:
    """The OS error an aiohttp connection error wraps (``ClientConnectorError.os_error``), or None;
    read by name, so that aiohttp is imported only by the http probe."""
    wrapped = getattr(exc, "os_error", None)
    return wrapped if isinstance(wrapped, OSError) and wrapped is not exc else None


class HealthTracker:
    """Consecutive probe outcomes of one backend, and the state they imply."""

    __slots__ = ("backend_id", "config", "state", "failures", "successes", "fast_streak", "last")

    def __init__(self, backend_id: str, config: HealthCheckConfig) -> None:
        self.backend_id = backend_id
        self.config = config
        self.state = HealthState.HEALTHY
        self.failures = 0
        self.successes = 0
        self.fast_streak = 0
        self.last = HealthStatus(backend_id=backend_id, status=HealthState.HEALTHY)

    def record(self, ok: bool, latency_ms: float | None, checked_at: float, error: str | None) -> HealthState:
        """Count one probe outcome; return the (possibly new) state."""
        cfg = self.config
        if not ok:
            self.successes = self.fast_streak = 0
            self.failures += 1
            if self.failures >= cfg.unhealthy_threshold:
                self.state = HealthState.UNHEALTHY
        else:
            self.failures = 0
            self.successes += 1
            slow = cfg.degraded_latency_ms is not None and (latency_ms or 0.0) > cfg.degraded_latency_ms
            self.fast_streak = 0 if slow else self.fast_streak + 1
            if self.state is HealthState.UNHEALTHY:
                if self.successes >= cfg.healthy_threshold:
                    self.state = HealthState.DEGRADED if slow else HealthState.HEALTHY
            elif slow:
                self.state = HealthState.DEGRADED
            elif self.state is HealthState.DEGRADED and self.fast_streak >= cfg.healthy_threshold:
                self.state = HealthState.HEALTHY
        self.last = HealthStatus(
            backend_id=self.backend_id,
            status=self.state,
            consecutive_failures=self.failures,
            consecutive_successes=self.successes,
            latency_ms=latency_ms,
            checked_at=checked_at,
            error=error,
        )
        return self.state

    def adopt(self, status: HealthStatus) -> HealthState:
        """Take another prober's outcome as this backend's (the probing process of several workers)."""
        self.state = status.status
        self.failures = status.consecutive_failures
        self.successes = status.consecutive_successes
        self.fast_streak = 0
        self.last = status.model_copy(update={"backend_id": self.backend_id})
        return self.state


@dataclass(frozen=True)
class ProbeTLS:
    """Probes over TLS, as the traffic goes: a ``tcp`` probe passes once the TLS handshake has,
    an ``http`` probe is an HTTPS GET. ``context`` verifies (or not) as its settings say;
    ``server_name`` is the name sent as SNI and verified, None for each backend's own host
    (an IP literal is checked against the certificate's IP addresses, and sends no SNI)."""

    context: ssl.SSLContext
    server_name: str | None = None

    def server_hostname(self, host: str) -> str:
        return self.server_name or host


class Prober:
    """Runs one probe of a backend: TCP connect (a TLS handshake with ``tls``), HTTP(S) GET, or a
    custom probe."""

    def __init__(
        self, config: HealthCheckConfig, clock: Clock, custom: Probe | None = None, tls: ProbeTLS | None = None
    ) -> None:
        if custom is None and config.type == "http":  # fail now, not as every backend's failed probe
            require("health_check type http", "aiohttp", "aiohttp")
        self.config = config
        self.clock = clock
        self.custom = custom
        self.tls = tls  # may be replaced between probes (a reload): each probe reads it once

    async def probe(self, backend: BackendConfig) -> float:
        """Probe once; return the latency in ms or raise :class:`ProbeFailed`."""
        started = self.clock.monotonic()
        try:
            await self.clock.wait_for(self._probe(backend), self.config.timeout)
        except ProbeFailed:
            raise
        except (TimeoutError, asyncio.TimeoutError):
            raise ProbeFailed(f"no answer from {backend.address} within {self.config.timeout:g} s") from None
        except Exception as exc:  # refused, unresolvable, reset, or a custom probe that raised
            local = _local_os_error(exc)
            if local is not None:
                raise ProbeNotRun(f"{backend.address} not probed: {local.strerror or local}") from None
            # aiohttp wraps the OS error of a failed connect; name that cause (e.g. ConnectionRefusedError).
            # (an older aiohttp set no os_error on its certificate error: the error itself then.)
            cause = _os_error(exc) or exc
            raise ProbeFailed(f"{type(cause).__name__} ({backend.address}): {exc}".rstrip(": ")) from None
        return (self.clock.monotonic() - started) * 1000.0

    async def _probe(self, backend: BackendConfig) -> None:
        if self.custom is not None:
            outcome: object = self.custom(backend)
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome is False:
                raise ProbeFailed("custom probe returned False")
        elif self.config.type == "http":
            await self._http(backend)
        else:
            await self._tcp(backend)

    async def _tcp(self, backend: BackendConfig) -> None:
        tls = self.tls
        if tls is not None:
            _, writer = await asyncio.open_connection(
                backend.host, backend.port, ssl=tls.context, server_hostname=tls.server_hostname(backend.host)
            )
            writer.transport.abort()  # the handshake passed, which is what the probe asks: no close_notify wait
            return
        _, writer = await asyncio.open_connection(backend.host, backend.port)
        writer.close()
        with contextlib.suppress(OSError):  # the connect succeeded, which is what the probe asks
            await writer.wait_closed()

    async def _http(self, backend: BackendConfig) -> None:
        # A session per probe: a fresh connection, as a new client would open, and nothing left
        # open between probes (health_check() may run outside initialize()/shutdown()).
        # The status line is the answer: the body is not awaited (a slow or endless body must not
        # time out a 200, nor hide a 500), and leaving the block closes the connection.
        import aiohttp  # here, not at import: only an http probe needs it (the [aiohttp] extra)

        tls = self.tls
        scheme = "http" if tls is None else "https"
        url = f"{scheme}://{backend.address}{self.config.path}"
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        ssl_args: dict[str, Any] = (
            {} if tls is None else {"ssl": tls.context, "server_hostname": tls.server_hostname(backend.host)}
        )
        async with (
            aiohttp.ClientSession(connector=connector, headers={"User-Agent": "omnixan-lb-health"}) as session,
            session.get(url, allow_redirects=False, **ssl_args) as response,
        ):
            if not 200 <= response.status < 400:
                raise ProbeFailed(f"HTTP {response.status} from GET {self.config.path}")

    async def close(self) -> None:
        """Release resources; probes hold none between calls, so there is nothing to do."""
