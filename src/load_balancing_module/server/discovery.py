"""``discovery:`` in the config file: where a pool's backends are found (docs/discovery.md).

The top level (the default pool) and every entry of ``pools`` may have one, beside or instead
of a static ``backends`` list: ``{file: ...}``, ``{dns: ..., port: ...}`` or ``{srv: ...}``.
:func:`make_provider` turns it into the library's provider; :mod:`.pools` runs it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from ..clock import Clock
from ..config import BackendConfig, StrictModel
from ..discovery import DnsProvider, FileProvider, Provider
from ..discovery.dns import parse_nameserver


class DiscoveryConfig(StrictModel):
    """One of ``file``, ``dns`` (with ``port``) or ``srv``, and how often to look."""

    file: str | None = Field(
        default=None, min_length=1, description="a YAML or JSON file listing backends, polled for changes"
    )
    dns: str | None = Field(
        default=None, min_length=1, max_length=253, description="a name whose A and AAAA records are the backends"
    )
    srv: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="an SRV name (_http._tcp.api.internal): each target's addresses, its port, weight and priority",
    )
    port: int | None = Field(default=None, ge=1, le=65535, description="the backends' port, with dns (not with srv)")
    nameservers: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="DNS servers to ask (10.0.0.2:53, [fd00::2]:53); empty: the system's (/etc/resolv.conf)",
    )
    interval: float = Field(default=2.0, gt=0, le=3600, description="seconds between two looks at the file")
    min_interval: float = Field(
        default=5.0, gt=0, description="seconds at least between two DNS lookups, whatever the TTL"
    )
    max_interval: float = Field(
        default=300.0, gt=0, description="seconds at most between two DNS lookups, whatever the TTL"
    )
    timeout: float = Field(default=5.0, gt=0, le=60, description="seconds a DNS lookup may take")
    retry_max: float = Field(
        default=30.0, gt=0, description="seconds at most between two tries after a failure (doubling from 1 s)"
    )
    backend: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "other fields of every backend found by dns or srv (max_connections, slow_start_seconds, metadata);"
            " host, port, weight and priority come from DNS"
        ),
    )

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            try:
                parse_nameserver(text)
            except ValueError as exc:
                raise ValueError(f"entry {i}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DiscoveryConfig:
        sources = [k for k in ("file", "dns", "srv") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ValueError(f"give exactly one of file, dns or srv (got {', '.join(sources) or 'none'})")
        if self.dns is not None and self.port is None:
            raise ValueError("dns needs a port (the backends' port)")
        if self.dns is None and self.port is not None:
            raise ValueError("port goes with dns (SRV records carry their own; a file lists its backends')")
        if self.file is None and self.min_interval > self.max_interval:
            raise ValueError(f"min_interval ({self.min_interval}) is above max_interval ({self.max_interval})")
        if self.backend:
            if self.file is not None:
                raise ValueError("backend goes with dns or srv (a file lists each backend's fields)")
            taken = sorted({"host", "port", "weight", "priority"} & set(self.backend))
            if taken:
                raise ValueError(f"backend: {', '.join(taken)} come from DNS and cannot be set here")
            BackendConfig.model_validate({**self.backend, "host": "127.0.0.1", "port": 1})
        return self

    @property
    def source(self) -> str:
        """What it watches, for logs and the admin API: ``file:/etc/lb/b.yaml``, ``dns:api.internal``..."""
        if self.file is not None:
            return f"file:{self.file}"
        return f"dns:{self.dns}" if self.dns is not None else f"srv:{self.srv}"


def make_provider(config: DiscoveryConfig, clock: Clock) -> Provider:
    """The library's provider for ``config``, on ``clock`` (the pool's)."""
    if config.file is not None:
        return FileProvider(config.file, interval=config.interval, clock=clock)
    return DnsProvider(
        config.dns,
        port=config.port,
        srv=config.srv,
        nameservers=config.nameservers,
        min_interval=config.min_interval,
        max_interval=config.max_interval,
        timeout=config.timeout,
        backend=config.backend,
        clock=clock,
    )
