"""Where a :class:`~.redis.RedisStore` connects, from a URL: one Redis, a Sentinel-watched primary, a Cluster.

- ``redis://`` / ``rediss://``: one server (redis-py's own URL);
- ``redis+sentinel://[password@]host:port,host:port/service[/db]``: the primary the Sentinels name
  for ``service``, followed across failovers (redis-py's ``Sentinel.master_for``);
- ``redis+cluster://[password@]host:port,host:port``: a Redis Cluster, found from any of its nodes
  (redis-py's ``RedisCluster``).

``[user:password@]`` is accepted too. Parsing imports nothing from redis (the package's import
stays lean); making a client does. Messages never repeat the URL: it may hold a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

SENTINEL = "redis+sentinel"
CLUSTER = "redis+cluster"
SENTINEL_PORT = 26379
REDIS_PORT = 6379
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]/@,]+))(?::(?P<port>\d{1,5}))?")
_SERVICE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


@dataclass(frozen=True)
class Nodes:
    """A ``redis+sentinel://`` or ``redis+cluster://`` URL, parsed."""

    scheme: str
    hosts: tuple[tuple[str, int], ...]
    service: str  # the Sentinel's service name ("" for a cluster)
    db: int
    username: str | None
    password: str | None


def is_multi_node(url: str) -> bool:
    """Whether ``url`` names Sentinels or a Cluster (rather than one server)."""
    return url.startswith((SENTINEL + "://", CLUSTER + "://"))


def parse_nodes(url: str) -> Nodes:
    """``url`` (``redis+sentinel://`` or ``redis+cluster://``) parsed; ValueError says what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in (SENTINEL, CLUSTER):
        raise ValueError(f"not a {SENTINEL}:// or {CLUSTER}:// URL")
    netloc, _, path = rest.partition("/")
    if "?" in path or "#" in path or "?" in netloc or "#" in netloc:
        raise ValueError("the Redis URL takes no query parameters; use the state mapping's fields")
    credentials, at, hostlist = netloc.rpartition("@")
    username, password = _credentials(credentials) if at else (None, None)
    default_port = SENTINEL_PORT if scheme == SENTINEL else REDIS_PORT
    hosts = tuple(_host_port(item, default_port) for item in hostlist.split(","))
    segments = path.split("/") if path else []
    if scheme == CLUSTER:
        if any(segments):
            raise ValueError("a Redis Cluster URL names nodes only, no database: redis+cluster://host:7000,host:7001")
        return Nodes(scheme, hosts, "", 0, username, password)
    if not segments or not _SERVICE.fullmatch(segments[0]):
        raise ValueError("the Sentinel URL needs the service name: redis+sentinel://host:26379,host:26380/mymaster")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ValueError("after the service name, only a database number: redis+sentinel://host:26379/mymaster/0")
    db = int(segments[1]) if len(segments) == 2 else 0
    return Nodes(scheme, hosts, segments[0], db, username, password)


def _credentials(text: str) -> tuple[str | None, str | None]:
    """``password`` or ``user:password`` (percent-encoded)."""
    user, colon, password = text.partition(":")
    if not colon:
        return None, unquote(text) or None
    return unquote(user) or None, unquote(password) or None


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    match = _HOST_PORT.fullmatch(item)
    if match is None:
        raise ValueError(f"each node is host:port, as in 127.0.0.1:{default_port}; got {item!r}")
    port = int(match["port"]) if match["port"] else default_port
    if not 1 <= port <= 65535:
        raise ValueError(f"the port of node {item!r} must be in 1..65535")
    return match["v6"] or match["name"], port


def connect(url: str, options: dict[str, Any]) -> Redis | RedisCluster:
    """A client for ``url`` with redis-py's connection ``options`` (timeouts, retry, pool size...)."""
    if not is_multi_node(url):
        from redis.asyncio import Redis

        return Redis.from_url(url, **options)
    nodes = parse_nodes(url)
    auth: dict[str, Any] = {"username": nodes.username, "password": nodes.password}
    if nodes.scheme == CLUSTER:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        # Other nodes keep serving their slots while one is down (the store fails open for that one's).
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes.hosts],
            require_full_coverage=False,
            **auth,
            **options,
        )
    from redis.asyncio.sentinel import Sentinel

    # The Sentinels get the timeouts only; the password is the primary's.
    sentinel_options = {key: value for key, value in options.items() if key.startswith("socket_")}
    sentinel = Sentinel(list(nodes.hosts), sentinel_kwargs=sentinel_options)
    primary: Redis = sentinel.master_for(nodes.service, db=nodes.db, **auth, **options)
    return primary


def describe(client: Any) -> str:
    """A URL for logs naming where ``client`` (one the caller made) connects."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a RedisCluster: the nodes it was given (it learns the others on its first call)
        return f"{CLUSTER}://{','.join(client.nodes_manager.startup_nodes)}"
    service = getattr(pool, "service_name", None)
    kwargs = pool.connection_kwargs
    if service is not None:
        manager = pool.sentinel_manager
        sentinels = ",".join(
            f"{s.connection_pool.connection_kwargs.get('host')}:{s.connection_pool.connection_kwargs.get('port')}"
            for s in manager.sentinels
        )
        return f"{SENTINEL}://{sentinels}/{service}/{kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', REDIS_PORT)}/{kwargs.get('db', 0)}"


def redact(url: str) -> str:
    """``url`` without its password, for logs (in a multi-node URL, ``secret@`` is a password)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = credentials.partition(":")
    if not colon and not is_multi_node(url):  # redis://name@host: a user name, no password
        return url
    masked = f"{user}:***" if colon else "***"
    return f"{scheme}://{masked}@{hosts}{slash}{path}"
