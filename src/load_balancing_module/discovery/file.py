"""Backends from a file that a deploy tool (or consul-template) writes: YAML or JSON.

The file holds a list of backends, or a mapping whose ``backends`` is that list; each backend
has the fields of :class:`~load_balancing_module.BackendConfig` (``host``, ``port``, ``weight``,
...). It is polled: its modification time, size and inode are compared every ``interval``
seconds on the clock (no inotify: it works on every file system, and with a fake clock), and
read again when one of them changed. A file written in place may be caught half written: write
a temporary file and rename it over the watched one, which changes the inode at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from .._extras import missing_extra
from ..clock import Clock, SystemClock
from ..config import BackendConfig
from .provider import DiscoveryError

MAX_FILE_BYTES: Final = 16 * 1024 * 1024


class FileProvider:
    """Watches ``path`` (see the module docstring); a bad file raises :class:`DiscoveryError`
    naming it, which keeps the last good set."""

    def __init__(self, path: str | os.PathLike[str], *, interval: float = 2.0, clock: Clock | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval: must be > 0, got {interval}")
        self.path = Path(path)
        self.interval = interval
        self.clock: Clock = clock if clock is not None else SystemClock()

    async def watch(self) -> AsyncIterator[list[BackendConfig]]:
        seen: tuple[int, int, int] | None = None
        while True:
            signature = self._signature()
            if signature != seen:
                backends = self.read()
                seen = signature
                yield backends
            await self.clock.sleep(self.interval)

    def _signature(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise DiscoveryError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def read(self) -> list[BackendConfig]:
        """The backends the file lists now, or :class:`DiscoveryError` naming the file."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise DiscoveryError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise DiscoveryError(f"{self.path}: larger than {MAX_FILE_BYTES} bytes")
        return parse_backends(_load(self.path, raw), str(self.path))


def _load(path: Path, raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DiscoveryError(f"{path}: not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise DiscoveryError(f"{path}: not valid JSON: {exc}") from None
    try:
        import yaml
    except ModuleNotFoundError as exc:
        raise missing_extra("a YAML discovery file", "server", "yaml") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DiscoveryError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def parse_backends(document: Any, source: str) -> list[BackendConfig]:
    """A list of backends, or ``{backends: [...]}``, as :class:`BackendConfig` s; an error names
    ``source`` and the entry."""
    if isinstance(document, dict) and set(document) == {"backends"}:
        document = document["backends"]
    if not isinstance(document, list):
        raise DiscoveryError(
            f"{source}: expected a list of backends or {{backends: [...]}}, got {type(document).__name__}"
        )
    backends = []
    for i, entry in enumerate(document):
        try:
            backends.append(BackendConfig.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors())
            raise DiscoveryError(f"{source}: backends[{i}]: {problems}") from None
    return backends
