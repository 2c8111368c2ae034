"""No web page can reach the admin API, and no body or header can make it answer 500.

Raw requests on real sockets for each rule (Host, Origin, Content-Type, token bytes), the
``check``/``serve`` refusal of an open admin API off loopback, fuzzing with hypothesis-built
bodies, and the cross-site attack itself in real Chromium: a page served from another port
that posts forms and ``no-cors`` fetches to the admin port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from playwright.async_api import async_playwright

from load_balancing_module.server.app import Server
from load_balancing_module.server.config import load_config
from test_dashboard import CHROMIUM, CHROMIUM_ARGS

HOST = "127.0.0.1"
TOKEN = "s3cret-token"


def config_text(token_env: str | None, extra: str = "") -> str:
    return (
        "\n".join(
            [
                'listen: "127.0.0.1:0"',
                f'admin: {{listen: "127.0.0.1:0", token_env: {token_env or "null"}{extra}}}',
                "health_check: {enabled: false}",
                "access_log: false",
                "backends: [{host: 127.0.0.1, port: 9}]",
            ]
        )
        + "\n"
    )


@contextlib.asynccontextmanager
async def admin(tmp_path: Path, token_env: str | None = None, extra: str = "") -> AsyncIterator[Server]:
    path = tmp_path / "lb.yaml"
    path.write_text(config_text(token_env, extra))
    server = Server(path, load_config(path))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()


async def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send exact bytes; the status, headers (lowercased names) and body of the answer."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
        return int(lines[0].split()[1]), headers, body
    finally:
        writer.close()


def request(method: str, path: str, port: int, *headers: str, body: bytes = b"", host: str | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Connection: close", *headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


BACKEND = json.dumps({"host": "127.0.0.1", "port": 9999}).encode()


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:{port}", 200),
        ("localhost:{port}", 200),
        ("LOCALHOST", 200),
        ("[::1]:{port}", 200),
        ("10.1.2.3", 200),
        ("attacker.test:{port}", 421),
        ("attacker.test", 421),
        ("127.0.0.1.nip.io", 421),
        ("lb.example.com:{port}", 200),
        ("a.ops.example", 200),
        ("ops.example.evil", 421),
    ],
)
async def test_a_host_that_is_not_the_listeners_own_gets_421(tmp_path: Path, host: str, status: int) -> None:
    async with admin(tmp_path, extra=', allowed_hosts: ["lb.example.com", "*.ops.example"]') as server:
        port = server.admin.port
        got, _, body = await raw(port, request("GET", "/backends", port, host=host.format(port=port)))
        assert got == status, body
        if status == 421:
            assert json.loads(body)["field"] == "Host"


async def test_a_foreign_origin_is_refused_but_for_the_dashboard_page(tmp_path: Path) -> None:
    async with admin(tmp_path) as server:
        port = server.admin.port
        json_type = "Content-Type: application/json"
        for origin in ("http://evil.test", "null", f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}"):
            status, _, body = await raw(
                port, request("POST", "/backends", port, json_type, f"Origin: {origin}", body=BACKEND)
            )
            assert status == 403 and json.loads(body)["field"] == "Origin", origin
            assert (await raw(port, request("GET", "/distribution", port, f"Origin: {origin}")))[0] == 403
        assert (await raw(port, request("GET", "/", port, "Origin: http://evil.test")))[0] == 200
        own = f"Origin: http://127.0.0.1:{port}"
        assert (await raw(port, request("POST", "/backends", port, json_type, own, body=BACKEND)))[0] == 201
        assert len(server.lb.backends) == 2


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx"],
)
async def test_changes_need_a_json_content_type(tmp_path: Path, content_type: str | None) -> None:
    async with admin(tmp_path) as server:
        port = server.admin.port
        headers = [] if content_type is None else [f"Content-Type: {content_type}"]
        backend_id = next(iter(server.lb.backends))
        for method, path, body in (
            ("POST", "/backends", BACKEND),
            ("POST", f"/backends/{backend_id}/drain", b""),
            ("PUT", "/algorithm", b'{"algorithm_type": "ip_hash"}'),
            ("POST", "/execute", b'{"operation": "remove_backend", "backend_id": "x"}'),
        ):
            status, _, answer = await raw(port, request(method, path, port, *headers, body=body))
            assert status == 415 and json.loads(answer)["field"] == "Content-Type", (method, path)
        assert list(server.lb.backends) == [backend_id] and server.lb.router.kind.value == "round_robin"
        charset = "Content-Type: application/json; charset=utf-8"
        assert (await raw(port, request("POST", "/backends", port, charset, body=BACKEND)))[0] == 201


async def test_a_cors_preflight_is_never_granted(tmp_path: Path) -> None:
    async with admin(tmp_path) as server:
        port = server.admin.port
        status, headers, _ = await raw(
            port,
            request("OPTIONS", "/backends", port, "Origin: http://evil.test", "Access-Control-Request-Method: POST"),
        )
        assert status >= 400 and not any(name.startswith("access-control-") for name in headers)


@pytest.mark.parametrize("token", [b"\xff\xfe\x00", "t\u00f6k\u00e9n".encode(), b"s3cret-token\xff", b"", b" "])
async def test_a_token_of_any_bytes_is_a_401(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: bytes) -> None:
    monkeypatch.setenv("LB_SEC_TOKEN", TOKEN)
    async with admin(tmp_path, token_env="LB_SEC_TOKEN") as server:
        port = server.admin.port
        head = f"GET /backends HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAuthorization: Bearer "
        status, _, body = await raw(port, head.encode() + token + b"\r\n\r\n")
        assert status in (400, 401), body  # aiohttp itself refuses a NUL: a 400, never a 500
        good = await raw(port, request("GET", "/backends", port, f"Authorization: Bearer {TOKEN}"))
        assert good[0] == 200


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    exe = Path(sys.executable).parent / "omnixan-lb"
    return subprocess.run(
        [str(exe), "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_check_refuses_an_open_admin_api_off_loopback_unless_opted_out(tmp_path: Path) -> None:
    base = 'backends: [{host: 127.0.0.1, port: 9}]\nadmin: {listen: "0.0.0.0:9090"%s}\n'
    refused = check(tmp_path, base % "")
    assert refused.returncode == 2 and refused.stderr.startswith("admin.listen: 0.0.0.0:9090 is not a loopback")
    assert "allow_unauthenticated" in refused.stderr
    assert check(tmp_path, base % ", allow_unauthenticated: true").returncode == 0


async def test_serve_refuses_it_too_and_warns_when_opted_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from load_balancing_module.exceptions import ConfigurationError

    path = tmp_path / "lb.yaml"
    path.write_text('admin: {listen: "0.0.0.0:0", token_env: null}\n')
    with pytest.raises(ConfigurationError, match=r"admin\.listen"):
        Server(path, load_config(path))
    path.write_text('admin: {listen: "0.0.0.0:0", token_env: null, allow_unauthenticated: true}\n')
    Server(path, load_config(path))
    assert any(getattr(r, "event", None) == "admin_unauthenticated" for r in caplog.records)


# -- fuzzing: any body, any type, never a 500 -----------------------------------------------------


class Background:
    """A whole server on a loop of its own thread, for synchronous hypothesis tests."""

    def __init__(self, path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.path = path
        self.server: Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def __enter__(self) -> Background:
        self.thread.start()

        async def start() -> Server:
            server = Server(self.path, load_config(self.path))
            await server.start()
            return server

        self.server = self.run(start())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.run(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    path = tmp_path_factory.mktemp("fuzz") / "lb.yaml"
    path.write_text(config_text(None))
    with Background(path) as background:
        yield background


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "host",
        "port",
        "weight",
        "metadata",
        "max_connections",
        "priority",
        "timeout",
        "algorithm_type",
        "config",
        "operation",
        "backend",
        "backend_id",
        "request",
    ]
)
BODIES = st.one_of(
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(FIELDS, JSON_VALUES, max_size=5).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),  # not JSON, not UTF-8
    st.integers(1, 3000).map(lambda n: b"[" * n * 30 + b"]" * n * 30),  # deep
    st.integers(1, 3000).map(lambda n: b'{"metadata": ' + b'{"a": ' * n + b"1" + b"}" * n + b', "port": 1}'),
    st.sampled_from(
        [
            b"NaN",
            b"Infinity",
            b'{"port": 1e999}',
            b'{"host": "a", "host": "b", "port": 1}',
            b'{"host": "a.test", "port": 8080, "weight": 1e308}',
            b"\xef\xbb\xbf{}",
            b"\x00",
        ]
    ),
)
ENDPOINTS = st.sampled_from(
    [
        ("POST", "/backends"),
        ("PUT", "/algorithm"),
        ("POST", "/execute"),
        ("POST", "/backends/127.0.0.1%3A9/drain"),
        ("DELETE", "/backends/%ff%fe"),
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(endpoint=ENDPOINTS, body=BODIES, content_type=st.sampled_from(["application/json", "text/plain"]))
def test_no_body_makes_the_admin_api_answer_500(
    fuzzed: Background, endpoint: tuple[str, str], body: bytes, content_type: str
) -> None:
    assert fuzzed.server is not None
    port = fuzzed.server.admin.port
    method, path = endpoint
    if path.endswith("/drain"):
        body = b'{"timeout": 0}' if body[:1] == b"{" else body  # drains are quick, and the backend comes back
    status, _, answer = fuzzed.run(raw(port, request(method, path, port, f"Content-Type: {content_type}", body=body)))
    assert status < 500, answer
    if status >= 400:
        assert "field" in json.loads(answer)
    for route in ("/distribution", "/backends"):  # what the dashboard and `status` read still works
        assert fuzzed.run(raw(port, request("GET", route, port)))[0] == 200
    server = fuzzed.server
    if not server.lb.backends:
        fuzzed.run(server.lb.add_backend({"host": "127.0.0.1", "port": 9}))


def test_an_oversized_body_is_a_413(fuzzed: Background) -> None:
    assert fuzzed.server is not None
    port = fuzzed.server.admin.port
    body = b'{"host": "' + b"a" * (2 * 1024 * 1024) + b'", "port": 1}'
    status, _, answer = fuzzed.run(
        raw(port, request("POST", "/backends", port, "Content-Type: application/json", body=body))
    )
    assert status == 413 and "error" in json.loads(answer)


# -- the attack itself, in a real browser ---------------------------------------------------------

ATTACK = """<!doctype html><html><body>
<form id="plain" method="POST" enctype="text/plain" action="{admin}/backends" target="sink">
  <input name='{{"host": "127.0.0.1", "port": 7777, "x": "' value='"}}'></form>
<form id="urlencoded" method="POST" action="{admin}/backends/{backend_id}/drain" target="sink"></form>
<iframe name="sink"></iframe>
<script>
  document.getElementById("plain").submit();
  setTimeout(() => document.getElementById("urlencoded").submit(), 100);
  fetch("{admin}/backends", {{method: "POST", mode: "no-cors", body: '{{"host": "127.0.0.1", "port": 7778}}'}});
  fetch("{admin}/backends", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
        body: '{{"host": "127.0.0.1", "port": 7779}}'}});
  fetch("{admin}/backends/{backend_id}", {{method: "DELETE"}}).catch(() => null);
  fetch("{admin}/backends", {{method: "POST", headers: {{"Content-Type": "application/json"}},
        body: '{{"host": "127.0.0.1", "port": 7780}}'}}).catch(() => null);
  setTimeout(() => {{ document.title = "done"; }}, 600);
</script></body></html>"""


async def test_a_page_of_another_site_cannot_change_anything_in_real_chromium(tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
    async with admin(tmp_path) as server:
        backend_id = next(iter(server.lb.backends))
        admin_url = f"http://127.0.0.1:{server.admin.port}"
        page_html = ATTACK.format(admin=admin_url, backend_id=backend_id.replace(":", "%3A"))

        async def attack(request: web.Request) -> web.Response:
            return web.Response(text=page_html, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", attack)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        attacker = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page()
                    await page.goto(f"http://localhost:{attacker}/")  # another origin than the admin's
                    await page.wait_for_function("document.title === 'done'", timeout=10_000)
                    await asyncio.sleep(0.2)
                finally:
                    await browser.close()
        finally:
            await runner.cleanup()
        assert list(server.lb.backends) == [backend_id]
        assert not server.lb.draining
