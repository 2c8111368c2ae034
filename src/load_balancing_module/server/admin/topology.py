"""The pools and routes the admin API shows and changes, and which pool a request names.

A server's pools are its library modules by name (``default`` is the top-level ``backends``);
the admin API reads them through a :class:`Topology` its owner gives: the live mapping of modules
(a reload adds and retires pools in it), the config in force (for the routes table: a reload
replaces it) and this process's count of filter errors (one process; with workers they come with
the workers' figures). Every backend route takes ``?pool=<name>`` (absent: ``default``); an
unknown pool is a 404 naming the pools there are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ...module import LoadBalancingModule
from ..config import ServerConfig
from ..route_config import DEFAULT_POOL
from .body import BadInput

MAX_NAME_SHOWN = 80  # characters of an unknown pool's name repeated in the error


def _no_errors() -> Mapping[str, int]:
    return {}


def _no_config() -> ServerConfig | None:
    return None


@dataclass(frozen=True)
class Topology:
    """What the admin API sees of pools and routes (see the module docstring)."""

    pools: Mapping[str, LoadBalancingModule]  # by name, ``default`` included; changes with reloads
    config: Callable[[], ServerConfig | None] = _no_config  # the config in force (None: no routes)
    filter_errors: Callable[[], Mapping[str, int]] = field(default=_no_errors)  # this process's

    @classmethod
    def single(cls, lb: LoadBalancingModule) -> Topology:
        """One module, as the pool ``default``, and no routes."""
        return cls({DEFAULT_POOL: lb})

    def module(self, name: str) -> LoadBalancingModule:
        """The module of pool ``name``; :class:`BadInput` 404 naming the known pools otherwise."""
        lb = self.pools.get(name)
        if lb is None:
            known = ", ".join(self.pools)
            raise BadInput(404, f"pool: no pool named {name[:MAX_NAME_SHOWN]!r} (pools: {known})", "pool")
        return lb

    def routes(self) -> list[dict[str, Any]]:
        """The routes table, one row per route in match order (as :mod:`..routing` names them)."""
        config = self.config()
        if config is None:
            return []
        rows = []
        for index, route in enumerate(config.routes):
            redirect = route.redirect
            rows.append(
                {
                    "index": index,
                    "name": route.name or f"route-{index}",
                    "match": route.match.model_dump(mode="json"),
                    "pool": None if redirect is not None else route.pool,
                    "redirect": None if redirect is None else redirect.model_dump(mode="json"),
                    "strip_prefix": route.strip_prefix,
                    "request_headers": route.request_headers.model_dump(mode="json"),
                    "response_headers": route.response_headers.model_dump(mode="json"),
                    "filters": list(route.filters),
                }
            )
        return rows


def pool_name(request: web.Request) -> str:
    """The pool a request names with ``?pool=`` (``default`` without one); given twice is a 422."""
    given = request.query.getall("pool", [])
    if len(given) > 1:
        raise BadInput(422, "pool: given more than once", "pool")
    return given[0] if given else DEFAULT_POOL
