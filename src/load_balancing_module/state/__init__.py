"""State stores: the interface, the in-memory default, and Redis for several balancers."""

from .base import StateStore
from .memory import MemoryStore
from .redis import RedisStore

__all__ = ["MemoryStore", "RedisStore", "StateStore"]
