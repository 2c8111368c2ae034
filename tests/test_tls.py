"""TLS termination and ``listeners:``: real handshakes on 127.0.0.1 with certificates made by the test.

The certificates come from ``trustme`` (a CA of the test's own); clients are the ``ssl`` module's
(through asyncio), curl where it is installed, and a raw socket for bytes that are not TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from cryptography import x509
from prometheus_client import CollectorRegistry, generate_latest

from load_balancing_module import HealthCheckConfig
from load_balancing_module.cli import main
from load_balancing_module.server.app import Server
from load_balancing_module.server.config import ServerConfig, load_config
from load_balancing_module.server.proxy_metrics import register_proxy_metrics
from proxy_helpers import AioBackend, start_proxy
from redis_helpers import free_port

HOST = "127.0.0.1"


# -- certificates ------------------------------------------------------------------------------


class Files:
    """A CA and certificates issued by it, written where the proxy reads them."""

    def __init__(self, root: Path, name: str = "ca") -> None:
        self.root = root
        self.ca = trustme.CA()
        self.ca_path = root / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))

    def issue(self, stem: str, *names: str, **options: Any) -> tuple[Path, Path, trustme.LeafCert]:
        leaf = self.ca.issue_cert(*names, **options)
        cert, key = self.root / f"{stem}.pem", self.root / f"{stem}.key"
        write_leaf(leaf, cert, key)
        return cert, key, leaf

    def client_context(self, *, alpn: list[str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if alpn:
            context.set_alpn_protocols(alpn)
        return context


def write_leaf(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    """Replace ``cert`` and ``key`` whole (a reader never sees half a file)."""
    for path, data in (
        (cert, b"".join(blob.bytes() for blob in leaf.cert_chain_pems)),
        (key, leaf.private_key_pem.bytes()),
    ):
        part = path.with_suffix(path.suffix + ".part")
        part.write_bytes(data)
        part.replace(path)


def names_of(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def serial_of(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


@pytest.fixture
async def backend() -> AsyncIterator[AioBackend]:
    async with AioBackend("a") as started:
        yield started


# -- a small HTTPS client ------------------------------------------------------------------------


class Conn:
    """One client connection (TLS or plain): requests written as bytes, responses read by Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def peer_der(self) -> bytes:
        ssl_object = self.writer.get_extra_info("ssl_object")
        return bytes(ssl_object.getpeercert(binary_form=True))

    async def request(
        self, path: str = "/", host: str | None = "site.test", *headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        lines = [f"GET {path} HTTP/1.1", *([f"Host: {host}"] if host else []), *headers, "", ""]
        self.writer.write("\r\n".join(lines).encode())
        return await self.response()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *rest = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in rest if line)
        fields = {k.lower(): v for k, v in fields.items()}
        body = await asyncio.wait_for(self.reader.readexactly(int(fields.get("content-length", "0"))), 5)
        return int(status_line.split()[1]), fields, body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connect(
    port: int, context: ssl.SSLContext | None, server_name: str | None = "site.test"
) -> AsyncIterator[Conn]:
    if context is None:
        reader, writer = await asyncio.open_connection(HOST, port)
    else:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, ssl=context, server_hostname=server_name or ""), 5
        )
    conn = Conn(reader, writer)
    try:
        yield conn
    finally:
        await conn.close()


def echoed(body: bytes, name: str) -> list[str]:
    """The values of header ``name`` the echo backend received."""
    return [v for k, v in json.loads(body)["headers"] if k.lower() == name.lower()]


def tls_listener(*certs: tuple[Path, Path], address: str = f"{HOST}:0", **tls: Any) -> dict[str, Any]:
    return {
        "address": address,
        "tls": {"certificates": [{"cert": str(c), "key": str(k)} for c, k in certs], **tls},
    }


def config_for(*listeners: dict[str, Any], **fields: Any) -> ServerConfig:
    """A server config with these listeners (as the file writes them), health checks off."""
    fields.setdefault("health_check", HealthCheckConfig(enabled=False))
    return ServerConfig.model_validate({"listeners": list(listeners), **fields})


def metrics_text(proxy: Any) -> str:
    registry = CollectorRegistry()
    register_proxy_metrics(proxy, registry)
    return generate_latest(registry).decode()


def sample(text: str, prefix: str) -> float:
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(prefix))


# -- SNI, versions, ALPN, X-Forwarded-Proto ---------------------------------------------------------


async def test_sni_picks_the_certificate_and_no_sni_or_an_unknown_name_gets_the_first(
    files: Files, backend: AioBackend
) -> None:
    site = files.issue("site", "site.test")
    api = files.issue("api", "api.test", "*.api.test")
    config = config_for(tls_listener(site[:2], api[:2]))
    async with start_proxy([backend.port], config=config) as harness:
        context = files.client_context()
        seen = {}
        for name in ("site.test", "api.test", "v2.api.test", "API.TEST"):
            async with connect(harness.port, context, name) as conn:
                seen[name] = names_of(conn.peer_der)
                assert (await conn.request(host=name))[0] == 200
        assert seen == {
            "site.test": ["site.test"],
            "api.test": ["api.test", "*.api.test"],
            "v2.api.test": ["api.test", "*.api.test"],
            "API.TEST": ["api.test", "*.api.test"],
        }
        lax = files.client_context()
        lax.check_hostname = False
        for name in (None, "other.test", "a.b.api.test"):  # no SNI, no match, a wildcard is one label deep
            async with connect(harness.port, lax, name) as conn:
                assert names_of(conn.peer_der) == ["site.test"], name


async def test_requests_on_tls_go_upstream_with_x_forwarded_proto_https(files: Files, backend: AioBackend) -> None:
    site = files.issue("site", "site.test")
    config = config_for(tls_listener(site[:2]), {"address": f"{HOST}:0"})
    async with start_proxy([backend.port], config=config) as harness:
        https_port, http_port = harness.proxy.ports
        assert https_port == harness.port and http_port != https_port
        async with connect(https_port, files.client_context()) as conn:
            for _ in range(2):  # keep-alive: the connection's own lines, reused
                status, _, body = await conn.request("/x")
                assert status == 200 and echoed(body, "X-Forwarded-Proto") == ["https"]
            # a client's own X-Forwarded-Proto (an untrusted peer) is replaced by the listener's
            status, _, body = await conn.request(
                "/y", "site.test", "X-Forwarded-Proto: http", "X-Forwarded-For: 1.2.3.4"
            )
            assert echoed(body, "X-Forwarded-Proto") == ["https"]
        async with connect(http_port, None) as conn:
            status, _, body = await conn.request("/z")
            assert status == 200 and echoed(body, "X-Forwarded-Proto") == ["http"]


async def test_alpn_offers_http_1_1_only_and_a_client_offering_only_h2_still_gets_http_1_1(
    files: Files, backend: AioBackend
) -> None:
    site = files.issue("site", "site.test")
    async with start_proxy([backend.port], config=config_for(tls_listener(site[:2]))) as harness:
        async with connect(harness.port, files.client_context(alpn=["h2", "http/1.1"])) as conn:
            assert conn.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            assert (await conn.request())[0] == 200
        async with connect(harness.port, files.client_context(alpn=["h2"])) as conn:
            assert conn.writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
            assert (await conn.request())[0] == 200


async def test_a_tls_1_3_listener_refuses_a_client_that_stops_at_1_2(files: Files, backend: AioBackend) -> None:
    site = files.issue("site", "site.test")
    config = config_for(tls_listener(site[:2], min_version="1.3"), tls_listener(site[:2]))
    async with start_proxy([backend.port], config=config) as harness:
        old = files.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):  # an alert, then the close
            async with connect(harness.port, old):
                pass
        async with connect(harness.proxy.ports[1], old) as conn:  # the 1.2 listener takes it
            assert conn.writer.get_extra_info("ssl_object").version() == "TLSv1.2"
            assert (await conn.request())[0] == 200
        async with connect(harness.port, files.client_context()) as conn:
            assert conn.writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        text = metrics_text(harness.proxy)
        assert sample(text, f'omnixan_lb_tls_handshake_failures_total{{listener="{HOST}:{harness.port}"}}') == 1
        assert (
            sample(text, f'omnixan_lb_tls_handshake_failures_total{{listener="{HOST}:{harness.proxy.ports[1]}"}}') == 0
        )
        assert backend.requests == [("GET", "/")]


async def test_curl_gets_the_certificate_of_the_name_it_asks_for(files: Files, backend: AioBackend) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    site = files.issue("site", "site.test")
    api = files.issue("api", "api.test")
    async with start_proxy([backend.port], config=config_for(tls_listener(site[:2], api[:2]))) as harness:
        for name in ("site.test", "api.test"):
            proc = await asyncio.create_subprocess_exec(
                curl,
                "-sS",
                "--resolve",
                f"{name}:{harness.port}:{HOST}",
                "--cacert",
                str(files.ca_path),
                f"https://{name}:{harness.port}/curl",
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, err.decode()  # curl checked the certificate against the name
            assert json.loads(out)["path"] == "/curl"
            assert echoed(out, "X-Forwarded-Proto") == ["https"]


# -- client certificates ---------------------------------------------------------------------------


@pytest.fixture
def clients(tmp_path: Path) -> Files:
    return Files(tmp_path, "clients")


async def test_mutual_tls_passes_the_verified_subject_and_drops_a_forged_one(
    files: Files, clients: Files, backend: AioBackend
) -> None:
    site = files.issue("site", "site.test")
    alice = clients.ca.issue_cert(
        "alice.test", common_name="alice", organization_name="Example, Inc.", organization_unit_name="Dev"
    )
    config = config_for(tls_listener(site[:2], client_ca=str(clients.ca_path)), {"address": f"{HOST}:0"})
    async with start_proxy([backend.port], config=config) as harness:
        context = files.client_context()
        alice.configure_cert(context)
        async with connect(harness.port, context) as conn:
            status, _, body = await conn.request("/", "site.test", "X-Client-Cert-Subject: CN=admin")
            assert status == 200
            # the forged one dropped, the real one added (RFC 4514: most specific first, "," escaped)
            assert echoed(body, "X-Client-Cert-Subject") == ["CN=alice,OU=Dev,O=Example\\, Inc."]
            # the same on a request that brought X-Forwarded-For (its forwarded lines are rebuilt)
            status, _, body = await conn.request(
                "/", "site.test", "X-Forwarded-For: 10.0.0.1", "x-client-cert-subject: CN=admin"
            )
            assert [v.split(",")[0] for v in echoed(body, "X-Client-Cert-Subject")] == ["CN=alice"]
        # a plain listener never passes the header on either
        async with connect(harness.proxy.ports[1], None) as conn:
            status, _, body = await conn.request("/", "site.test", "X-Client-Cert-Subject: CN=admin")
            assert status == 200 and echoed(body, "X-Client-Cert-Subject") == []
        assert len(backend.requests) == 3


async def refused(port: int, context: ssl.SSLContext) -> None:
    """The handshake fails, or (TLS 1.3: the server checks the client's certificate after the
    client has finished) the first read does: no request is answered."""
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        async with connect(port, context) as conn:
            await conn.request()


async def test_mutual_tls_refuses_a_client_without_a_certificate_or_with_one_of_another_ca(
    files: Files, clients: Files, backend: AioBackend, tmp_path: Path
) -> None:
    site = files.issue("site", "site.test")
    strangers = Files(tmp_path, "strangers")
    config = config_for(tls_listener(site[:2], client_ca=str(clients.ca_path)))
    async with start_proxy([backend.port], config=config) as harness:
        await refused(harness.port, files.client_context())
        context = files.client_context()
        strangers.ca.issue_cert("mallory.test", common_name="mallory").configure_cert(context)
        await refused(harness.port, context)
        old = files.client_context()  # in TLS 1.2 the handshake itself fails
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            async with connect(harness.port, old):
                pass
        assert backend.requests == []
        assert sample(metrics_text(harness.proxy), "omnixan_lb_tls_handshake_failures_total") == 3


def test_a_subject_is_written_in_visible_ascii() -> None:
    from load_balancing_module.server.tls import client_subject

    class Fake(ssl.SSLObject):
        def __init__(self, der: bytes) -> None:  # no super().__init__: only getpeercert is read
            self._der = der

        def getpeercert(self, binary_form: bool = False) -> Any:
            return self._der

    ca = trustme.CA()
    leaf = ca.issue_cert("x.test", common_name="évil\r\nX-Admin: 1")
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER
    )
    subject = client_subject(Fake(der))
    assert subject.startswith(b"CN=\\C3\\A9vil\\0D\\0AX-Admin: 1,")
    assert all(0x20 <= b < 0x7F for b in subject)
    assert client_subject(None) == b""


# -- redirect_https ----------------------------------------------------------------------------------


async def test_redirect_https_answers_308_to_the_tls_listener_and_contacts_no_backend(
    files: Files, backend: AioBackend
) -> None:
    site = files.issue("site", "site.test")
    config = config_for({"address": f"{HOST}:0", "redirect_https": True}, tls_listener(site[:2]))
    async with start_proxy([backend.port], config=config) as harness:
        plain, secure = harness.proxy.ports
        async with connect(plain, None) as conn:
            status, fields, body = await conn.request("/a/b?c=1&d=%20", "Example.test:8080")
            assert (status, fields["location"], fields["content-length"], body) == (
                308,
                f"https://Example.test:{secure}/a/b?c=1&d=%20",
                "0",
                b"",
            )
            assert "connection" not in fields  # keep-alive: a second request on the same connection
            status, fields, _ = await conn.request("/again", "[::1]:80")
            assert (status, fields["location"]) == (308, f"https://[::1]:{secure}/again")
        async with connect(plain, None) as conn:  # no Host: 400
            conn.writer.write(b"GET / HTTP/1.0\r\n\r\n")
            status, fields, body = await conn.response()
            assert status == 400 and b"Host" in body
        for bad in ("exa mple.test", "a/b", "x@y.test"):
            async with connect(plain, None) as conn:
                conn.writer.write(f"GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n".encode())
                with contextlib.suppress(asyncio.IncompleteReadError):  # llhttp may refuse it first
                    assert (await conn.response())[0] == 400
        async with connect(plain, None) as conn:  # a body: answered, then the connection closes
            conn.writer.write(b"POST /form HTTP/1.1\r\nHost: site.test\r\nContent-Length: 3\r\n\r\nabc")
            status, fields, _ = await conn.response()
            assert (status, fields["connection"]) == (308, "close")
            assert await asyncio.wait_for(conn.reader.read(), 5) == b""
        assert backend.requests == []
        assert [(f["status"], f["path"]) for f in harness.access.fields][:2] == [(308, "/a/b"), (308, "/again")]


async def test_without_a_tls_listener_the_redirect_goes_to_port_443(backend: AioBackend) -> None:
    config = config_for({"address": f"{HOST}:0", "redirect_https": True})
    async with start_proxy([backend.port], config=config) as harness, connect(harness.port, None) as conn:
        status, fields, _ = await conn.request("/x", "www.example.test")
        assert (status, fields["location"]) == (308, "https://www.example.test/x")


# -- failed handshakes -------------------------------------------------------------------------------


async def test_garbage_or_a_stalled_handshake_is_closed_counted_and_harms_nothing(
    files: Files, backend: AioBackend
) -> None:
    site = files.issue("site", "site.test")
    config = config_for(tls_listener(site[:2]), limits={"header_timeout": 0.3})
    async with start_proxy([backend.port], config=config) as harness:
        for garbage in (b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n", b"\x16\x03\x01\x00\x05hello", os.urandom(600)):
            reader, writer = await asyncio.open_connection(HOST, harness.port)
            writer.write(garbage)
            answer = b""
            with contextlib.suppress(ConnectionError):
                answer = await asyncio.wait_for(reader.read(), 5)  # at most a TLS alert, then the close
            assert not answer.startswith(b"HTTP/")
            writer.close()
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(HOST, harness.port)  # says nothing at all
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert time.monotonic() - started < 3  # closed at the handshake's time limit, not the idle one
        writer.close()
        deadline = time.monotonic() + 5
        while sample(metrics_text(harness.proxy), "omnixan_lb_tls_handshake_failures_total") < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert not harness.proxy.accepting and not harness.proxy.connections
        async with connect(harness.port, files.client_context()) as conn:
            assert (await conn.request())[0] == 200
        for backend_id in harness.backend_ids:
            view = harness.lb.backends[backend_id]
            assert view.health.state.value == "healthy" and view.breaker.state.value == "closed"


# -- metrics, check --------------------------------------------------------------------------------


async def test_the_expiry_metric_is_each_certificates_not_after(files: Files, backend: AioBackend) -> None:
    site = files.issue("site", "site.test")
    api = files.issue("api", "api.test", not_after=datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc))
    config = config_for(tls_listener(site[:2], api[:2]), {"address": f"{HOST}:0"})
    async with start_proxy([backend.port], config=config) as harness:
        text = metrics_text(harness.proxy)
    expected = x509.load_pem_x509_certificate(site[0].read_bytes()).not_valid_after_utc.timestamp()
    line = f'omnixan_lb_tls_certificate_expiry_seconds{{cert="{site[0]}",listener="{HOST}:{harness.port}"}}'
    assert sample(text, line) == expected
    line = f'omnixan_lb_tls_certificate_expiry_seconds{{cert="{api[0]}",listener="{HOST}:{harness.port}"}}'
    assert sample(text, line) == datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc).timestamp()
    assert text.count("omnixan_lb_tls_certificate_expiry_seconds{") == 2


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], listeners: str) -> tuple[int, str]:
    path = tmp_path / "lb.yaml"
    path.write_text(f"listeners:\n{listeners}\nbackends: []\n")
    code = main(["check", "--config", str(path)])
    captured = capsys.readouterr()
    return code, captured.err


def listener_yaml(cert: Path, key: Path, extra: str = "") -> str:
    return f'  - {{address: "127.0.0.1:0", tls: {{certificates: [{{cert: "{cert}", key: "{key}"}}]{extra}}}}}'


def test_check_refuses_a_mismatched_pair_a_missing_file_or_a_bad_ca_naming_the_file(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_cert, site_key, _ = files.issue("site", "site.test")
    _, api_key, _ = files.issue("api", "api.test")
    assert check(tmp_path, capsys, listener_yaml(site_cert, site_key)) == (0, "")
    code, err = check(tmp_path, capsys, listener_yaml(site_cert, api_key))
    assert code == 2
    assert f"listeners[0].tls.certificates[0].key: {api_key} is not the key of the certificate in {site_cert}" in err
    code, err = check(tmp_path, capsys, listener_yaml(tmp_path / "nope.pem", site_key))
    assert code == 2 and f"listeners[0].tls.certificates[0].cert: cannot read {tmp_path / 'nope.pem'}" in err
    code, err = check(tmp_path, capsys, listener_yaml(site_cert, tmp_path / "nope.key"))
    assert code == 2 and f"cannot read {tmp_path / 'nope.key'}" in err
    code, err = check(tmp_path, capsys, listener_yaml(site_key, site_key))  # a key where the cert goes
    assert code == 2 and f"{site_key} holds no PEM certificate" in err
    code, err = check(tmp_path, capsys, listener_yaml(site_cert, site_cert))  # a cert where the key goes
    assert code == 2 and f"{site_cert} is not a PEM private key" in err
    code, err = check(tmp_path, capsys, listener_yaml(site_cert, site_key, f', client_ca: "{tmp_path / "no-ca.pem"}"'))
    assert code == 2 and f"listeners[0].tls.client_ca: cannot load {tmp_path / 'no-ca.pem'}" in err


def test_check_refuses_an_encrypted_key_without_prompting(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives import serialization

    cert, key, leaf = files.issue("site", "site.test")
    private = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    code, err = check(tmp_path, capsys, listener_yaml(cert, key))
    assert code == 2 and f"{key} is encrypted" in err


def test_an_expired_certificate_is_a_warning_of_check_only(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    cert, key, _ = files.issue("old", "old.test", not_before=past - datetime.timedelta(days=30), not_after=past)
    code, err = check(tmp_path, capsys, listener_yaml(cert, key))
    assert code == 0 and f"warning: {cert}: the certificate has expired" in err


async def test_an_expired_certificate_is_served_with_a_warning(
    files: Files, backend: AioBackend, caplog: pytest.LogCaptureFixture
) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    cert, key, _ = files.issue("old", "old.test", not_before=past - datetime.timedelta(days=30), not_after=past)
    with caplog.at_level(logging.WARNING, logger="load_balancing_module"):
        async with start_proxy([backend.port], config=config_for(tls_listener((cert, key)))) as harness:
            lax = files.client_context()
            lax.check_hostname = False
            lax.verify_mode = ssl.CERT_NONE  # the client would refuse it: this one looks anyway
            async with connect(harness.port, lax, "old.test") as conn:
                assert (await conn.request(host="old.test"))[0] == 200
    (warned,) = [r for r in caplog.records if getattr(r, "event", None) == "tls_certificate_expired"]
    assert warned.fields["cert"] == str(cert)  # type: ignore[attr-defined]


async def test_a_reload_that_changes_the_listeners_needs_a_restart_but_takes_the_certificates(
    files: Files, backend: AioBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key, _ = files.issue("site", "site.test")
    path = tmp_path / "lb.yaml"
    admin = free_port()
    path.write_text(serve_text(backend, listener_yaml(cert, key), admin=admin))
    server = Server(path, load_config(path))
    await server.start()
    try:
        port = server.proxy.port
        _, _, renewed = files.issue("site", "site.test")
        serial = x509.load_pem_x509_certificate(renewed.cert_chain_pems[0].bytes()).serial_number
        path.write_text(serve_text(backend, listener_yaml(cert, key, ', min_version: "1.3"'), admin=admin))
        with caplog.at_level(logging.INFO, logger="load_balancing_module"):
            assert await server.reload()
        assert not [r for r in caplog.records if getattr(r, "event", None) == "reload_needs_restart"]
        async with connect(port, files.client_context()) as conn:
            assert serial_of(conn.peer_der) == serial
        old = files.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):  # min_version applies to new connections
            async with connect(port, old):
                pass
        path.write_text(serve_text(backend, listener_yaml(cert, key), '  - {address: "127.0.0.1:0"}', admin=admin))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="load_balancing_module"):
            assert await server.reload()
        (needs,) = [r for r in caplog.records if getattr(r, "event", None) == "reload_needs_restart"]
        assert needs.fields["settings"] == ["listeners"]  # type: ignore[attr-defined]
        assert server.proxy.ports == [port]
        async with connect(port, files.client_context()) as conn:
            assert (await conn.request())[0] == 200
    finally:
        await server.shutdown()


# -- omnixan-lb serve: refusing to start, reload on SIGHUP, workers ---------------------------------


class Serving:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


@pytest.fixture
def serve(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> Iterator[Any]:
    def start(text: str, *, level: str = "info") -> Serving:
        path = tmp_path / "lb.yaml"
        path.write_text(text)
        log = tmp_path / f"serve-{len(processes)}.log"
        exe = Path(sys.executable).parent / "omnixan-lb"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(exe), "serve", "--config", str(path), "--log-level", level], stderr=out)
        processes.append(proc)
        return Serving(proc, log)

    yield start


async def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "omnixan-lb serve exited"
        with socket.socket() as probe:
            if probe.connect_ex((HOST, port)) == 0:
                return
        assert time.monotonic() < deadline, "omnixan-lb serve did not start"
        await asyncio.sleep(0.02)


def serve_text(backend: AioBackend, *listeners: str, admin: int = 0, extra: str = "") -> str:
    return "\n".join(
        [
            "listeners:",
            *listeners,
            f'admin: {{listen: "127.0.0.1:{admin or free_port()}", token_env: null}}',
            "health_check: {enabled: false}",
            "access_log: false",
            "drain_timeout: 2",
            f"backends: [{{host: 127.0.0.1, port: {backend.port}}}]",
            extra,
        ]
    )


async def test_serve_refuses_to_start_with_a_mismatched_pair(files: Files, backend: AioBackend, serve: Any) -> None:
    cert, _, _ = files.issue("site", "site.test")
    _, other_key, _ = files.issue("other", "other.test")
    running = serve(serve_text(backend, listener_yaml(cert, other_key).replace(":0", f":{free_port()}")))
    assert running.proc.wait(30) == 2
    problems = [line["problem"] for line in running.lines() if line.get("event") == "config_error"]
    assert problems == [
        f"listeners[0].tls.certificates[0].key: {other_key} is not the key of the certificate in {cert}"
    ]


async def test_sighup_reloads_certificates_for_new_connections_and_keeps_open_ones(
    files: Files, backend: AioBackend, serve: Any
) -> None:
    cert, key, first = files.issue("site", "site.test")
    port = free_port()
    running = serve(serve_text(backend, listener_yaml(cert, key).replace(":0", f":{port}")))
    await wait_for_port(port, running.proc)
    context = files.client_context()
    async with connect(port, context) as kept:
        assert (await kept.request())[0] == 200
        old_serial = serial_of(kept.peer_der)
        _, _, second = files.issue("site", "site.test")  # the same files, a new certificate
        new_serial = x509.load_pem_x509_certificate(second.cert_chain_pems[0].bytes()).serial_number
        assert new_serial != old_serial
        running.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            async with connect(port, context) as fresh:
                if serial_of(fresh.peer_der) == new_serial:
                    assert (await fresh.request())[0] == 200
                    break
            assert time.monotonic() < deadline, "the new certificate was not served"
            await asyncio.sleep(0.02)
        assert (await kept.request())[0] == 200  # the open connection goes on, on its old session
        assert serial_of(kept.peer_der) == old_serial
        # A bad pair on the next reload: refused, naming the file; the certificate in use stays.
        _, other_key, _ = files.issue("other", "other.test")
        key.write_bytes(other_key.read_bytes())
        running.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any(line.get("event") == "reload_refused" for line in running.lines()):
            assert time.monotonic() < deadline, "the bad reload was not refused"
            await asyncio.sleep(0.02)
        refusal = next(line for line in running.lines() if line.get("event") == "reload_refused")
        assert any(str(key) in error for error in refusal["errors"]), refusal
        async with connect(port, context) as fresh:
            assert serial_of(fresh.peer_der) == new_serial and (await fresh.request())[0] == 200
        assert (await kept.request())[0] == 200
    del first


async def test_two_workers_serve_a_plain_and_a_tls_listener(
    files: Files, backend: AioBackend, serve: Any, tmp_path: Path
) -> None:
    cert, key, _ = files.issue("site", "site.test")
    plain, secure, admin = free_port(), free_port(), free_port()
    text = serve_text(
        backend,
        f'  - {{address: "127.0.0.1:{plain}"}}',
        listener_yaml(cert, key).replace(":0", f":{secure}"),
        admin=admin,
        extra="workers: 2",
    )
    running = serve(text, level="warning")
    await wait_for_port(plain, running.proc)  # not the TLS one: a connect without a handshake is a failed one
    # both workers up: the admin API's worker rows
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, KeyError):
                async with http.get(f"http://127.0.0.1:{admin}/distribution") as response:
                    rows = (await response.json())["workers"]
                if len(rows) == 2 and all(row["up"] for row in rows):
                    break
            assert time.monotonic() < deadline, "the workers did not start"
            await asyncio.sleep(0.05)
        for _ in range(12):  # fresh connections: the kernel spreads them over both workers
            async with connect(secure, files.client_context()) as conn:
                status, _, body = await conn.request()
                assert status == 200 and echoed(body, "X-Forwarded-Proto") == ["https"]
            async with connect(plain, None) as conn:
                status, _, body = await conn.request()
                assert status == 200 and echoed(body, "X-Forwarded-Proto") == ["http"]
        async with http.get(f"http://127.0.0.1:{admin}/distribution") as response:
            rows = (await response.json())["workers"]
        assert sum(row["total_requests"] for row in rows) == 24
        reader, writer = await asyncio.open_connection(HOST, secure)
        writer.write(b"not a client hello\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
        async with http.get(f"http://127.0.0.1:{admin}/metrics") as response:
            text = await response.text()
        expected = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()
        assert expiry_lines(text) == [(f'{{cert="{cert}",listener="127.0.0.1:{secure}"}}', expected)]  # once
        assert sample(text, "omnixan_lb_tls_handshake_failures_total") == 1
        # SIGHUP: every worker serves the new certificate to new connections; the metric follows
        later = datetime.datetime(2032, 1, 2, tzinfo=datetime.timezone.utc)
        _, _, renewed = files.issue("site", "site.test", not_after=later)
        serial = x509.load_pem_x509_certificate(renewed.cert_chain_pems[0].bytes()).serial_number
        running.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        streak = 0
        while streak < 12:  # fresh connections in a row, spread over both workers
            async with connect(secure, files.client_context()) as conn:
                streak = streak + 1 if serial_of(conn.peer_der) == serial else 0
            assert time.monotonic() < deadline, "the workers did not all take the new certificate"
        async with http.get(f"http://127.0.0.1:{admin}/metrics") as response:
            text = await response.text()
        assert expiry_lines(text) == [(f'{{cert="{cert}",listener="127.0.0.1:{secure}"}}', later.timestamp())]


def expiry_lines(text: str) -> list[tuple[str, float]]:
    """(labels, value) of each sample of the expiry family."""
    prefix = "omnixan_lb_tls_certificate_expiry_seconds{"
    rows = [line[len(prefix) - 1 :].rpartition(" ") for line in text.splitlines() if line.startswith(prefix)]
    return [(labels, float(value)) for labels, _, value in rows]


async def test_a_plain_listen_config_is_served_as_before(backend: AioBackend) -> None:
    async with start_proxy([backend.port]) as harness, connect(harness.port, None) as conn:
        assert harness.proxy.ports == [harness.port]
        status, _, body = await conn.request()
        assert status == 200 and echoed(body, "X-Forwarded-Proto") == ["http"]
