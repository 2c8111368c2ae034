"""The access log's formats (``access_log: {format: json | combined | "<template>"}``) and fields,
through real requests to the proxy on 127.0.0.1: byte counts against what went over the wire, user
agent, Host, route and pool, the TLS version of a TLS listener, connect and header times; and the
config errors of a bad template."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from load_balancing_module import HealthCheckConfig
from load_balancing_module.cli import main
from load_balancing_module.exceptions import ConfigurationError
from load_balancing_module.server.config import ServerConfig, load_config
from load_balancing_module.server.logformat import _ALIASES, _GETTERS, COMBINED, VARIABLES, Entry, TemplateFormat, check
from proxy_helpers import AioBackend, server_config, start_proxy
from test_routes import routed as routed_proxy

HOST = "127.0.0.1"
BODY = b"x" * 1234
COMBINED_LINE = re.compile(
    r'(?P<addr>\S+) - - \[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "(?P<request>[^"]*)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"'
)


async def exchange(port: int, request: bytes, context: ssl.SSLContext | None = None) -> bytes:
    """Send ``request`` (which asks the proxy to close) and read everything until the close."""
    reader, writer = await asyncio.open_connection(
        HOST, port, ssl=context, server_hostname="site.test" if context else None
    )
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    return data


def post(path: str, body: bytes, *headers: str, host: str = "app.test") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def body_of(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


async def fixed(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(body=BODY, content_type="application/octet-stream")


async def streamed(request: web.Request) -> web.StreamResponse:
    """Three pieces without a Content-Length: the proxy sends them chunked."""
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for piece in (b"a" * 10, b"b" * 300, b"c" * 5000):
        await response.write(piece)
    await response.write_eof()
    return response


async def test_json_has_the_new_fields_and_bytes_are_what_went_over_the_wire() -> None:
    async with AioBackend("fixed", fixed) as backend, start_proxy([backend.port]) as proxy:
        raw = await exchange(proxy.port, post("/up?q=1", b"y" * 777, 'User-Agent: probe/1.0 "quoted"'))
        assert raw.startswith(b"HTTP/1.1 200") and body_of(raw) == BODY
        line = json.loads(proxy.access.lines[-1])
        assert line["request_bytes"] == 777
        assert line["response_bytes"] == len(raw) and line["response_body_bytes"] == len(BODY)
        assert line["user_agent"] == 'probe/1.0 "quoted"' and line["host"] == "app.test"
        assert line["protocol"] == "HTTP/1.1" and line["path"] == "/up" and line["method"] == "POST"
        assert line["tls_version"] is None and line["route"] is None and line["pool"] == "default"
        # a new connection to the backend: its connect time, then the head, then the end
        assert 0 < line["upstream_connect_ms"] <= line["upstream_header_ms"] <= line["upstream_ms"] <= line["total_ms"]
        assert proxy.access.fields[-1] == line  # the record's dict says the same


async def test_a_pooled_connection_connects_in_no_time_and_a_chunked_answer_counts_its_framing() -> None:
    async with AioBackend("stream", streamed) as backend, start_proxy([backend.port]) as proxy:
        await exchange(proxy.port, post("/warm", b""))  # leaves a pooled connection to the backend
        raw = await exchange(proxy.port, post("/s", b"", "User-Agent: a"))
        assert b"transfer-encoding: chunked" in raw.lower()
        line = json.loads(proxy.access.lines[-1])
        assert line["upstream_connect_ms"] == 0.0 and line["upstream_header_ms"] > 0
        assert line["response_bytes"] == len(raw)  # head, chunk lines and the last chunk included
        assert line["response_body_bytes"] == 10 + 300 + 5000 and line["request_bytes"] == 0


async def test_the_proxys_own_answers_count_their_bytes_too() -> None:
    async with start_proxy([]) as proxy:  # no backend: 503 from the proxy
        raw = await exchange(proxy.port, post("/none", b"zz"))
        line = json.loads(proxy.access.lines[-1])
        assert line["status"] == 503 and line["response_bytes"] == len(raw)
        assert line["response_body_bytes"] == len(body_of(raw)) > 0
        assert line["upstream_connect_ms"] is None and line["upstream_header_ms"] is None


async def test_route_and_pool_are_logged() -> None:
    async with AioBackend("web") as web_backend, AioBackend("api") as api:
        config = server_config(
            backends=[{"host": HOST, "port": web_backend.port}],
            pools={"api": {"backends": [{"host": HOST, "port": api.port}]}},
            routes=[{"name": "api-v1", "match": {"path_prefix": "/v1/"}, "pool": "api"}],
        )
        async with routed_proxy(config) as (proxy, _, records):
            await exchange(proxy.port, post("/v1/x", b""))
            await exchange(proxy.port, post("/other", b""))
        routed, unrouted = (json.loads(line) for line in records.lines[-2:])
        assert routed["route"] == "api-v1" and routed["pool"] == "api" and routed["status"] == 200
        assert unrouted["route"] == "default" and unrouted["pool"] == "default"  # the fallback, as in the metrics


async def test_combined_is_the_apache_nginx_combined_format() -> None:
    async with (
        AioBackend("fixed", fixed) as backend,
        start_proxy([backend.port], access_log={"format": "combined"}) as proxy,
    ):
        raw = await exchange(proxy.port, post("/c?a=1", b"abc", "Referer: http://r.test/", "User-Agent: curl/8.5.0"))
        await exchange(proxy.port, b"BAD\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200")
    line = proxy.access.lines[0]
    match = COMBINED_LINE.fullmatch(line)
    assert match is not None, line
    assert match["addr"] == HOST and match["request"] == "POST /c?a=1 HTTP/1.1" and match["status"] == "200"
    assert match["bytes"] == str(len(BODY)) and match["referer"] == "http://r.test/" and match["agent"] == "curl/8.5.0"
    refused = COMBINED_LINE.fullmatch(proxy.access.lines[1])
    assert refused is not None and refused["request"] == "-" and refused["status"] == "400"
    assert refused["referer"] == "-" and refused["agent"] == "-"
    assert proxy.access.fields[0]["status"] == 200  # the record still carries the JSON's fields


async def test_a_template_is_filled_from_its_variables() -> None:
    template = (
        "$request_method $uri?$args $status $pool/$route $http_x_tenant [$host] $request_bytes/$bytes_sent"
        " $upstream_addr $upstream_connect_time $request_time $$ $ssl_protocol"
    )
    async with (
        AioBackend("fixed", fixed) as backend,
        start_proxy([backend.port], access_log={"format": template}) as proxy,
    ):
        raw = await exchange(proxy.port, post("/t/p?k=v", b"12345", "X-Tenant: acme\u00e9"))
    line = proxy.access.lines[-1]
    _, seconds, total, dollar, tls = line.rsplit(" ", 4)
    expected = f"POST /t/p?k=v 200 default/- acme\\xC3\\xA9 [app.test] 5/{len(raw)} {proxy.backend_ids[0]}"
    assert line.startswith(expected + " "), line
    assert re.fullmatch(r"\d+\.\d{6}", seconds) and re.fullmatch(r"\d+\.\d{6}", total)
    assert float(seconds) > 0 and dollar == "$" and tls == "-"


def _tls_files(root: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    leaf = ca.issue_cert("site.test")
    cert, key = root / "site.pem", root / "site.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return ca, cert, key


async def test_a_tls_listener_logs_its_tls_version(tmp_path: Path) -> None:
    ca, cert, key = _tls_files(tmp_path)
    config = ServerConfig.model_validate(
        {
            "listeners": [{"address": f"{HOST}:0", "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]}}],
            "health_check": HealthCheckConfig(enabled=False),
            "access_log": {"format": "$ssl_protocol $tls_version"},
        }
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    async with AioBackend() as backend, start_proxy([backend.port], config=config) as proxy:
        raw = await exchange(proxy.port, post("/tls", b""), context)
    assert raw.startswith(b"HTTP/1.1 200")
    assert proxy.access.lines == ["TLSv1.2 TLSv1.2"]
    assert proxy.access.fields[0]["tls_version"] == "TLSv1.2"


# -- the config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{format: "$remote_addr $nope"}', "access_log.format: unknown variable $nope"),
        ('{format: "cost $ 5 $status"}', "access_log.format: the $ at character 5 starts no variable name"),
        ("{format: jsn}", "access_log.format: 'jsn' is not json, combined, or a template with $variables"),
        ("{fromat: json}", "access_log.fromat: unknown key"),
        ("combined", "access_log: must be true, false, or {format: json | combined | <template>}"),
    ],
)
def test_check_names_what_is_wrong_with_the_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, error: str
) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(f"access_log: {text}\n")
    with pytest.raises(ConfigurationError) as caught:
        load_config(path)
    assert str(caught.value).startswith(error)
    assert main(["check", "--config", str(path)]) == 2
    assert error in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", "json"),
        ("false", None),
        ("{}", "json"),
        ("{format: combined}", "combined"),
        ('{format: "$status $http_x_forwarded_for $$"}', "$status $http_x_forwarded_for $$"),
    ],
)
def test_the_accepted_forms(tmp_path: Path, text: str, expected: Any) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(f"access_log: {text}\n")
    assert load_config(path).access_log_format == expected


def test_every_documented_variable_has_a_value_and_docs_list_them_all() -> None:
    times = {"time_local", "time_iso8601", "msec"}
    assert set(VARIABLES) == set(_GETTERS) | set(_ALIASES) | times
    docs = (Path(__file__).parent.parent / "docs" / "config.md").read_text()
    missing = [name for name in VARIABLES if f"`${name}`" not in docs]
    assert not missing
    line = TemplateFormat(" ".join("$" + name for name in VARIABLES)).line(Entry(None, None, None, None, 0))
    assert len(line.split(" ")) >= len(VARIABLES)  # every variable gives a value, - when missing
    assert check(COMBINED) == COMBINED
