"""The header rules of the proxy (server/http.py), as pure functions: no sockets."""

from __future__ import annotations

import contextlib

import pytest
from httptools import HttpParserUpgrade, HttpRequestParser
from hypothesis import given
from hypothesis import strategies as st

from load_balancing_module.server import headers, http, response

TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~", min_size=1, max_size=40
).map(str.encode)
SPECIAL = st.sampled_from(
    sorted({*headers.REQUEST_ACTIONS, *headers.RESPONSE_ACTIONS, b"proxy-authorization", b"proxy-", b"proxyx"})
)


def expected(name: bytes, actions: dict[bytes, int]) -> int:
    """The rule as written in the module: by the lowercased name, Proxy-* dropped, the rest kept."""
    key = name.lower()
    return actions.get(key, headers.DROP if key.startswith(b"proxy-") else headers.KEEP)


@given(st.one_of(TOKEN, SPECIAL.flatmap(lambda n: st.sampled_from([n, n.upper(), n.title(), n.capitalize()]))))
def test_a_header_is_classified_as_its_lowercased_name_says(name: bytes) -> None:
    # action skips the lookup for most names (by first letter and length) and compares usual
    # spellings before lowercasing: it must agree with the plain rule for every name.
    assert headers.action(name, headers.REQUEST_SPELLINGS) == expected(name, headers.REQUEST_ACTIONS)
    assert headers.action(name, headers.RESPONSE_SPELLINGS) == expected(name, headers.RESPONSE_ACTIONS)


def test_response_heads_keep_end_to_end_headers_and_drop_what_connection_names() -> None:
    info = response.ResponseInfo()
    for name, value in [
        (b"Server", b"x"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Content-Length", b"2"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Request-ID", b"theirs"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"ETag", b'"a"'),
    ]:
        info.add(name, value)
    info.complete(200, b"OK")
    head = response.response_head(info, [b"X-Request-ID: ours\r\n"])
    assert head == b'HTTP/1.1 200 OK\r\nServer: x\r\nETag: "a"\r\nX-Request-ID: ours\r\n\r\n'
    assert info.content_length == b"2" and info.error is None


def test_a_second_or_unknown_transfer_encoding_from_a_backend_is_an_error() -> None:
    for values in ([b"gzip"], [b"chunked", b"chunked"]):
        info = response.ResponseInfo()
        for value in values:
            info.add(b"Transfer-Encoding", value)
        assert info.error is not None


def test_the_idempotent_methods_are_those_of_idempotent() -> None:
    # RequestInfo spells the set out as comparisons (cheaper than hashing fresh bytes): they must agree.
    for method in (*http.IDEMPOTENT, b"POST", b"PATCH", b"get", b"TRACE"):
        assert http.RequestInfo(method, b"/", True, True).idempotent == (method in http.IDEMPOTENT)


TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@given(st.text(TCHAR, min_size=1, max_size=http.MAX_METHOD).map(str.encode), st.integers(0, 5))
def test_a_method_is_any_token_however_the_request_line_is_cut(method: bytes, offset: int) -> None:
    line = b"\r\n" * offset + method + b" /x HTTP/1.1\r\n"
    start = 2 * offset
    assert http.request_method(line, start) == method
    for cut in range(start, start + len(method) + 1):  # no space yet: wait for more
        assert http.request_method(line[:cut], start) is None


@pytest.mark.parametrize("start", [b"G\x00T /", b" GET /", b"GET\t/", b"G\xe9T /", b'G"T /', b"G:T /"])
def test_a_method_with_a_byte_outside_a_token_is_refused(start: bytes) -> None:
    with pytest.raises(http.HttpError) as refused:
        http.request_method(start, 0)
    assert refused.value.status == 400


def test_a_method_longer_than_max_method_is_501_as_soon_as_it_shows() -> None:
    too_long = b"A" * (http.MAX_METHOD + 1)
    for data in (too_long, too_long + b" / HTTP/1.1\r\n"):
        with pytest.raises(http.HttpError) as refused:
            http.request_method(data, 0)
        assert refused.value.status == 501


def test_llhttp_reads_the_methods_it_is_given_as_they_came() -> None:
    # The proxy hands llhttp these methods as they are and "GET" for any other: an httptools that no
    # longer knew one of them would refuse valid requests, and this test would say so.
    class Protocol:
        def __init__(self) -> None:
            self.urls: list[bytes] = []

        def on_url(self, url: bytes) -> None:
            self.urls.append(url)

    for method in http.LLHTTP_METHODS:
        protocol = Protocol()
        parser = HttpRequestParser(protocol)
        target = b"a.test:443" if method == b"CONNECT" else b"/x"
        with contextlib.suppress(HttpParserUpgrade):  # CONNECT stops at its head
            parser.feed_data(method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert parser.get_method() == method and protocol.urls == [target]


BWS = st.sampled_from([b"", b" ", b"\t", b"  \t"])
TOKEN = st.text(TCHAR, min_size=1, max_size=10).map(str.encode)
QUOTED = st.lists(st.sampled_from([b"a", b" ", b"\t", b";", b"=", b'\\"', b"\\\\", b"\x80"]), max_size=6).map(
    lambda parts: b'"' + b"".join(parts) + b'"'
)
EXTENSIONS = st.lists(st.tuples(BWS, BWS, TOKEN, st.none() | st.tuples(BWS, BWS, TOKEN | QUOTED)), max_size=4).map(
    lambda exts: b"".join(a + b";" + b + n + (b"" if v is None else v[0] + b"=" + v[1] + v[2]) for a, b, n, v in exts)
)


@given(st.integers(0, 2**64 - 1), st.integers(0, 4), st.booleans(), EXTENSIONS, st.sampled_from([b"", b" "]))
def test_a_chunk_size_line_of_the_rfcs_grammar_gives_its_size(
    size: int, zeros: int, upper: bool, exts: bytes, end: bytes
) -> None:
    digits = b"%X" % size if upper else b"%x" % size
    assert http.chunk_size(b"0" * zeros + digits + exts + end + b"\r\n") == size


@pytest.mark.parametrize(
    "line",
    [
        b"\r\n",
        b"5",
        b"5\n",
        b"5\r",
        b"5\r\r\n",
        b"5\n\r\n",
        b"+5\r\n",
        b"-5\r\n",
        b"0x5\r\n",
        b"5 5\r\n",
        b"g\r\n",
        b"1" + b"0" * 16 + b"\r\n",
        b"5;\r\n",
        b"5;;a\r\n",
        b"5;a=\r\n",
        b"5;a b\r\n",
        b"5;a=b c\r\n",
        b'5;a="b\r\n',
        b'5;a="\x01"\r\n',
        b"5;a=b\x00\r\n",
        b"5;a\r\nX",
        b"5 ;a=b;\r\n",
        b"5,a\r\n",
        b'5;a="\\\r\n',
    ],
)
def test_a_chunk_size_line_outside_the_grammar_is_refused(line: bytes) -> None:
    with pytest.raises(http.HttpError) as refused:
        http.chunk_size(line)
    assert refused.value.status == 400
