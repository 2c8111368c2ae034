"""The admin listener: runtime API, dashboard, health, metrics and the OpenAPI document.

- :mod:`.app`: the aiohttp application, its middlewares and lifecycle (:class:`AdminServer`).
- :mod:`.guard`: which requests may reach it at all (Host, Origin, Content-Type).
- :mod:`.api`: the handlers; :mod:`.body`: request bodies as JSON the API can keep.
- :mod:`.topology`: the pools and routes the API shows, and which pool a request names.
- :mod:`.models`: the request and response bodies, as pydantic models.
- :mod:`.routes`: the one table of routes, from which the router and the document are built.
- :mod:`.openapi`: the OpenAPI 3.1 document, generated from the table and the models.
"""

from __future__ import annotations

from .app import AdminServer, admin_token
from .topology import Topology

__all__ = ["AdminServer", "Topology", "admin_token"]
