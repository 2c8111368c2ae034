"""The reader of a client connection: cuts its byte stream into requests and their parts.

llhttp is never given the client's stream as it comes: a :class:`RequestReader`
cuts it at the boundaries of every request and of its parts, reads each method
and each chunk-size line itself, and gives llhttp exactly one head,
Content-Length body or trailer section at a time; so every bound holds in any
split of the stream (``docs/http.md``). What it reads goes to its
:class:`RequestSink` (the connection): a request begins, its head is complete
(checked by :func:`.http.inspect_request`), a piece of its body, its end.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from ..build import mypyc_attr
from .headers import Header
from .http import (
    LLHTTP_METHODS,
    HttpError,
    RequestInfo,
    check_raw_transfer_encoding,
    chunk_size,
    inspect_request,
    request_framing,
    request_method,
)

if TYPE_CHECKING:
    from .context import ProxyContext

CHUNK_LINE_LIMIT: Final = 4096  # bytes of a chunk-size line (size, extensions, CRLF)
# What the reader expects next (RequestReader._phase). It sees each request line and each chunk-size
# line before llhttp does, and counts a head (or a trailer section) as the bytes it really is.
_AT_START: Final = 0  # a request line, after any empty lines
_IN_HEAD: Final = 1  # a head, given to llhttp up to the blank line found here
_IN_LENGTH: Final = 2  # a Content-Length body, given to llhttp
_CHUNK_SIZE: Final = 3  # a chunk-size line, read here (llhttp never sees one)
_CHUNK_DATA: Final = 4  # a chunk's data, handed on here
_CHUNK_END: Final = 5  # the CRLF after a chunk's data
_TRAILERS: Final = 6  # the trailer section, given to llhttp after a last-chunk line "0" of the reader's own
# bytes.find and bytes.partition themselves: the compiled build calls a method of bytes that it has
# no primitive for by name (a lookup each time), a function it holds directly. (find parses its
# arguments from a tuple, some 800 instructions; partition takes one argument.)
_find: Final = bytes.find
_partition: Final = bytes.partition


@mypyc_attr(allow_interpreted_subclasses=True)  # a test's recording sink
class RequestSink(asyncio.Protocol):
    """What a reader reports, in order, for each request: the client connection.

    A base class rather than a Protocol: the compiled build then calls these methods directly,
    not by name."""

    def message_begun(self) -> bool:
        """A request line begins; False: read nothing more on this connection."""
        raise NotImplementedError

    def head_received(self, info: RequestInfo, upgrade: bool) -> None:
        """The head is complete and checked; ``upgrade``: llhttp saw an Upgrade request."""
        raise NotImplementedError

    def body_received(self, data: bytes) -> None:
        raise NotImplementedError

    def message_done(self) -> None:
        raise NotImplementedError

    def upgraded_at(self, data: bytes, stop: int) -> int:
        """llhttp stopped at the end of an upgrade request's head, at ``data[stop]``: where the
        reader goes on (the end of ``data`` when the rest is not HTTP)."""
        raise NotImplementedError

    def read_failed(self, exc: BaseException) -> None:
        """The stream broke a rule (an :class:`HttpError`), or the proxy failed reading it."""
        raise NotImplementedError


class _Stop(Exception):
    """Raised in a parser callback: parse no further, the connection is closing."""


class RequestReader:
    """One client connection's parser and the reader that feeds it (see the module docstring)."""

    def __init__(self, ctx: ProxyContext, sink: RequestSink) -> None:
        self._ctx = ctx
        self._sink = sink
        self.parser = HttpRequestParser(self)
        self._feed = self.parser.feed_data  # bound once (see _read_head); set with every new parser
        self.stopped = False  # read no more: every further byte is dropped
        self.now = 0.0  # the loop's time when the read being parsed arrived
        self._synthetic = False  # feeding a made-up head to a fresh parser (see reframe)
        self._reframe = False
        # the head being parsed
        self._url = b""
        self._headers: list[Header] = []
        self._in_head = False
        self._method = b""
        self._phase = _AT_START
        self._pending = b""  # the start of a request line that ended a read before its method did
        self._skip = 0  # bytes of a method llhttp was given "GET" for, still to be skipped
        self._seen = 0  # bytes of the head (or trailer section) in earlier reads
        self._tail = b""  # their last bytes, up to 3: a blank line may begin in one read and end in the next
        self._raw: list[bytes] | None = None  # the head's bytes from earlier reads
        self._data = b""  # the read in which the head ended, from _head_from to _head_to
        self._head_from = 0
        self._head_to = 0
        self._left = 0  # bytes left of a Content-Length body, or of a chunk's data
        self._line = b""  # a chunk-size line so far
        self._crlf = 0  # bytes of the CRLF after a chunk's data read so far

    def feed(self, data: bytes, now: float) -> None:
        """Cut ``data`` (read at ``now``) at the boundaries of requests and of their parts.

        llhttp reads heads, Content-Length bodies and trailer sections, given exactly those bytes;
        the reader itself finds where each ends, reads request methods (llhttp knows a fixed list:
        it is given "GET" for any other) and chunk-size lines (llhttp refuses whitespace the RFC
        allows in extensions). So every bound and every check holds in any split of the stream."""
        self.now = now  # for everything this read brings
        if self._pending:
            data = self._pending + data
            self._pending = b""
        pos = 0
        end = len(data)
        try:
            while pos < end and not self.stopped:
                phase = self._phase
                if phase == _AT_START:
                    # startswith with a start is called by name in the compiled build; without, natively
                    if not (data.startswith(b"GET ") if pos == 0 else data.startswith(b"GET ", pos)):
                        pos = self._read_start(data, pos)
                        continue
                    self._method = b"GET"  # most requests: nothing more to read before the head
                    self._phase = _IN_HEAD
                    pos = self._read_head(data, pos)
                elif phase == _IN_HEAD:
                    pos = self._read_head(data, pos)
                elif phase == _CHUNK_DATA:
                    pos = self._read_chunk_data(data, pos)
                elif phase == _IN_LENGTH:
                    pos = self._read_length(data, pos)
                elif phase == _CHUNK_SIZE:
                    pos = self._read_chunk_size(data, pos)
                elif phase == _CHUNK_END:
                    pos = self._read_chunk_end(data, pos)
                else:
                    pos = self._read_trailers(data, pos)
        except HttpParserCallbackError as exc:
            self._failed(exc.__context__ or exc)
        except HttpParserError as exc:
            self._failed(HttpError(400, f"malformed request: {exc}"))
        except Exception as exc:  # an HttpError of the reader's, or a fault of the proxy's (500)
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.stopped = True
        if not isinstance(exc, _Stop):
            self._sink.read_failed(exc)

    def reframe(self, info: RequestInfo) -> None:
        """An upgrade the proxy ignores, with a body: llhttp stopped at the head. Read the body
        (and what follows) with a fresh parser primed by a head with the same framing."""
        self.parser = HttpRequestParser(self)
        self._feed = self.parser.feed_data
        self._synthetic = True
        try:
            self._feed(b"POST / HTTP/1.1\r\nHost: x\r\n%s\r\n" % request_framing(info))
        finally:
            self._synthetic = False

    # -- the parts of a request ------------------------------------------------------------------

    def _read_start(self, data: bytes, pos: int) -> int:
        """A request line other than ``GET ...`` begins at ``pos``: read its method."""
        first = data[pos]
        if first == 13 or first == 10:  # empty lines before a request (RFC 9112 2.2): llhttp skips them
            stop = pos + 1
            while stop < len(data) and (data[stop] == 13 or data[stop] == 10):
                stop += 1
            self._feed(data[pos:stop])
            return stop
        method = request_method(data, pos)
        if method is None:  # the method goes on in the next read
            self._pending = data[pos:]
            return len(data)
        self._method = method
        if method not in LLHTTP_METHODS:
            self._feed(b"GET")  # llhttp reads the rest of the line as for any method
            self._skip = len(method)
        self._phase = _IN_HEAD
        return pos

    def _read_head(self, data: bytes, pos: int) -> int:
        """The head from ``pos`` on, to llhttp, up to its blank line: at most ``max_header_bytes``
        from its first byte to its blank line included, whatever llhttp itself would drop.
        Between heads, ``_seen`` is 0, ``_tail`` empty and ``_raw`` None."""
        end = len(data)
        if self._tail:
            stop = self._blank_line(data, pos)
        elif pos == 0 and data.endswith(b"\r\n\r\n"):  # a read that is one head, most often
            stop = len(_partition(data, b"\r\n\r\n")[0]) + 4  # the first blank line, found
        else:
            stop = _find(data, b"\r\n\r\n", pos)
            if stop >= 0:
                stop += 4
        seen = self._seen
        if seen + (end if stop < 0 else stop) - pos > self._ctx.max_header_bytes:
            raise HttpError(431, "request head too large")
        skip = self._skip
        if skip:
            self._skip = 0
        if stop < 0:  # the head goes on in the next read
            piece = data[pos:] if pos else data
            self._seen = seen + end - pos
            self._keep_tail(piece)
            if self._raw is None:
                self._raw = [piece]
            else:
                self._raw.append(piece)
            self._feed(piece[skip:] if skip else piece)
            return end
        if seen:
            self._seen = 0
            self._tail = b""
        self._data = data
        self._head_from = pos
        self._head_to = stop
        try:
            self._feed(data if stop == end and not pos and not skip else data[pos + skip : stop])
        except HttpParserUpgrade:
            return self._sink.upgraded_at(data, stop)
        finally:
            self._data = b""  # a read may be large: not kept beyond its head
            self._raw = None
        if self._in_head:  # llhttp did not end the head at its blank line (it never should)
            raise HttpError(400, "malformed request head")
        return stop

    def _blank_line(self, data: bytes, pos: int) -> int:
        """Where the CRLF CRLF that ends a head (or a trailer section) ends, from ``pos`` on, counting
        the bytes of ``_tail`` before it; -1 if it is not in ``data``."""
        tail = self._tail
        if tail:
            i = (tail + data[pos : pos + 3]).find(b"\r\n\r\n")
            if i >= 0:
                return pos + i + 4 - len(tail)
        i = data.find(b"\r\n\r\n", pos)
        return i + 4 if i >= 0 else -1

    def _keep_tail(self, piece: bytes) -> None:
        self._tail = piece[-3:] if len(piece) >= 3 else (self._tail + piece)[-3:]

    def _raw_head(self) -> bytes:
        """The head being parsed as it came, blank line included."""
        last = self._data[self._head_from : self._head_to]
        return last if self._raw is None else b"".join(self._raw) + last

    def _read_length(self, data: bytes, pos: int) -> int:
        end = len(data)
        stop = min(end, pos + self._left)
        self._left -= stop - pos
        self._feed(data if stop == end and not pos else data[pos:stop])
        return stop

    def _read_chunk_size(self, data: bytes, pos: int) -> int:
        line = self._line
        lf = data.find(b"\n", pos, pos + CHUNK_LINE_LIMIT - len(line))
        if lf < 0:
            if len(line) + len(data) - pos >= CHUNK_LINE_LIMIT:
                raise HttpError(400, f"chunk extensions longer than {CHUNK_LINE_LIMIT} bytes (a chunk-size line)")
            self._line = line + data[pos:]
            return len(data)
        self._line = b""
        size = chunk_size(line + data[pos : lf + 1] if line else data[pos : lf + 1])
        if size:
            self._left = size
            self._phase = _CHUNK_DATA
        else:  # the last chunk: llhttp reads the trailer section, after a last-chunk line of the reader's
            self._phase = _TRAILERS
            self._tail = b"\r\n"  # the blank line that ends an empty trailer section begins with this CRLF
            self._feed(b"0\r\n")
        return lf + 1

    def _read_chunk_data(self, data: bytes, pos: int) -> int:
        end = len(data)
        stop = min(end, pos + self._left)
        self._left -= stop - pos
        if not self._left:
            self._phase = _CHUNK_END
            self._crlf = 0
        self._sink.body_received(data if stop == end and not pos else data[pos:stop])
        return stop

    def _read_chunk_end(self, data: bytes, pos: int) -> int:
        end = len(data)
        got = self._crlf
        while got < 2 and pos < end:
            if data[pos] != (13 if got == 0 else 10):
                raise HttpError(400, "malformed request: chunk data not followed by CRLF")
            pos += 1
            got += 1
        self._crlf = got
        if got == 2:
            self._phase = _CHUNK_SIZE
        return pos

    def _read_trailers(self, data: bytes, pos: int) -> int:
        """The trailer section, to llhttp (which checks its lines), up to its blank line: at most
        ``max_header_bytes``. Trailers are not forwarded (see ``on_header``)."""
        end = len(data)
        stop = self._blank_line(data, pos)
        if self._seen + (end if stop < 0 else stop) - pos > self._ctx.max_header_bytes:
            raise HttpError(431, "request trailers too large")
        if stop < 0:
            piece = data[pos:]
            self._seen += end - pos
            self._keep_tail(piece)
            self._feed(piece)
            return end
        self._seen = 0
        self._tail = b""
        self._feed(data[pos:stop])
        if self._phase == _TRAILERS:  # llhttp did not end the message at the blank line (it never should)
            raise HttpError(400, "malformed request: trailer section")
        return stop

    # -- llhttp's callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        if not self._sink.message_begun():
            raise _Stop
        self._url = b""
        self._headers = []
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        self._url = self._url + url if self._url else url  # the usual case: one piece, not copied

    def on_header(self, name: bytes, value: bytes) -> None:
        # The reader has bounded the head. Trailers (after the head) are dropped: none is forwarded,
        # so none of the fields that must not be trailers (RFC 9110 6.5.1) can reach a backend as one.
        if self._in_head and not self._synthetic:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        self._in_head = False
        info = inspect_request(self._method, self._url, self._version(), self._headers, self.parser)
        upgrade = info.upgrade
        if info.chunked:
            check_raw_transfer_encoding(self._raw_head())
            self._phase = _CHUNK_SIZE
            self._line = b""
        elif info.content_length:
            self._phase = _IN_LENGTH
            self._left = info.content_length
        elif info.plain and self._raw is None and not self._head_from:
            # The head is the start of this read (the usual case): it is sent on as it came.
            info.raw_head = self._data[: self._head_to - 2]
        limit = self._ctx.max_body_bytes
        if limit and info.content_length is not None and info.content_length > limit:
            raise HttpError(413, f"request body larger than {limit} bytes")
        self._reframe = info.has_body and upgrade  # an ignored upgrade (h2c...) with a body
        self._sink.head_received(info, upgrade)

    def _version(self) -> str:
        """The head's HTTP version, as llhttp read it. Read from the request line of a head that came
        in one read (llhttp's getter formats a new string each time, some 2,000 instructions): that
        line is ``method SP target SP version CRLF``, and no CR comes before its end; with more
        spaces (if llhttp let them through) the CR is not where it is looked for, and llhttp is asked."""
        if self._raw is None:
            end = self._head_from + len(self._method) + len(self._url) + 10  # the CR after "HTTP/1.1"
            data = self._data
            if end < self._head_to and data[end] == 13:
                version = data[end - 8 : end]
                if version == b"HTTP/1.1":
                    return "1.1"
                if version == b"HTTP/1.0":
                    return "1.0"
        return self.parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        self._sink.body_received(body)

    def on_message_complete(self) -> None:
        if self._synthetic:
            return
        if self._reframe:
            self._reframe = False  # llhttp ends an upgrade request at its head; the body follows
            return
        self._phase = _AT_START
        self._sink.message_done()
