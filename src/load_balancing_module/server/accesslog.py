"""The proxy's access log: one JSON line per request, through a standard ``logging.Logger``.

Fields: ``time`` (UTC, ISO 8601 with milliseconds), ``request_id``,
``client_ip``, ``method``, ``path`` (the request target without its query),
``status``, ``backend_id`` (the last backend tried, or null), ``attempts``,
``upstream_ms`` (from the first try to the end of the backend's response, or
null), ``total_ms`` (from the complete request head to the end of the answer):
both to the microsecond, measured with the module's clock (``time.perf_counter``),
not the event loop's, which on uvloop ticks in whole milliseconds.
The logger's handlers decide where lines go; the record's ``access`` attribute
carries the same fields as a dict. With the batching handler of ``serve`` as
the logger's only handler, lines skip the LogRecord and go to its list of
lines directly; that handler writes them when 32 KB have gathered, and
``serve`` flushes it every second.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from ..clock import Clock
from .logs import BufferedLineHandler

_quote: Final = encode_basestring_ascii  # the C escaper of json.dumps


def _string(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _plain(value: str | None) -> str:
    """A string that needs no escaping, in quotes."""
    return "null" if value is None else '"' + value + '"'


def _thousandths(value: int) -> str:
    """``value`` / 1000 with three decimals (integer arithmetic: a float's repr or round costs more)."""
    return str(value // 1000) + "." + str(value % 1000 + 1000)[1:]


def _millis(value: float | None) -> str:
    """A duration in milliseconds, to the microsecond."""
    return "null" if value is None else _thousandths(int(value * 1000.0 + 0.5))


class AccessLog:
    """Formats and emits access log lines; costs nothing when the logger is off for INFO."""

    def __init__(self, logger: logging.Logger, clock: Clock) -> None:
        self.logger = logger
        self.clock = clock
        self._second = -1
        self._stamp = ""
        # ``omnixan-lb serve`` gives the access logger one batching handler and nothing else: then a
        # line goes straight to it, without a LogRecord (most of a logged request's cost). Any other
        # set-up (handlers, filters, propagation) gets records as usual.
        only = logger.handlers[0] if len(logger.handlers) == 1 else None
        plain = not logger.filters and not logger.propagate
        self._sink = only if isinstance(only, BufferedLineHandler) and not only.filters and plain else None

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def _time(self) -> str:
        now = self.clock.time()
        second = int(now)
        if second != self._second:  # the date and time part changes once a second
            self._second = second
            self._stamp = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        return self._stamp + "." + str(int((now - second) * 1000.0) + 1000)[1:] + "Z"

    def emit(
        self,
        *,
        request_id: str | None,
        client_ip: str | None,
        method: str | None,
        path: str | None,
        status: int,
        backend_id: str | None,
        attempts: int,
        upstream_ms: float | None,
        total_ms: float,
    ) -> None:
        time = self._time()
        # Formatted by hand (the same JSON as json.dumps gives, a fraction of the cost); strings escaped.
        # The method (an HTTP token) and the client IP (an address) have nothing to escape.
        line = (
            f'{{"time":"{time}","request_id":{_string(request_id)},"client_ip":{_plain(client_ip)},'
            f'"method":{_plain(method)},"path":{_string(path)},"status":{status},'
            f'"backend_id":{_string(backend_id)},"attempts":{attempts},"upstream_ms":{_millis(upstream_ms)},'
            f'"total_ms":{_millis(total_ms)}}}'
        )
        sink = self._sink
        if sink is not None:
            sink.lines.append(line)
            sink.size += len(line) + 1
            if sink.size >= sink.buffer_bytes:
                sink.flush()
            return
        fields: dict[str, Any] = {
            "time": time,
            "request_id": request_id,
            "client_ip": client_ip,
            "method": method,
            "path": path,
            "status": status,
            "backend_id": backend_id,
            "attempts": attempts,
            "upstream_ms": None if upstream_ms is None else round(upstream_ms, 3),
            "total_ms": round(total_ms, 3),
        }
        logger = self.logger
        # makeRecord + handle: what logger.info does, without looking up the caller's frame.
        record = logger.makeRecord(
            logger.name, logging.INFO, "(access log)", 0, line, (), None, extra={"access": fields}
        )
        logger.handle(record)
