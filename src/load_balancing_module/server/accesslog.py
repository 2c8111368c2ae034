"""The proxy's access log: one line per request, through a standard ``logging.Logger``.

The line's format is the config's (``access_log: {format: json | combined | "<template>"}``,
:mod:`.logformat`), built once per config. JSON fields: ``time`` (UTC, ISO 8601 with
milliseconds), ``request_id``, ``client_ip``, ``method``, ``path`` (the request target
without its query), ``protocol``, ``status``, ``host``, ``user_agent``, ``tls_version``
(null on a plain listener), ``route``, ``pool``, ``backend_id`` (the last backend tried,
or null), ``attempts``, ``request_bytes`` (the request body received),
``response_bytes`` (head and body sent to the client), ``response_body_bytes``,
``upstream_connect_ms`` (the last try's connect; 0 on a pooled connection),
``upstream_header_ms`` (the last try's start to its response head), ``upstream_ms``
(from the first try to the end of the backend's response, or null), ``total_ms`` (from
the complete request head to the end of the answer): durations to the microsecond,
measured with the module's clock (``time.perf_counter``), not the event loop's, which on
uvloop ticks in whole milliseconds.
The logger's handlers decide where lines go; the record's ``access`` attribute
carries the JSON's fields as a dict, whatever the format. With the batching handler of
``serve`` as the logger's only handler, lines skip the LogRecord and go to its list of
lines directly; that handler writes them when 32 KB have gathered, and ``serve`` flushes
it every second.
"""

from __future__ import annotations

import logging

from ..clock import Clock
from .logformat import Entry, Format, JsonFormat
from .logs import BufferedLineHandler


class AccessLog:
    """Formats and emits access log lines; costs nothing when the logger is off for INFO."""

    def __init__(self, logger: logging.Logger, clock: Clock, format: Format | None = None) -> None:
        self.logger = logger
        self.clock = clock
        self.format = format if format is not None else JsonFormat()
        # ``omnixan-lb serve`` gives the access logger one batching handler and nothing else: then a
        # line goes straight to it, without a LogRecord (most of a logged request's cost). Any other
        # set-up (handlers, filters, propagation) gets records as usual.
        only = logger.handlers[0] if len(logger.handlers) == 1 else None
        plain = not logger.filters and not logger.propagate
        self._sink = only if isinstance(only, BufferedLineHandler) and not only.filters and plain else None

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def emit(self, entry: Entry) -> None:
        entry.time = self.clock.time()
        line = self.format.line(entry)
        sink = self._sink
        if sink is not None:
            sink.lines.append(line)
            sink.size += len(line) + 1
            if sink.size >= sink.buffer_bytes:
                sink.flush()
            return
        logger = self.logger
        # makeRecord + handle: what logger.info does, without looking up the caller's frame.
        record = logger.makeRecord(
            logger.name, logging.INFO, "(access log)", 0, line, (), None, extra={"access": self.format.fields(entry)}
        )
        logger.handle(record)
