"""The phases of an exchange, and what moves it from one to the next.

An exchange (:class:`.exchange.Exchange`) is in one :class:`Phase` at a time and
moves only by these transitions, each a method named for its event (as h11's
state table)::

    QUEUED     start                     -> FILTERING (a route with filters) | BUFFERING | ROUTING
               a redirect route          -> DONE (the redirect is the answer)
    FILTERING  the route's request filters ran -> BUFFERING | ROUTING; a filter answered or failed -> DONE
    BUFFERING  body read (or 64 KiB)     -> ROUTING
    ROUTING    routed                    -> SENT (pooled connection) | CONNECTING
               no backend                -> DONE (429 / 503 / 504)
    CONNECTING connected                 -> SENT;  failed -> SETTLING
    SENT       response head             -> STREAMING | TUNNEL (101);  failure -> SETTLING
    STREAMING  response end, cut short   -> SETTLING
    TUNNEL     either side closes        -> SETTLING
    SETTLING   the try's outcome is acted on, after the read that brought it has been written:
               success, or nothing to retry  -> DONE
               a pooled connection was stale -> CONNECTING (a fresh one, same try)
               another backend may be tried  -> BACKOFF -> ROUTING
    any        client gone or its request broken -> DONE (the try is abandoned, never blamed)

A request that needs no waiting (routed at once, a pooled connection) takes the
same transitions as any other; only a transition that must wait (a free slot, a
new connection, a back-off) runs in a small task.
"""

from __future__ import annotations

import enum
from typing import Final


class Phase(enum.IntEnum):
    """Where an exchange is (the transitions are in the module docstring)."""

    QUEUED = 0  # behind an earlier request on its connection, or not started yet
    BUFFERING = 1  # reading the request body before a backend is chosen
    ROUTING = 2  # the library is choosing a backend (it may wait for a free slot)
    CONNECTING = 3  # opening a connection to the chosen backend
    SENT = 4  # the request is going out on an upstream connection; no response head yet
    STREAMING = 5  # the response head went to the client; its body follows
    TUNNEL = 6  # after a 101: bytes go both ways until either side closes
    SETTLING = 7  # the try's outcome is known; it is acted on once the read that brought it is written
    BACKOFF = 8  # a try failed and another backend will be tried after a pause
    DONE = 9  # logged, counted, and its connection told
    FILTERING = 10  # the route's request filters run (one of them may await)


# The phases in which a try is out on an upstream connection.
ON_UPSTREAM: Final = (Phase.SENT, Phase.STREAMING, Phase.TUNNEL)
