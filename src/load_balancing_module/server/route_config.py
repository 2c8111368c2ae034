"""The config file's ``pools`` and ``routes``: what a route matches, where it sends a request,
what it rewrites on the way.

Only the models and their rules live here; :mod:`.routing` compiles them into the table the
proxy matches requests against. A route names a pool; ``default`` is the top-level
``backends`` with the top-level settings, and every other pool takes the top-level library
settings for each field it does not set itself (a field it sets replaces the top-level one
wholly, as ``health_check: {...}`` does).
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from ..config import BackendConfig, LoadBalancingModuleConfig, StrictModel
from .discovery import DiscoveryConfig
from .outcomes import FAILURE_STATUSES_DESCRIPTION, MAX_STATUSES, RetryOn, Status
from .upstream_tls import TLSSetting

DEFAULT_POOL = "default"
MAX_ROUTES = 10_000
MAX_POOLS = 1_000
POOL_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2: a field name, a method
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")  # a field value: no CR, LF, NUL or other controls
_FILTER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_]\w*)*")
# Headers the proxy writes itself, or that frame the message: no rule or filter may touch them.
RESPONSE_OWN = frozenset(
    {"connection", "content-length", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "x-request-id"}
)
REQUEST_OWN = RESPONSE_OWN | {"proxy-connection", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}


def check_header_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
    return name


def check_header_value(name: str, value: str) -> str:
    if not _VALUE.fullmatch(value) or value != value.strip(" \t"):
        raise ValueError(f"the value of {name} must be one line without control characters or surrounding whitespace")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"the value of {name} has a character outside Latin-1 (write it percent-encoded)") from None
    return value


class HeaderRules(StrictModel):
    """Header changes on the way: ``remove`` first, then ``set`` (replaces every header of that
    name), then ``add`` (one more line). Names are case-insensitive."""

    set: dict[str, str] = Field(
        default_factory=dict, max_length=100, description="name: value; replaces every header of that name with one"
    )
    add: dict[str, str] = Field(default_factory=dict, max_length=100, description="name: value; one more line each")
    remove: list[str] = Field(default_factory=list, max_length=100, description="names of headers removed")

    @model_validator(mode="after")
    def _well_formed(self) -> HeaderRules:
        for name, value in [*self.set.items(), *self.add.items()]:
            check_header_value(check_header_name(name), value)
        for name in self.remove:
            check_header_name(name)
        return self

    @property
    def empty(self) -> bool:
        return not (self.set or self.add or self.remove)

    def names(self) -> frozenset[str]:
        return frozenset(n.lower() for n in [*self.set, *self.add, *self.remove])

    def touching_none_of(self, own: frozenset[str]) -> HeaderRules:
        """These rules, if they change none of ``own`` (the headers the proxy writes itself)."""
        touched = sorted(self.names() & own)
        if touched:
            raise ValueError(f"the proxy writes {', '.join(touched)} itself: a rule cannot change it")
        return self


class RouteMatch(StrictModel):
    """What a request must have for its route to apply; every condition given must hold."""

    host: str | None = Field(
        default=None,
        description="the request's host: exact, or *.example.com (any name under it, not example.com itself); no port",
    )
    path_prefix: str | None = Field(
        default=None, description="what the (normalized) path starts with, starting with /; excludes path_regex"
    )
    path_regex: str | None = Field(
        default=None, description="a regular expression the whole path must match (re.fullmatch), without the query"
    )
    methods: list[str] | None = Field(
        default=None, min_length=1, max_length=64, description="methods in capitals, one of which the request has"
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="headers the request must carry with exactly these values; names case-insensitive",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.strip().lower().removesuffix(".")
        base = name.removeprefix("*.")
        if not base or not re.fullmatch(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?", base) or ".." in base:
            raise ValueError(f"{value!r} is not a host name such as api.example.com or *.example.com (no port)")
        if base != name and "." not in base:
            raise ValueError(f"{value!r} would match a whole top-level domain")
        return name

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or any(c.isspace() or c in "?#" for c in value)):
            raise ValueError("must start with / and hold no whitespace, ? or #")
        return value

    @field_validator("path_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for method in value:
            if not _TOKEN.fullmatch(method) or method != method.upper():
                raise ValueError(f"{method!r} is not an HTTP method in capitals, such as GET")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, wanted in value.items():
            check_header_value(check_header_name(name), wanted)
        return value

    @model_validator(mode="after")
    def _one_path_rule(self) -> RouteMatch:
        if self.path_prefix is not None and self.path_regex is not None:
            raise ValueError("path_prefix and path_regex cannot both be given")
        return self


class Redirect(StrictModel):
    """Answer with a redirect instead of proxying. ``to``: an absolute http(s) URL or a path; with
    ``keep_path`` the request's path and query are appended to it (as ``$request_uri`` in nginx)."""

    to: str = Field(min_length=1, max_length=2048, description="an http:// or https:// URL, or a path starting with /")
    status: Literal[301, 302, 303, 307, 308] = Field(default=302, description="the redirect's status")
    keep_path: bool = Field(
        default=True, description="append the request's path and query to `to` (as $request_uri in nginx)"
    )

    @field_validator("to")
    @classmethod
    def _to(cls, value: str) -> str:
        check_header_value("Location", value)
        if value.startswith("/"):
            if value.startswith("//"):
                raise ValueError("a path must not start with // (that is a URL without a scheme)")
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, or a path starting with /")
        return value


class RouteConfig(StrictModel):
    """One entry of ``routes``: the first route whose ``match`` holds takes the request."""

    name: str | None = Field(
        default=None,
        max_length=64,
        description="the route's name in logs, metrics and the admin API (lowercase letters, digits, - and _); unique",
    )
    match: RouteMatch = Field(
        default_factory=RouteMatch, description="what a request must have for the route to apply; empty: every request"
    )
    pool: str = Field(default=DEFAULT_POOL, description="the pool the request goes to; default: the top-level backends")
    strip_prefix: str | None = Field(
        default=None,
        description="a prefix taken off the path when it starts with it (/v1: /v1/users goes on as /users)",
    )
    request_headers: HeaderRules = Field(
        default_factory=HeaderRules, description="header changes on the request, on its way to the backend"
    )
    response_headers: HeaderRules = Field(
        default_factory=HeaderRules, description="header changes on the response, on its way to the client"
    )
    filters: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="the operator's Python filters as module:function, run in order (docs/routes.md)",
    )
    redirect: Redirect | None = Field(
        default=None, description="answer with a redirect and proxy nothing (then no pool, rewrites or filters)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not POOL_NAME.fullmatch(value):
            raise ValueError("must be lowercase letters, digits, - and _ (at most 63)")
        return value

    @field_validator("strip_prefix")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or value == "/" or any(c in value for c in " ?#")):
            raise ValueError("must start with / and be more than /, with no space, ? or #")
        return value

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for i, spec in enumerate(value):
            if not _FILTER.fullmatch(spec):
                raise ValueError(f"entry {i}: {spec!r} is not module:function (as myfilters:require_api_key)")
        return value

    @field_validator("request_headers")
    @classmethod
    def _request_rules(cls, value: HeaderRules) -> HeaderRules:
        return value.touching_none_of(REQUEST_OWN)

    @field_validator("response_headers")
    @classmethod
    def _response_rules(cls, value: HeaderRules) -> HeaderRules:
        return value.touching_none_of(RESPONSE_OWN)

    @model_validator(mode="after")
    def _redirect_alone(self) -> RouteConfig:
        if self.redirect is not None:
            extra = [
                k
                for k in ("pool", "strip_prefix", "request_headers", "response_headers", "filters")
                if k in self.model_fields_set
            ]
            if extra:
                raise ValueError(f"a redirect route proxies nothing: drop {', '.join(extra)}")
        return self


class PoolConfig(LoadBalancingModuleConfig):
    """One entry of ``pools``: its backends and any library setting of its own."""

    backends: list[BackendConfig] = Field(default_factory=list, description="this pool's backends")
    discovery: DiscoveryConfig | None = Field(
        default=None,
        description="where more of this pool's backends are found: {file: ...}, {dns: ..., port: ...} or {srv: ...}",
    )
    tls: TLSSetting = Field(
        default=None,
        description=(
            "TLS to this pool's backends, as upstream.tls (not taken from it: that is the default pool's);"
            " absent: plain TCP"
        ),
    )
    proxy_protocol: Literal["v1", "v2"] | None = Field(
        default=None,
        description="v1 or v2: each connection to this pool's backends begins with a PROXY header; absent: none",
    )
    retry_on: RetryOn | None = Field(
        default=None, description="this pool's retry_on, replacing the top level's whole; absent: the top level's"
    )
    failure_statuses: list[Status] | None = Field(
        default=None, max_length=MAX_STATUSES, description=FAILURE_STATUSES_DESCRIPTION + "; absent: the top level's"
    )

    def module_config(self, top: LoadBalancingModuleConfig) -> LoadBalancingModuleConfig:
        """The library config of this pool: ``top``'s, with every field this pool sets replacing it."""
        fields = set(LoadBalancingModuleConfig.model_fields)
        merged: dict[str, Any] = {k: v for k, v in top.model_dump().items() if k in fields}
        own = self.model_dump(include=self.model_fields_set & fields)
        merged.update(own)
        return LoadBalancingModuleConfig.model_validate(merged)
