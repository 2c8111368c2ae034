"""State stores: the interface and the in-memory default."""

from .base import StateStore
from .memory import MemoryStore

__all__ = ["MemoryStore", "StateStore"]
