"""The pools and routes the admin API shows and changes, and which pool a request names.

A server's pools are its library modules by name (``default`` is the top-level ``backends``);
the admin API reads them through a :class:`Topology` its owner gives: the live mapping of modules
(a reload adds and retires pools in it), the config in force (for the routes table: a reload
replaces it) and this process's count of filter errors (one process; with workers they come with
the workers' figures). Every backend route takes ``?pool=<name>`` (absent: ``default``); an
unknown pool is a 404 naming the pools there are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from ...module import LoadBalancingModule
from ..config import ServerConfig
from ..route_config import DEFAULT_POOL
from .body import BadInput
from .models import RouteView

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


@dataclass(frozen=True)
class RoutesTable:
    """The routes of one config as the API sends them: made once per config, in a thread (a
    table may hold 10,000 routes: seconds of work that must not hold the event loop)."""

    config: ServerConfig | None
    json: bytes  # the list of RouteView, serialised
    by_pool: dict[str, list[str]]  # the names of the routes that send requests to each pool

    @classmethod
    def of(cls, config: ServerConfig | None) -> RoutesTable:
        views = []
        by_pool: dict[str, list[str]] = {}
        for index, route in enumerate(config.routes if config is not None else ()):
            name = route.name or f"route-{index}"  # as :mod:`..routing` names it
            pool = None if route.redirect is not None else route.pool
            if pool is not None:
                by_pool.setdefault(pool, []).append(name)
            view = RouteView(
                index=index,
                name=name,
                match=route.match,
                pool=pool,
                redirect=route.redirect,
                strip_prefix=route.strip_prefix,
                request_headers=route.request_headers,
                response_headers=route.response_headers,
                filters=list(route.filters),
            )
            views.append(view.model_dump(mode="json"))
        return cls(config, json.dumps(views).encode(), by_pool)


def pool_name(request: web.Request) -> str:
    """The pool a request names with ``?pool=`` (``default`` without one); given twice is a 422."""
    given = request.query.getall("pool", [])
    if len(given) > 1:
        raise BadInput(422, "pool: given more than once", "pool")
    return given[0] if given else DEFAULT_POOL
