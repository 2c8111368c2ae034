"""Logging for the server: one JSON object per line on stderr.

The access log is written in batches (:class:`BufferedLineHandler`): up to 32 KB
or 1 s of lines, as NGINX's ``access_log ... buffer=32k flush=1s``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", ...always, "event", ...fields}``; plain messages go under
    ``message``. ``always``: fields on every line (a worker's number)."""

    def __init__(self, always: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.always = always or {}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            **self.always,
        }
        event = getattr(record, "event", None)
        if event is not None:
            line["event"] = event
            line.update(getattr(record, "fields", {}))
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


ACCESS_LOGGER = "omnixan_lb.access"
ACCESS_BUFFER_BYTES = 32 * 1024  # as NGINX's ``access_log ... buffer=32k flush=1s``
ACCESS_FLUSH_SECONDS = 1.0
ATOMIC_WRITE = 4096  # PIPE_BUF on Linux: characters per write (a line of ASCII JSON: one byte each)


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes formatted lines in batches: when ``buffer_bytes`` have gathered, or when a line
    comes ``flush_seconds`` after the last write; :meth:`flush` writes at once (the server calls
    it every ``flush_seconds`` and when it stops). One write per batch instead of per request.

    ``lines`` is one list for the handler's life (emptied in place), so the access log can append
    to it directly (see AccessLog) and add the length to ``size``."""

    def __init__(
        self,
        stream: Any,
        *,
        buffer_bytes: int = ACCESS_BUFFER_BYTES,
        flush_seconds: float = ACCESS_FLUSH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stream)
        self.buffer_bytes = buffer_bytes
        self.flush_seconds = flush_seconds
        self._clock = clock
        self.lines: list[str] = []
        self.size = 0
        self._written = clock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add(line)

    def add(self, line: str) -> None:
        """Take a formatted line (the access log's shortcut past the LogRecord, see AccessLog)."""
        self.lines.append(line)
        self.size += len(line) + 1
        if self.size >= self.buffer_bytes or self._clock() - self._written >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._written = self._clock()
        if not self.lines:
            return
        lines = self.lines[:]
        self.lines.clear()
        self.size = 0
        try:
            for piece in whole_lines(lines, ATOMIC_WRITE):
                self.stream.write(piece)
                self.stream.flush()
        except (OSError, ValueError) as exc:  # a closed or broken stream must not take the proxy down
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"access log: {len(lines)} lines lost: {exc}\n")

    def close(self) -> None:
        self.flush()
        super().close()


def whole_lines(lines: list[str], limit: int) -> list[str]:
    """``lines`` joined into pieces of at most ``limit`` characters, each ending with a whole line
    (a longer line is a piece of its own). Workers share stderr: a write to a pipe of at most
    PIPE_BUF bytes is never mixed with another process's, so no line is torn by another worker's."""
    pieces: list[str] = []
    held: list[str] = []
    size = 0
    for line in lines:
        if held and size + len(line) + 1 > limit:
            pieces.append("\n".join(held) + "\n")
            held, size = [], 0
        held.append(line)
        size += len(line) + 1
    if held:
        pieces.append("\n".join(held) + "\n")
    return pieces


async def flush_access_log_every(seconds: float) -> None:
    """Access log lines wait in a buffer at most this long, even when traffic stops."""
    while True:
        await asyncio.sleep(seconds)
        flush_access_log()


def flush_access_log() -> None:
    """Write out what the access log's handlers hold (called periodically and at shutdown)."""
    for handler in logging.getLogger(ACCESS_LOGGER).handlers:
        handler.flush()


def setup_logging(level: str = "info", fields: dict[str, Any] | None = None) -> None:
    """JSON lines on stderr, with ``fields`` on each; the access log's lines are JSON already and
    pass as they are."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(fields))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The JSON lines name neither thread nor process: do not look them up for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    access = logging.getLogger(ACCESS_LOGGER)
    access_handler = BufferedLineHandler(sys.stderr)
    access_handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers = [access_handler]
    access.setLevel(logging.INFO)  # every request, whatever --log-level says
    access.propagate = False
