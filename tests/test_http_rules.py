"""The header rules of the proxy (server/http.py), as pure functions: no sockets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from load_balancing_module.server import http

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~", min_size=1,
                max_size=40).map(str.encode)  # fmt: skip
SPECIAL = st.sampled_from(sorted({*http._REQUEST_ACTIONS, *http._RESPONSE_ACTIONS, b"proxy-authorization",
                                  b"proxy-", b"proxyx"}))  # fmt: skip


def expected(name: bytes, actions: dict[bytes, int]) -> int:
    """The rule as written in the module: by the lowercased name, Proxy-* dropped, the rest kept."""
    key = name.lower()
    return actions.get(key, http._DROP if key.startswith(b"proxy-") else http._KEEP)


@given(st.one_of(TOKEN, SPECIAL.flatmap(lambda n: st.sampled_from([n, n.upper(), n.title(), n.capitalize()]))))
def test_a_header_is_classified_as_its_lowercased_name_says(name: bytes) -> None:
    # _action skips the lookup for most names (by first letter and length) and compares usual
    # spellings before lowercasing: it must agree with the plain rule for every name.
    assert http._action(name, http._REQUEST_SPELLINGS) == expected(name, http._REQUEST_ACTIONS)
    assert http._action(name, http._RESPONSE_SPELLINGS) == expected(name, http._RESPONSE_ACTIONS)


def test_response_heads_keep_end_to_end_headers_and_drop_what_connection_names() -> None:
    info = http.ResponseInfo()
    for name, value in [(b"Server", b"x"), (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"),
                        (b"Content-Length", b"2"), (b"Keep-Alive", b"timeout=5"), (b"X-Request-ID", b"theirs"),
                        (b"Proxy-Authenticate", b"Basic"), (b"ETag", b'"a"')]:  # fmt: skip
        info.add(name, value)
    info.complete(200, b"OK")
    head = http.response_head(info, [b"X-Request-ID: ours\r\n"])
    assert head == b'HTTP/1.1 200 OK\r\nServer: x\r\nETag: "a"\r\nX-Request-ID: ours\r\n\r\n'
    assert info.content_length == b"2" and info.error is None


def test_a_second_or_unknown_transfer_encoding_from_a_backend_is_an_error() -> None:
    for values in ([b"gzip"], [b"chunked", b"chunked"]):
        info = http.ResponseInfo()
        for value in values:
            info.add(b"Transfer-Encoding", value)
        assert info.error is not None


def test_the_idempotent_methods_are_those_of_idempotent() -> None:
    # RequestInfo spells the set out as comparisons (cheaper than hashing fresh bytes): they must agree.
    for method in (*http.IDEMPOTENT, b"POST", b"PATCH", b"get", b"TRACE"):
        assert http.RequestInfo(method, b"/", True, True).idempotent == (method in http.IDEMPOTENT)
