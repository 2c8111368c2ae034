"""The admin listener's request gate without sockets (RequestGuard), and admin.allowed_hosts' validation.

The same rules on a live server, byte for byte: test_admin_guards_live.py."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError

from load_balancing_module.server.admin.guard import RequestGuard, host_name, media_type, same_origin
from load_balancing_module.server.config import AdminConfig

GUARD = RequestGuard("127.0.0.1", ["admin.example.com", "*.lb.example.net"])


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def status(method: str, path: str, *pairs: tuple[str, str], routed: bool = True) -> int | None:
    refusal = GUARD.check(method, path, headers(*pairs), routed=routed)
    if refusal is not None:
        assert refusal.message.startswith(refusal.field + ": "), refusal
    return None if refusal is None else refusal.status


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:9090", "127.0.0.1"),
        ("[::1]:9090", "::1"),
        ("[::1]", "::1"),
        ("LocalHost:80", "localhost"),
        ("admin.example.com.", "admin.example.com"),
        ("host:", "host"),
        ("", None),
        (":9090", None),
        ("::1", None),
        ("[::1", None),
        ("[::1]x", None),
        ("host:90a", None),
        ("host:٩٠", None),
        ("a:b:c", None),
        ("[]:80", None),
        ("[admin.example.com]", None),
        ("[1.2.3.4]", None),
    ],
)
def test_host_name_takes_the_name_of_a_host_header(value: str, name: str | None) -> None:
    assert host_name(value) == name


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:9090",
        "10.1.2.3",
        "[::1]:9090",
        "[fe80::1]",
        "localhost:9090",
        "LOCALHOST",
        "localhost.",
        "admin.example.com",
        "ADMIN.example.com:443",
        "a.lb.example.net",
        "a.b.lb.example.net:1",
    ],
)
def test_names_of_this_listener_pass(host: str) -> None:
    assert status("GET", "/backends", ("Host", host)) is None


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:9090",
        "127.0.0.1.evil.example",
        "lb.example.net",
        "xlb.example.net",
        "example.com",
        "admin.example.com.evil.example",
        "localhost.evil.example",
        "0x7f000001",
        "127.1",
        "evil.example@127.0.0.1",
        "[evil.example]",
        "\udcff\udcfe",
        "",
    ],
)
def test_any_other_host_is_misdirected_on_every_route(host: str) -> None:
    for method, path in (("GET", "/"), ("GET", "/metrics"), ("GET", "/healthz"), ("POST", "/backends")):
        assert status(method, path, ("Host", host), ("Content-Type", "application/json")) == 421


def test_a_missing_or_repeated_host_is_misdirected() -> None:
    assert status("GET", "/metrics") == 421
    assert status("GET", "/metrics", ("Host", "127.0.0.1"), ("Host", "127.0.0.1")) == 421
    refusal = GUARD.check("GET", "/metrics", headers(("Host", "a"), ("Host", "b")))
    assert refusal is not None and "sent 2 times" in refusal.message


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://127.0.0.1:9091",
        "http://127.0.0.1",
        "https://evil.example",
        "http://127.0.0.1:9090/",
        "http://127.0.0.1:9090.evil.example",
        "ftp://127.0.0.1:9090",
        "",
        "https://127.0.0.1:9090",
    ],
)
def test_a_foreign_origin_is_refused_everywhere_but_the_dashboard_page(origin: str) -> None:
    host = ("Host", "127.0.0.1:9090")
    for method, path in (
        ("GET", "/backends"),
        ("GET", "/metrics"),
        ("GET", "/dashboard/dashboard.js"),
        ("POST", "/backends"),
        ("DELETE", "/backends/x"),
        ("OPTIONS", "/backends"),
        ("POST", "/"),
        ("GET", "/nope"),
    ):
        assert status(method, path, host, ("Origin", origin), ("Content-Type", "application/json")) == 403
    assert status("GET", "/", host, ("Origin", origin)) is None
    assert status("HEAD", "/", host, ("Origin", origin)) is None


def test_the_admins_own_origin_passes() -> None:
    for origin in ("http://127.0.0.1:9090", "HTTP://127.0.0.1:9090"):
        assert status("GET", "/backends", ("Host", "127.0.0.1:9090"), ("Origin", origin)) is None
    assert status("GET", "/backends", ("Host", "admin.example.com"), ("Origin", "http://admin.example.com")) is None
    assert (
        status(
            "GET",
            "/backends",
            ("Host", "127.0.0.1:9090"),
            ("Origin", "http://127.0.0.1:9090"),
            ("Origin", "http://127.0.0.1:9090"),
        )
        == 403
    )
    assert same_origin("http://[::1]:9090", "[::1]:9090")
    assert not same_origin("http://[::1]:9090", "[::1]:9091")


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        " application/json ",
    ],
)
def test_a_change_as_json_passes(content_type: str) -> None:
    for method in ("POST", "PUT", "PATCH"):
        assert status(method, "/backends", ("Host", "127.0.0.1"), ("Content-Type", content_type)) is None


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain; application/json",
        "application/jsonx",
        "application/json-seq",
        "application/vnd.api+json",
        "application/json, text/plain",
        "json",
    ],
)
def test_a_change_of_any_other_type_is_unsupported(content_type: str | None) -> None:
    pairs = [("Host", "127.0.0.1")] + ([] if content_type is None else [("Content-Type", content_type)])
    for method in ("POST", "PUT", "PATCH"):
        assert status(method, "/backends/x/drain", *pairs) == 415
    for method in ("GET", "DELETE", "HEAD", "OPTIONS"):
        assert status(method, "/backends/x", *pairs) is None  # no body to speak of; OPTIONS has no route
    assert status("POST", "/nope", *pairs, routed=False) is None  # the router's 404 says more
    assert (
        status(
            "POST",
            "/backends",
            ("Host", "127.0.0.1"),
            ("Content-Type", "application/json"),
            ("Content-Type", "application/json"),
        )
        == 415
    )


def test_rules_apply_in_order_host_origin_content_type() -> None:
    bad = [("Host", "evil.example"), ("Origin", "http://evil.example"), ("Content-Type", "text/plain")]
    assert status("POST", "/backends", *bad) == 421
    assert status("POST", "/backends", ("Host", "127.0.0.1"), *bad[1:]) == 403
    assert status("POST", "/backends", ("Host", "127.0.0.1"), bad[2]) == 415


def test_media_type() -> None:
    assert media_type("Application/JSON ; charset=utf-8") == "application/json"
    assert media_type("") == ""


def test_allowed_hosts_are_checked_and_normalised() -> None:
    config = AdminConfig(allowed_hosts=["Admin.Example.COM.", "*.lb.example.net", "10.0.0.1", "::1"])
    assert config.allowed_hosts == ["admin.example.com", "*.lb.example.net", "10.0.0.1", "::1"]
    for bad in (
        "http://admin.example.com",
        "admin.example.com:9090",
        "*",
        "*.com",
        "a.*.example.com",
        "-a.example.com",
        "a_b.example.com",
        "a" * 64 + ".com",
        "",
        "exa mple.com",
        "[::1]",
    ):
        with pytest.raises(ValidationError, match=r"allowed_hosts"):
            AdminConfig(allowed_hosts=[bad])


def test_one_exposure_rule() -> None:
    """The rule `check` and `serve` both apply (admin_token raises it; cli.check prints it)."""
    open_config = AdminConfig(listen="0.0.0.0:9090", token_env="T")
    problem = open_config.exposure_problem(None)
    assert problem is not None and problem.startswith("admin.listen: 0.0.0.0:9090 is not a loopback address")
    assert "allow_unauthenticated" in problem and "T" in problem
    assert open_config.exposure_problem("secret") is None
    assert AdminConfig(listen="0.0.0.0:9090", token_env=None).exposure_problem(None) is not None
    assert AdminConfig(listen="admin.example.com:9090").exposure_problem(None) is not None
    opted_out = AdminConfig(listen="0.0.0.0:9090", allow_unauthenticated=True)
    assert opted_out.exposure_problem(None) is None and opted_out.open_to_network(None)
    for listen in ("127.0.0.1:9090", "127.9.9.9:1", "[::1]:9090", "localhost:9090"):
        assert AdminConfig(listen=listen).exposure_problem(None) is None
        assert not AdminConfig(listen=listen).open_to_network(None)
    assert AdminConfig(token_env="T").read_token({"T": ""}) is None
    assert AdminConfig(token_env="T").read_token({"T": "x"}) == "x"
    assert AdminConfig(token_env=None).read_token({"T": "x"}) is None
