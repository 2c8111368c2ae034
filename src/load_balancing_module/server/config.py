"""The server's config file: YAML (or TOML) into the library's pydantic models.

Top-level keys are the fields of ``LoadBalancingModuleConfig`` plus the
server's own (``listen`` or ``listeners``, ``backends``, ``admin``, ``state``,
``trusted_proxies``, ``limits``, ``drain_timeout``, ``access_log``). ``state``
is ``memory``, a ``redis://host:port/db`` URL, or ``{url, prefix, timeout}``. Unknown
keys are errors. ``${NAME}`` in any string is replaced by the environment
variable ``NAME`` (an unset variable is an error; ``$${`` keeps a literal
``${``). Every problem is reported with its field path, e.g.
``backends[2].port: must be <= 65535``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator

from ..algorithms import algorithm_class
from ..config import BackendConfig, LoadBalancingModuleConfig, StrictModel, check_host
from ..exceptions import AlgorithmError, ConfigurationError
from ..state.redis import DEFAULT_PREFIX, DEFAULT_TIMEOUT
from ..state.redis_targets import CLUSTER, SENTINEL, is_multi_node, parse_nodes
from .discovery import DiscoveryConfig
from .document import DocumentError, load_document
from .env_overrides import EnvOverrides
from .filters import FilterError, load_filter
from .logformat import check as check_log_format
from .outcomes import DEFAULT_FAILURE_STATUSES, FAILURE_STATUSES_DESCRIPTION, MAX_STATUSES, RetryOn, Status, status_set
from .route_config import DEFAULT_POOL, MAX_POOLS, MAX_ROUTES, POOL_NAME, PoolConfig, RouteConfig
from .upstream_tls import TLSSetting, UpstreamTLS

_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DB = re.compile(r"/?|/[0-9]+")


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port). Port 0 asks the OS for a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port with a port in 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class Limits(StrictModel):
    max_header_bytes: int = Field(
        default=16384,
        ge=256,
        description="bytes a request's head or trailer section may take; more is refused with 431",
    )
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=0,
        description="bytes a request body may take (default 10 MiB); more is refused with 413; 0: no limit",
    )
    header_timeout: float = Field(
        default=10.0, gt=0, description="seconds for a request's head to arrive whole; later is answered 408"
    )
    idle_timeout: float = Field(
        default=60.0, gt=0, description="seconds an idle keep-alive client connection stays open"
    )


class CertificateConfig(StrictModel):
    """A certificate (PEM, the chain after it) and its private key (PEM, not encrypted)."""

    cert: str = Field(min_length=1, description="the certificate file (PEM), its chain after it")
    key: str = Field(min_length=1, description="its private key file (PEM, not encrypted)")


class ListenerTLS(StrictModel):
    """TLS termination on a listener (docs/tls.md): the first certificate is the default, the others
    are chosen by the name the client asks for (SNI)."""

    certificates: list[CertificateConfig] = Field(
        min_length=1,
        max_length=1000,
        description="1 to 1,000 certificates: the first is the default, the others are chosen by SNI",
    )
    min_version: Literal["1.2", "1.3"] = Field(
        default="1.2", description='the oldest TLS version accepted: "1.2" or "1.3" (an unquoted 1.3 too)'
    )
    client_ca: str | None = Field(
        default=None,
        min_length=1,
        description="a CA bundle (PEM): clients must present a certificate it signed (mutual TLS); absent: none asked",
    )

    @field_validator("min_version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        """``min_version: 1.3`` unquoted is a number in YAML: taken as the string it looks like."""
        if isinstance(value, float) and value in (1.2, 1.3):
            return str(value)
        return value


class ListenerConfig(StrictModel):
    """One address the proxy accepts clients on: plain HTTP, TLS, or plain HTTP redirected to https."""

    address: str = Field(description="host:port or [v6]:port to accept clients on; port 0: any free port")
    redirect_https: bool = Field(
        default=False, description="a plain listener that answers every request 308 to https://<host><target>"
    )
    tls: ListenerTLS | None = Field(default=None, description="TLS termination (docs/tls.md); absent: plain HTTP")
    proxy_protocol: bool = Field(
        default=False,
        description=(
            "a connection from a trusted_proxies peer begins with a PROXY protocol header (v1 or v2), whose address"
            " is then the client's (docs/proxy-protocol.md)"
        ),
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    @model_validator(mode="after")
    def _one_role(self) -> ListenerConfig:
        if self.redirect_https and self.tls is not None:
            raise ValueError("redirect_https is for a plain listener: this one has tls (it would redirect to itself)")
        return self

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"


def _dns_name(value: str) -> bool:
    """Dot-separated RFC 1123 labels (the rule a backend's host follows), so no IPv6 literal."""
    try:
        check_host(value)
    except ValueError:
        return False
    return ":" not in value


class AdminConfig(StrictModel):
    listen: str = Field(default="127.0.0.1:9090", description="host:port the admin API listens on")
    token_env: str | None = Field(
        default="OMNIXAN_ADMIN_TOKEN",
        description="the environment variable that holds the admin API's token (never the file); null: no token",
    )
    # A page whose DNS name was rebound to this address sends its own name, and gets 421.
    allowed_hosts: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description=(
            "host names the admin API answers to besides IP literals, localhost and the host of listen; others get"
            " 421. *.example.com: every name under example.com (not example.com itself)"
        ),
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="the explicit opt-out that lets the admin API listen on a non-loopback address without a token",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: list[str]) -> list[str]:
        names = []
        for i, name in enumerate(value):
            try:
                names.append(cls.host_pattern(name))
            except ValueError as exc:
                raise ValueError(f"entry {i}: {exc}") from None
        return names

    @staticmethod
    def host_pattern(value: str) -> str:
        """An IP literal, a DNS name (RFC 1123), or ``*.`` and a name of two labels or more (never a
        whole top-level domain); lowercased, without a final dot."""
        name = value.strip().lower().removesuffix(".")
        try:
            return str(ipaddress.ip_address(name))
        except ValueError:
            pass
        base = name.removeprefix("*.")
        if len(name) > 253 or not _dns_name(base):
            raise ValueError(
                f"{value!r} is not a host name such as admin.example.com or *.example.com (no scheme, no port)"
            )
        if base != name and "." not in base:
            raise ValueError(f"{value!r} would match a whole top-level domain: name a domain of your own")
        return name

    @property
    def listen_host(self) -> str:
        """The host part of ``listen`` (an IPv6 literal without its brackets)."""
        return parse_address(self.listen)[0]

    @property
    def on_loopback(self) -> bool:
        host = self.listen_host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def read_token(self, environ: Mapping[str, str]) -> str | None:
        """The token from the variable named by ``token_env``; None when unset or empty."""
        return (environ.get(self.token_env) or None) if self.token_env else None

    def exposure_problem(self, token: str | None) -> str | None:
        """The one rule ``omnixan-lb check`` and ``serve`` share: an admin API that other hosts can
        reach needs a token, unless ``allow_unauthenticated`` says it is open on purpose."""
        if token or self.on_loopback or self.allow_unauthenticated:
            return None
        variable = (
            f"the environment variable {self.token_env}, named by admin.token_env"
            if self.token_env
            else "admin.token_env (it is null) to the environment variable that holds the token"
        )
        return (
            f"admin.listen: {self.listen} is not a loopback address, and no admin token is set (set "
            f"{variable}; or, to serve the admin API open on purpose, admin.allow_unauthenticated: true)"
        )

    def open_to_network(self, token: str | None) -> bool:
        """Served to other hosts without a token: allowed by ``allow_unauthenticated``, worth a warning."""
        return not token and not self.on_loopback


def check_state_url(value: str) -> str:
    """``memory``, ``redis://[user:password@]host[:port][/db]`` (``rediss://`` for TLS),
    ``redis+sentinel://[password@]host:port,.../service[/db]`` or ``redis+cluster://[password@]host:port,...``.

    Messages never repeat the URL: it may hold a password."""
    if value == "memory":
        return value
    if is_multi_node(value):
        parse_nodes(value)  # its ValueError says what is wrong
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            "must be 'memory' or a Redis URL such as redis://127.0.0.1:6379/0 (rediss:// for TLS),"
            " redis+sentinel://host:26379,host:26380/mymaster or redis+cluster://host:7000,host:7001"
        )
    if not parts.hostname:
        raise ValueError("the Redis URL has no host, as in redis://127.0.0.1:6379/0")
    try:
        port = parts.port
    except ValueError:  # not a number, or over 65535
        port = 0
    if port == 0:
        raise ValueError("the Redis URL's port must be a number in 1..65535")
    if not _DB.fullmatch(parts.path):
        raise ValueError(f"the Redis database must be a number, as in redis://127.0.0.1:6379/0, not {parts.path!r}")
    if parts.query or parts.fragment:
        raise ValueError("the Redis URL takes no query parameters; use state: {url: ..., prefix: ..., timeout: ...}")
    return value


class AccessLogConfig(StrictModel):
    format: str = Field(
        default="json",
        max_length=4096,
        description=(
            "json (one JSON object per line), combined (the Apache/NGINX combined log format), or a template of"
            " $variables (docs/config.md lists them)"
        ),
    )

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        return check_log_format(value)


class UpstreamConfig(StrictModel):
    """Connections to backends: how long a connect may take (the TLS handshake included), how long
    an idle one is kept, and TLS to them (docs/upstream-tls.md)."""

    connect_timeout: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="seconds for a new connection to a backend: the TCP connect and, with tls, the TLS handshake",
    )
    idle_timeout: float = Field(default=30.0, gt=0, le=3600, description="seconds an unused pooled connection is kept")
    max_idle_per_backend: int = Field(default=128, ge=0, le=100_000, description="idle connections kept per backend")
    tls: TLSSetting = Field(
        default=None,
        description=(
            "TLS to the default pool's backends: true (the system's CAs, verification on), false or absent (plain"
            " TCP), or {ca, server_name, cert, key, verify, min_version} (docs/upstream-tls.md)"
        ),
    )
    proxy_protocol: Literal["v1", "v2"] | None = Field(
        default=None,
        description=(
            "v1 or v2: each connection to the default pool's backends begins with a PROXY header naming the client"
            " (a pool's own is its proxy_protocol); absent: none"
        ),
    )


class StateConfig(StrictModel):
    """Where sessions, token buckets and the flood-block list live: this process, or a shared Redis
    (one server, a primary that Sentinels watch, or a Cluster)."""

    url: str = Field(
        default="memory",
        description=(
            "memory (this process), redis://[user:password@]host[:port][/db] (rediss:// for TLS),"
            " redis+sentinel://[password@]host:port,.../service[/db] or redis+cluster://[password@]host:port,..."
        ),
    )
    sentinels: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="instead of url: the Sentinels (host:port) that name the primary of service",
    )
    service: str | None = Field(default=None, description="with sentinels: the service name they monitor")
    cluster: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="instead of url: nodes (host:port) of a Redis Cluster; the client finds the others",
    )
    db: int = Field(default=0, ge=0, le=15, description="with sentinels: the database number")
    password: str | None = Field(
        default=None, description="with sentinels or cluster: the password of the Redis servers (use ${NAME})"
    )
    prefix: str = Field(
        default=DEFAULT_PREFIX,
        min_length=1,
        max_length=128,
        description="what every Redis key starts with (Redis only)",
    )
    timeout: float = Field(
        default=DEFAULT_TIMEOUT, gt=0, le=10, description="seconds for a Redis connect and for each reply (Redis only)"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_state_url(value)

    @model_validator(mode="after")
    def _one_target(self) -> StateConfig:
        given = [name for name in ("url", "sentinels", "cluster") if name in self.model_fields_set]
        if len(given) > 1:
            raise ValueError(f"give one of url, sentinels and cluster, not {' and '.join(given)}")
        if (self.sentinels is None) != (self.service is None):
            raise ValueError("sentinels and service go together: {sentinels: [host:26379, ...], service: mymaster}")
        if self.sentinels is None and "db" in self.model_fields_set:
            raise ValueError("db goes with sentinels; in a redis:// url it is the path (/2)")
        if self.sentinels is None and self.cluster is None and self.password is not None:
            raise ValueError("password goes with sentinels or cluster; in a redis:// url it is redis://:password@host")
        if self.sentinels is not None or self.cluster is not None:
            check_state_url(self.target)
        if not self.shared and self.model_fields_set & {"prefix", "timeout"}:
            raise ValueError("prefix and timeout apply only to a Redis state store")
        return self

    @property
    def target(self) -> str:
        """The store's URL: ``url``, or the one that ``sentinels`` / ``cluster`` spell."""
        auth = f"{quote(self.password, safe='')}@" if self.password else ""
        if self.sentinels is not None:
            return f"{SENTINEL}://{auth}{','.join(self.sentinels)}/{self.service}/{self.db}"
        if self.cluster is not None:
            return f"{CLUSTER}://{auth}{','.join(self.cluster)}"
        return self.url

    @property
    def shared(self) -> bool:
        return self.target != "memory"


class TracingConfig(StrictModel):
    """OpenTelemetry spans of every request (docs/tracing.md); needs omnixan-lb[otel]."""

    otlp_endpoint: str = Field(
        default="http://localhost:4318/v1/traces",
        description="where spans go: an OTLP/HTTP traces URL (http:// or https://, usually port 4318, /v1/traces)",
    )
    service_name: str = Field(
        default="omnixan-lb", min_length=1, max_length=256, description="the service.name of the spans' resource"
    )
    sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="the share of requests traced that bring no traceparent; with one, its sampled flag decides",
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if scheme not in ("http", "https") or not sep or not rest:
            raise ValueError(f"otlp_endpoint {value!r} is not an http:// or https:// URL")
        return value


MAX_WORKERS = 256


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class ServerConfig(LoadBalancingModuleConfig):
    listen: str = Field(
        default="127.0.0.1:8080",
        description="host:port of one plain listener; port 0: any free port; listeners replaces it",
    )
    listeners: list[ListenerConfig] | None = Field(
        default=None,
        max_length=64,
        description="1 to 64 listeners, plain or TLS (docs/tls.md), instead of listen; absent: listen's one",
    )
    workers: int | Literal["auto"] = Field(
        default=1,
        description=(
            "processes serving the proxy: a number (1 runs everything in one process; more run under a supervisor,"
            " docs/workers.md), or auto (one per CPU this process may use)"
        ),
    )
    backends: list[BackendConfig] = Field(default_factory=list, description="the default pool's backends")
    discovery: DiscoveryConfig | None = Field(
        default=None,
        description=(
            "where more of the default pool's backends are found: {file: ...}, {dns: ..., port: ...} or {srv: ...}"
            " (docs/discovery.md)"
        ),
    )
    admin: AdminConfig = Field(
        default_factory=AdminConfig, description="the admin API: its address, its token and the host names it answers"
    )
    state: StateConfig = Field(
        default_factory=StateConfig,
        description=(
            "where sessions, token buckets and the flood-block list live: memory, a Redis URL (redis://,"
            " redis+sentinel://, redis+cluster://), or {url | sentinels and service | cluster, prefix, timeout}"
        ),
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="networks (10.0.0.0/8) of the proxies in front, whose X-Forwarded-For and PROXY headers count",
    )
    limits: Limits = Field(
        default_factory=Limits, description="bounds on client requests: head and body sizes, header and idle timeouts"
    )
    drain_timeout: float = Field(
        default=30.0, ge=0, description="seconds SIGTERM waits for requests in flight before the process exits"
    )
    access_log: bool | AccessLogConfig = Field(
        default=True,
        description="one line per request on stderr: true (JSON), false, or {format: json | combined | <template>}",
    )
    upstream: UpstreamConfig = Field(
        default_factory=UpstreamConfig,
        description="connections to the default pool's backends: timeouts, idle pooling, TLS, PROXY protocol",
    )
    affinity_secret_env: str | None = Field(
        default="OMNIXAN_AFFINITY_SECRET",
        description=(
            "the environment variable holding the key that signs affinity cookies (balancers that share traffic need"
            " the same); unset: the shared state store's key, or one made at start"
        ),
    )
    pools: dict[str, PoolConfig] = Field(
        default_factory=dict,
        max_length=MAX_POOLS,
        description="named pools of backends, each its own balancer (docs/routes.md); default: the top-level backends",
    )
    routes: list[RouteConfig] = Field(
        default_factory=list,
        max_length=MAX_ROUTES,
        description="tried in order: the first that matches a request takes it; no match: the default pool",
    )
    retry_on: RetryOn = Field(
        default_factory=RetryOn,
        description="which failed tries go to another backend (HAProxy retry-on, Envoy retry_on); docs/config.md",
    )
    failure_statuses: list[Status] = Field(
        default_factory=lambda: list(DEFAULT_FAILURE_STATUSES),
        max_length=MAX_STATUSES,
        description=FAILURE_STATUSES_DESCRIPTION + "; default 5xx",
    )
    tracing: TracingConfig | None = Field(
        default=None,
        description=(
            "OpenTelemetry spans of every request and try, sent by OTLP/HTTP (docs/tracing.md; omnixan-lb[otel]);"
            " absent: off, and no OpenTelemetry module is loaded; read at start only"
        ),
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("access_log", mode="before")
    @classmethod
    def _access_log(cls, value: Any) -> Any:
        """A mapping is validated as the one model it can be: its errors name access_log.format, not a union."""
        if isinstance(value, dict):
            return AccessLogConfig.model_validate(value)
        if not isinstance(value, (bool, AccessLogConfig)):
            raise ValueError("must be true, false, or {format: json | combined | <template>}")
        return value

    @property
    def access_log_format(self) -> str | None:
        """The access log's format (json, combined or a template); None: no access log."""
        access_log = self.access_log
        if isinstance(access_log, AccessLogConfig):
            return access_log.format
        return "json" if access_log else None

    @model_validator(mode="before")
    @classmethod
    def _listen_or_listeners(cls, value: Any) -> Any:
        if isinstance(value, dict) and "listen" in value and value.get("listeners") is not None:
            raise ValueError("listen and listeners are both set: use listeners alone (listen is one plain listener)")
        return value

    @field_validator("listeners")
    @classmethod
    def _listeners(cls, value: list[ListenerConfig] | None) -> list[ListenerConfig] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("is empty: name at least one listener, or leave listeners out for listen's one")
        seen: dict[tuple[str, int], int] = {}
        for i, listener in enumerate(value):
            host, port = parse_address(listener.address)
            if port == 0:  # each takes a free port of its own
                continue
            first = seen.setdefault((host.lower(), port), i)
            if first != i:
                raise ValueError(f"entries {first} and {i} have the same address {listener.address}")
        return value

    @property
    def effective_listeners(self) -> list[ListenerConfig]:
        """``listeners``, or the one plain listener of ``listen`` (its default when neither is set)."""
        if self.listeners is not None:
            return self.listeners
        return [ListenerConfig(address=self.listen)]

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.isdigit():  # OMNIXAN_LB__WORKERS=4: every variable is a string
            value = int(value)
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS):
            return value
        raise ValueError(f"must be a number of processes in 1..{MAX_WORKERS}, or auto (one per CPU)")

    @property
    def worker_count(self) -> int:
        """``workers`` as a number: ``auto`` is the CPUs this process may use."""
        return min(available_cpus(), MAX_WORKERS) if self.workers == "auto" else self.workers

    @field_validator("state", mode="before")
    @classmethod
    def _state(cls, value: Any) -> Any:
        """The short form, ``state: redis://...``: checked here so that errors name ``state``."""
        if isinstance(value, str):
            return {"url": check_state_url(value)}
        if not isinstance(value, (dict, StateConfig)):
            raise ValueError(
                "must be 'memory', a Redis URL (redis://, redis+sentinel://, redis+cluster://), or a mapping"
                " {url | sentinels and service | cluster, prefix, timeout}"
            )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for i, cidr in enumerate(value):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"entry {i} ({cidr!r}) is not an IP network such as 10.0.0.0/8") from None
        return value

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, value: dict[str, PoolConfig]) -> dict[str, PoolConfig]:
        for name in value:
            if name == DEFAULT_POOL:
                raise ValueError(f"{DEFAULT_POOL!r} is the top-level backends and settings: name the pool otherwise")
            if not POOL_NAME.fullmatch(name):
                raise ValueError(f"{name[:80]!r} is not a pool name (lowercase letters, digits, - and _, at most 63)")
        return value

    @model_validator(mode="after")
    def _proxy_protocol_needs_trust(self) -> ServerConfig:
        if not self.trusted_proxies:
            for i, listener in enumerate(self.listeners or []):
                if listener.proxy_protocol:
                    raise ValueError(
                        f"listeners[{i}].proxy_protocol: a PROXY header is accepted only from trusted_proxies,"
                        " and there are none: list the proxies in front"
                    )
        return self

    @model_validator(mode="after")
    def _routes_name_pools(self) -> ServerConfig:
        names: set[str] = set()
        for i, route in enumerate(self.routes):
            if route.redirect is None and route.pool != DEFAULT_POOL and route.pool not in self.pools:
                known = ", ".join([DEFAULT_POOL, *self.pools])
                raise ValueError(f"routes[{i}].pool: no pool named {route.pool!r} (pools: {known})")
            if route.name is not None:
                if route.name in names:
                    raise ValueError(f"routes[{i}].name: {route.name!r} names an earlier route too")
                names.add(route.name)
        return self

    def pool_configs(self) -> dict[str, LoadBalancingModuleConfig]:
        """Every pool's library config by name, ``default`` first (the top-level one)."""
        top = self.module_config()
        return {DEFAULT_POOL: top, **{name: pool.module_config(top) for name, pool in self.pools.items()}}

    def pool_tls(self) -> dict[str, UpstreamTLS | None]:
        """Every pool's TLS to its backends by name: the default pool's is ``upstream.tls``."""
        return {DEFAULT_POOL: self.upstream.tls, **{name: pool.tls for name, pool in self.pools.items()}}

    def pool_proxy_protocol(self) -> dict[str, int]:
        """Every pool's PROXY protocol version to its backends by name (0: none)."""
        versions = {DEFAULT_POOL: self.upstream.proxy_protocol, **{n: p.proxy_protocol for n, p in self.pools.items()}}
        return {name: 0 if version is None else int(version[1]) for name, version in versions.items()}

    def pool_outcomes(self) -> dict[str, tuple[RetryOn, frozenset[int]]]:
        """Every pool's ``retry_on`` and failure statuses by name: a pool's own, or the top level's."""
        top = (self.retry_on, status_set(self.failure_statuses))
        outcomes = {DEFAULT_POOL: top}
        for name, pool in self.pools.items():
            failures = top[1] if pool.failure_statuses is None else status_set(pool.failure_statuses)
            outcomes[name] = (top[0] if pool.retry_on is None else pool.retry_on, failures)
        return outcomes

    def warn_if_unverified(self) -> None:
        """Log every pool whose TLS to its backends does not verify them (``verify: false``)."""
        for name, tls in self.pool_tls().items():
            if tls is not None:
                tls.warn_if_unverified("upstream.tls" if name == DEFAULT_POOL else f"pools.{name}.tls")

    def pool_discovery(self) -> dict[str, DiscoveryConfig | None]:
        """Every pool's ``discovery`` by name (None: its static backends only)."""
        return {DEFAULT_POOL: self.discovery, **{name: pool.discovery for name, pool in self.pools.items()}}

    def pool_backends(self) -> dict[str, list[BackendConfig]]:
        return {DEFAULT_POOL: self.backends, **{name: pool.backends for name, pool in self.pools.items()}}

    def module_config(self) -> LoadBalancingModuleConfig:
        """The library's part of this config."""
        fields = set(LoadBalancingModuleConfig.model_fields)
        return LoadBalancingModuleConfig.model_validate({k: v for k, v in self.model_dump().items() if k in fields})


def expand_env(value: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${NAME}`` in every string of a parsed document."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name = match.group(1)
            if name not in environ:
                raise ConfigurationError(f"{path or '(top)'}: environment variable {name} is not set")
            return environ[name]

        return _ENV.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, environ, _join(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def describe_errors(
    error: ValidationError, origin: Callable[[tuple[int | str, ...]], str | None] | None = None
) -> list[str]:
    """One line per problem: ``field.path[2].name: what is wrong``, and ``(from VARIABLE)`` when
    ``origin`` says an environment variable set that value."""
    lines = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
        line = f"{path or '(top)'}: {_message(item)}"
        variable = origin(item["loc"]) if origin is not None else None
        lines.append(line if variable is None else f"{line} (from {variable})")
    return lines


def _message(item: Mapping[str, Any]) -> str:
    ctx = item.get("ctx") or {}
    kind = item["type"]
    for key, op in (("le", "<="), ("ge", ">="), ("lt", "<"), ("gt", ">")):
        if key in ctx and kind.endswith(("_equal", "less_than", "greater_than")):
            bound = ctx[key]
            return f"must be {op} {bound:g}" if isinstance(bound, (int, float)) else f"must be {op} {bound}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    message = str(item["msg"])
    return message.removeprefix("Value error, ")


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Read, expand and validate a config file, with the ``OMNIXAN_LB__...`` variables of the
    environment over it (env_overrides.py); :class:`ConfigurationError` lists every problem."""
    path = Path(path)
    try:
        document = load_document(path)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except DocumentError as exc:
        raise ConfigurationError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigurationError(f"{path}: the top level must be a mapping of keys, not {type(document).__name__}")
    environ = os.environ if environ is None else environ
    overrides = EnvOverrides(ServerConfig, environ)
    document = overrides.apply(expand_env(document, environ))
    problems = overrides.problems()
    try:
        config = ServerConfig.model_validate(document)
    except ValidationError as exc:
        problems += describe_errors(exc, overrides.origin)
    if problems:
        raise ConfigurationError("\n".join(problems))
    for name, module in config.pool_configs().items():
        where = "algorithm" if name == DEFAULT_POOL else f"pools.{name}.algorithm"
        try:
            cls = algorithm_class(module.algorithm.algorithm_type)
        except AlgorithmError as exc:
            problems.append(f"{where}: {exc}")
            continue
        try:
            cls.parse(module.algorithm.config)
        except AlgorithmError as exc:
            problems.append(f"{where}.config: {exc}")
    problems += check_filters(config.routes)
    if problems:
        raise ConfigurationError("\n".join(problems))
    return config


def check_filters(routes: list[RouteConfig]) -> list[str]:
    """Every route filter imported (the operator's own code): one line per one that cannot be."""
    problems = []
    for i, route in enumerate(routes):
        for j, spec in enumerate(route.filters):
            try:
                load_filter(spec)
            except FilterError as exc:
                problems.append(f"routes[{i}].filters[{j}]: {exc}")
    return problems
