"""The access log's batching handler: lines go out in batches, by size or by age, and on flush."""

from __future__ import annotations

import io
import logging

from load_balancing_module.server.logs import BufferedLineHandler


class Stream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def emit(handler: BufferedLineHandler, text: str) -> None:
    handler.handle(logging.LogRecord("access", logging.INFO, "x", 0, text, (), None))


def test_lines_wait_until_the_buffer_is_full_then_go_out_in_one_write() -> None:
    stream = Stream()
    handler = BufferedLineHandler(stream, buffer_bytes=45, flush_seconds=1.0, clock=lambda: 0.0)
    for i in range(3):
        emit(handler, f"line {i} 12345")  # 14 bytes with its newline: 42 held
    assert stream.getvalue() == "" and stream.writes == 0
    emit(handler, "line 3 12345")  # 56 >= 45: all four go out together
    assert stream.getvalue().splitlines() == [f"line {i} 12345" for i in range(4)]
    assert stream.writes == 1


def test_a_line_after_the_flush_interval_writes_the_batch() -> None:
    stream, now = Stream(), [0.0]
    handler = BufferedLineHandler(stream, buffer_bytes=1 << 20, flush_seconds=1.0, clock=lambda: now[0])
    emit(handler, "a")
    now[0] = 0.5
    emit(handler, "b")
    assert stream.getvalue() == ""
    now[0] = 1.0
    emit(handler, "c")
    assert stream.getvalue() == "a\nb\nc\n" and stream.writes == 1


def test_flush_and_close_write_what_is_held() -> None:
    stream = Stream()
    handler = BufferedLineHandler(stream, buffer_bytes=1 << 20, flush_seconds=60.0, clock=lambda: 0.0)
    emit(handler, "a")
    handler.flush()
    assert stream.getvalue() == "a\n"
    emit(handler, "b")
    handler.close()
    assert stream.getvalue() == "a\nb\n" and stream.writes == 2


def test_the_access_log_writes_the_same_line_directly_or_through_a_record() -> None:
    from load_balancing_module.clock import FakeClock
    from load_balancing_module.server.accesslog import AccessLog
    from load_balancing_module.server.logformat import Entry

    entry = Entry("r-1", "10.0.0.1", b"GET", b'/a"b?x=1', 200)
    entry.backend_id, entry.attempts, entry.upstream_ms, entry.total_ms = "127.0.0.1:1", 1, 1.25, 2.5
    lines = []
    for direct in (True, False):
        logger = logging.getLogger(f"test.access.{direct}")
        logger.propagate = False
        stream = Stream()
        handler = BufferedLineHandler(stream, flush_seconds=60.0, clock=lambda: 0.0)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.handlers = [handler]
        if not direct:
            logger.addFilter(lambda record: True)  # a filter: records are needed
        access = AccessLog(logger, FakeClock())
        assert (access._sink is handler) == direct
        access.emit(entry)
        handler.flush()
        lines.append(stream.getvalue())
    assert lines[0] == lines[1] and '"path":"/a\\"b"' in lines[0] and lines[0].endswith("}\n")


def test_a_large_batch_goes_out_in_pieces_of_whole_lines_that_no_other_worker_can_tear() -> None:
    stream = Stream()
    handler = BufferedLineHandler(stream, buffer_bytes=1 << 20, flush_seconds=60.0, clock=lambda: 0.0)
    lines = [f"{i:04d} " + "x" * 995 for i in range(10)]  # 1,001 bytes with the newline
    for line in lines:
        emit(handler, line)
    emit(handler, "y" * 5000)  # longer than a piece: alone
    handler.flush()
    assert stream.getvalue().splitlines() == [*lines, "y" * 5000]
    assert stream.writes == 4  # 4 + 4 + 2 lines of 1,001 bytes, then the long one
