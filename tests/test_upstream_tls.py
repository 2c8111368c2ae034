"""Upstream TLS: the proxy's connections to backends over TLS, with real handshakes.

Certificates come from ``trustme`` (a CA made by the test); backends are real TLS servers on
127.0.0.1 (aiohttp, or a plain recorder that shows what bytes reached it). What is checked:
verification against the given CA, the name sent as SNI and verified (the backend's host, or
``server_name``), a client certificate, a failed handshake as a backend failure (502, the log
line, the breaker's count, never a plaintext fallback), reuse of pooled TLS connections, a
reload that changes the CA, health probes over TLS, and the config's errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from load_balancing_module import (
    BackendConfig,
    HealthCheckConfig,
    HealthState,
    LoadBalancingModule,
    LoadBalancingModuleConfig,
    ProbeTLS,
)
from load_balancing_module.clock import SystemClock
from load_balancing_module.exceptions import ConfigurationError
from load_balancing_module.health import ProbeFailed, Prober
from load_balancing_module.server.app import Server, announce_start
from load_balancing_module.server.config import ServerConfig, load_config
from load_balancing_module.server.reload import apply_config
from load_balancing_module.server.upstream_tls import UpstreamTLS
from proxy_helpers import HOST, AioBackend, ProxyHarness, get, server_config, start_proxy
from redis_helpers import free_port

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


# -- certificates and TLS backends ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    """A CA the proxy is not told of: its certificates must fail verification."""
    return trustme.CA()


def write_ca(ca: trustme.CA, path: Path) -> str:
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def write_pair(cert: trustme.LeafCert, directory: Path, name: str) -> tuple[str, str]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


class TLSBackend(AioBackend):
    """An aiohttp backend serving TLS with ``cert``; records the SNI of every handshake and the
    client certificate of every request. ``client_ca``: a client certificate from it is required."""

    def __init__(self, name: str, cert: trustme.LeafCert, *, client_ca: trustme.CA | None = None) -> None:
        super().__init__(name)
        self.sni: list[str | None] = []
        self.client_subjects: list[Any] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        if client_ca is not None:
            client_ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        context.sni_callback = self._on_sni
        self.context = context

    def _on_sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.sni.append(name)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        self.client_subjects.append(peercert.get("subjectAltName") if peercert else None)
        return await super()._handle(request)

    async def start(self, port: int = 0) -> TLSBackend:
        app = web.Application(client_max_size=self.client_max_size)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.release = asyncio.Event()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, HOST, port or self.port, ssl_context=self.context, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self


class Recorder:
    """A plain TCP server that keeps every byte it receives and never answers (or, with
    ``answer``, answers the first read with it and closes)."""

    def __init__(self, answer: bytes | None = None) -> None:
        self.answer = answer
        self.received = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        while data := await reader.read(65536):
            self.received += data
            if self.answer is not None:
                writer.write(self.answer)
                writer.close()
                return

    async def __aenter__(self) -> Recorder:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()


def tls_config(tls: Any, **fields: Any) -> ServerConfig:
    upstream = {"tls": tls, **fields.pop("upstream", {})}
    return server_config(upstream=upstream, **fields)


def error_of(body: bytes) -> str:
    message: str = json.loads(body)["error"]
    return message


class Events(logging.Handler):
    """The library's structured log events of one test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [r.fields for r in self.records if getattr(r, "event", None) == event]  # type: ignore[attr-defined]


@pytest.fixture
def events() -> AsyncIterator[Events] | Any:
    handler = Events()
    logger = logging.getLogger("load_balancing_module")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


async def one_request(proxy: ProxyHarness, path: str = "/") -> tuple[int, bytes]:
    async with proxy.client() as client:
        response = await client.request(get(path))
        return response.status, response.body


# -- requests over TLS ---------------------------------------------------------------------------


async def test_requests_go_over_tls_and_a_dns_name_host_is_the_sni(ca: trustme.CA, tmp_path: Path) -> None:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    config = tls_config({"ca": write_ca(ca, tmp_path / "ca.pem")})
    async with TLSBackend("tls", cert) as backend:
        async with start_proxy([BackendConfig(host="localhost", port=backend.port)], config=config) as proxy:
            status, body = await one_request(proxy, "/over-tls")
        assert status == 200 and json.loads(body)["backend"] == "tls"
        assert backend.requests == [("GET", "/over-tls")]
        assert backend.sni == ["localhost"]


async def test_an_ip_backend_is_verified_against_the_certificates_ip_address(ca: trustme.CA, tmp_path: Path) -> None:
    config = tls_config({"ca": write_ca(ca, tmp_path / "ca.pem")})
    async with (
        TLSBackend("by-ip", ca.issue_cert("127.0.0.1")) as backend,
        start_proxy([backend.port], config=config) as proxy,
    ):
        status, _ = await one_request(proxy)
    assert status == 200
    assert backend.sni == [None]  # an IP literal is never sent as SNI


async def test_server_name_overrides_the_sni_and_the_name_verified(
    ca: trustme.CA, tmp_path: Path, events: Events
) -> None:
    cert = ca.issue_cert("api.internal.test")  # no IP address in it
    ca_path = write_ca(ca, tmp_path / "ca.pem")
    async with TLSBackend("named", cert) as backend:
        async with start_proxy([backend.port], config=tls_config({"ca": ca_path})) as proxy:
            status, body = await one_request(proxy)
            assert status == 502 and "TLS" in error_of(body)
            assert "127.0.0.1" in events.of("upstream_tls_failed")[0]["error"]  # the IP was checked, and is not in it
        config = tls_config({"ca": ca_path, "server_name": "api.internal.test"})
        async with start_proxy([backend.port], config=config) as proxy:
            status, _ = await one_request(proxy)
        assert status == 200
        assert backend.sni[-1] == "api.internal.test"


async def test_a_client_certificate_is_presented_when_configured(ca: trustme.CA, tmp_path: Path) -> None:
    client_ca = trustme.CA()
    cert_path, key_path = write_pair(client_ca.issue_cert("proxy.test"), tmp_path, "client")
    ca_path = write_ca(ca, tmp_path / "ca.pem")
    async with TLSBackend("mtls", ca.issue_cert("127.0.0.1"), client_ca=client_ca) as backend:
        config = tls_config({"ca": ca_path, "cert": cert_path, "key": key_path})
        async with start_proxy([backend.port], config=config) as proxy:
            status, _ = await one_request(proxy)
        assert status == 200
        assert backend.client_subjects == [(("DNS", "proxy.test"),)]
        async with start_proxy([backend.port], config=tls_config({"ca": ca_path})) as proxy:
            status, _ = await one_request(proxy)
        assert status == 502  # refused without a certificate (during or right after the handshake)
        assert len(backend.requests) == 1


async def test_tls_true_verifies_with_the_system_cas(ca: trustme.CA, events: Events) -> None:
    async with TLSBackend("private", ca.issue_cert("127.0.0.1")) as backend:
        async with start_proxy([backend.port], config=tls_config(True)) as proxy:
            status, body = await one_request(proxy)
        assert status == 502 and "did not verify" in error_of(body)
        assert backend.requests == []
        assert "unable to get local issuer certificate" in events.of("upstream_tls_failed")[0]["error"]


async def test_verify_false_connects_to_anything_and_says_so(other_ca: trustme.CA, events: Events) -> None:
    config = tls_config({"verify": False})
    announce_start(config, [1], 2)
    assert events.of("upstream_tls_unverified") and events.of("upstream_tls_unverified")[0]["field"] == (
        "upstream.tls.verify"
    )
    async with TLSBackend("whoever", other_ca.issue_cert("x.test")) as backend:
        async with start_proxy([backend.port], config=config) as proxy:
            status, _ = await one_request(proxy)
        assert status == 200 and len(backend.requests) == 1


# -- failures -------------------------------------------------------------------------------------


async def test_an_untrusted_backend_is_a_backend_failure_and_gets_no_request(
    ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path, events: Events
) -> None:
    config = tls_config({"ca": write_ca(ca, tmp_path / "ca.pem")}, max_retries=0)
    async with TLSBackend("impostor", other_ca.issue_cert("127.0.0.1")) as backend:
        async with start_proxy([backend.port], config=config) as proxy:
            status, body = await one_request(proxy)
            backend_id = proxy.backend_ids[0]
            assert status == 502
            assert error_of(body) == f"TLS with backend {backend_id} failed: its certificate did not verify"
            state = proxy.lb.backends[backend_id]
            assert (state.failed, state.successful, state.in_flight) == (1, 0, 0)  # as a refused connect
            assert proxy.proxy.pool.idle == 0
        assert backend.requests == []
        (line,) = events.of("upstream_tls_failed")
        assert line["backend_id"] == backend_id and line["backend"] == f"127.0.0.1:{backend.port}"
        assert line["error"] == "unable to get local issuer certificate"


async def test_a_failed_handshake_is_retried_on_another_backend(
    ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path
) -> None:
    config = tls_config({"ca": write_ca(ca, tmp_path / "ca.pem")})
    async with (
        TLSBackend("impostor", other_ca.issue_cert("127.0.0.1")) as bad,
        TLSBackend("good", ca.issue_cert("127.0.0.1")) as good,
        start_proxy([bad.port, good.port], config=config) as proxy,
        proxy.client() as client,
    ):
        for _ in range(2):
            response = await client.request(get())
            assert response.status == 200 and json.loads(response.body)["backend"] == "good"
        retried = [f["attempts"] for f in proxy.access.fields].count(2)
        assert retried >= 1 and proxy.lb.backends[proxy.backend_ids[0]].failed == retried
    assert bad.requests == []


async def test_a_breaker_opens_on_failed_handshakes(ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path) -> None:
    config = tls_config(
        {"ca": write_ca(ca, tmp_path / "ca.pem")},
        max_retries=0,
        circuit_breaker={"failure_threshold": 2, "timeout": 60},
    )
    async with TLSBackend("impostor", other_ca.issue_cert("127.0.0.1")) as backend:
        async with start_proxy([backend.port], config=config) as proxy:
            statuses = [(await one_request(proxy))[0] for _ in range(3)]
            description = proxy.lb.describe_backend(proxy.backend_ids[0])
        assert statuses == [502, 502, 503]
        assert description["circuit_state"] == "open"


async def test_a_plaintext_backend_gets_a_client_hello_never_the_request(
    ca: trustme.CA, tmp_path: Path, events: Events
) -> None:
    config = tls_config({"ca": write_ca(ca, tmp_path / "ca.pem")}, upstream={"connect_timeout": 0.2}, max_retries=0)
    async with Recorder() as silent, start_proxy([silent.port], config=config) as proxy:
        status, body = await one_request(proxy, "/secret")
        assert status == 502 and error_of(body).endswith("failed: the handshake timed out")
    assert silent.received[:2] == b"\x16\x03"  # a TLS handshake record
    assert b"/secret" not in silent.received and b"GET" not in silent.received
    assert events.of("upstream_tls_failed")[0]["reason"] == "the handshake timed out"
    answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    async with Recorder(answer) as plain, start_proxy([plain.port], config=config) as proxy:
        status, body = await one_request(proxy, "/secret")
        assert status == 502 and error_of(body).endswith("failed: the handshake failed")
        assert proxy.lb.backends[proxy.backend_ids[0]].failed == 1
    assert b"/secret" not in plain.received


# -- the pool -------------------------------------------------------------------------------------


async def test_pooled_tls_connections_are_reused(ca: trustme.CA, tmp_path: Path) -> None:
    config = tls_config({"ca": write_ca(ca, tmp_path / "ca.pem")})
    async with (
        TLSBackend("pooled", ca.issue_cert("127.0.0.1")) as backend,
        start_proxy([backend.port], config=config) as proxy,
    ):
        for _ in range(3):
            assert (await one_request(proxy))[0] == 200
        pool = proxy.proxy.pool
        assert pool.connects == 1 and len(backend.peers) == 1 and backend.sni == [None]
        conn = pool.take(proxy.backend_ids[0], asyncio.get_running_loop().time())
        assert conn is not None and conn.tls
        assert not conn.peer_closed()  # an idle TLS connection reads as open
        pool.release(conn, reusable=True)
        assert (await one_request(proxy))[0] == 200 and pool.connects == 1


async def test_a_reload_with_another_ca_applies_to_new_connections(
    ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path
) -> None:
    good_ca, wrong_ca = write_ca(ca, tmp_path / "good.pem"), write_ca(other_ca, tmp_path / "wrong.pem")
    good = tls_config({"ca": good_ca}, max_retries=0)
    wrong = tls_config({"ca": wrong_ca}, max_retries=0)
    async with (
        TLSBackend("reloaded", ca.issue_cert("127.0.0.1")) as backend,
        start_proxy([backend.port], config=good) as proxy,
    ):
        assert (await one_request(proxy))[0] == 200
        assert proxy.proxy.pool.idle == 1
        await apply_config(proxy.pools, good, wrong, proxy.proxy.configure)
        assert proxy.proxy.pool.idle == 0  # made with the old CA: dropped, not reused
        assert (await one_request(proxy))[0] == 502
        await apply_config(proxy.pools, wrong, good, proxy.proxy.configure)
        assert (await one_request(proxy))[0] == 200
        connects = proxy.proxy.pool.connects
        await apply_config(proxy.pools, good, tls_config({"ca": good_ca}, max_retries=0), proxy.proxy.configure)
        assert (await one_request(proxy))[0] == 200
        assert proxy.proxy.pool.connects == connects  # same settings, same files: the pool is kept


async def test_a_reload_retires_a_busy_connection_once_its_exchange_ends(
    ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path
) -> None:
    entered, go = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await go.wait()
        return web.Response(text="late")

    good = tls_config({"ca": write_ca(ca, tmp_path / "good.pem")})
    backend = TLSBackend("busy", ca.issue_cert("127.0.0.1"))
    backend.handler = slow
    async with backend, start_proxy([backend.port], config=good) as proxy:
        pending = asyncio.ensure_future(one_request(proxy))
        await asyncio.wait_for(entered.wait(), 5)
        proxy.proxy.configure(tls_config({"ca": write_ca(other_ca, tmp_path / "other.pem")}))
        go.set()
        status, body = await pending
        assert (status, body) == (200, b"late")
        assert proxy.proxy.pool.idle == 0


async def test_a_connection_begun_before_a_tls_change_is_not_pooled(ca: trustme.CA, tmp_path: Path) -> None:
    async with AioBackend("plain") as backend, start_proxy([backend.port]) as proxy:
        pool = proxy.proxy.pool
        connecting = asyncio.ensure_future(pool.connect("b", HOST, backend.port, 2.0))
        await asyncio.sleep(0)  # the connect has begun, in plain TCP
        proxy.proxy.configure(tls_config({"ca": write_ca(ca, tmp_path / "ca.pem")}))
        conn = await connecting
        assert not conn.tls and conn.retired
        pool.release(conn, reusable=True)
        assert pool.idle == 0


async def test_a_switch_from_plain_to_tls_drops_plain_connections(ca: trustme.CA, tmp_path: Path) -> None:
    plain = server_config(max_retries=0)
    async with AioBackend("plain") as backend, start_proxy([backend.port], config=plain) as proxy:
        assert (await one_request(proxy))[0] == 200 and proxy.proxy.pool.idle == 1
        proxy.proxy.configure(tls_config({"ca": write_ca(ca, tmp_path / "ca.pem")}, max_retries=0))
        assert proxy.proxy.pool.idle == 0
        assert (await one_request(proxy))[0] == 502  # TLS to a plain backend: a failure, never plaintext
        assert len(backend.requests) == 1


# -- health probes over TLS ---------------------------------------------------------------------


def probe_config(kind: str) -> HealthCheckConfig:
    return HealthCheckConfig(type=kind, path="/health", timeout=2.0, unhealthy_threshold=1, healthy_threshold=1)


@pytest.mark.parametrize("kind", ["tcp", "http"])
async def test_probes_over_tls_pass_a_trusted_backend_and_fail_an_untrusted_one(
    kind: str, ca: trustme.CA, other_ca: trustme.CA
) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    prober = Prober(probe_config(kind), SystemClock(), tls=ProbeTLS(context))
    async with (
        TLSBackend("trusted", ca.issue_cert("127.0.0.1")) as trusted,
        TLSBackend("untrusted", other_ca.issue_cert("127.0.0.1")) as untrusted,
    ):
        assert await prober.probe(BackendConfig(host=HOST, port=trusted.port)) >= 0
        with pytest.raises(ProbeFailed, match="certificate verify failed"):
            await prober.probe(BackendConfig(host=HOST, port=untrusted.port))
        assert untrusted.requests == []
        assert trusted.requests == ([("GET", "/health")] if kind == "http" else [])


@pytest.mark.parametrize("kind", ["tcp", "http"])
async def test_a_module_with_probe_tls_marks_backends_by_their_handshake(
    kind: str, ca: trustme.CA, other_ca: trustme.CA
) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    config = LoadBalancingModuleConfig(health_check=probe_config(kind))
    lb = LoadBalancingModule(config, probe_tls=ProbeTLS(context, server_name="api.internal.test"))
    async with (
        TLSBackend("named", ca.issue_cert("api.internal.test")) as named,
        TLSBackend("impostor", other_ca.issue_cert("api.internal.test")) as impostor,
    ):
        good = await lb.add_backend(BackendConfig(host=HOST, port=named.port))
        bad = await lb.add_backend(BackendConfig(host=HOST, port=impostor.port))
        assert (await lb.health_check(good)).status is HealthState.HEALTHY
        assert named.sni == ["api.internal.test"]
        status = await lb.health_check(bad)
        assert status.status is HealthState.UNHEALTHY and "certificate verify failed" in (status.error or "")
        lb.configure_probe_tls(None)  # plain probes now: a tcp connect passes, a plain GET to TLS fails
        plain = await lb.health_check(good)
        assert plain.status is (HealthState.HEALTHY if kind == "tcp" else HealthState.UNHEALTHY)


async def test_the_server_probes_its_backends_over_its_upstream_tls(
    ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path
) -> None:
    path = tmp_path / "lb.yaml"
    ca_path = write_ca(ca, tmp_path / "ca.pem")
    path.write_text(
        "listen: 127.0.0.1:0\nadmin: {listen: '127.0.0.1:0'}\n"
        "health_check: {type: tcp, unhealthy_threshold: 1, healthy_threshold: 1}\n"
        f"upstream: {{tls: {{ca: {ca_path}}}}}\n"
    )
    config = load_config(path)
    server = Server(path, config)
    async with (
        TLSBackend("trusted", ca.issue_cert("127.0.0.1")) as trusted,
        TLSBackend("untrusted", other_ca.issue_cert("127.0.0.1")) as untrusted,
    ):
        good = await server.lb.add_backend(BackendConfig(host=HOST, port=trusted.port))
        bad = await server.lb.add_backend(BackendConfig(host=HOST, port=untrusted.port))
        assert (await server.lb.health_check(good)).status is HealthState.HEALTHY
        assert (await server.lb.health_check(bad)).status is HealthState.UNHEALTHY
        # A reload to plain TCP: the probes follow (a TCP connect passes whatever the certificate).
        plain = load_config(path).model_copy(update={"upstream": config.upstream.model_copy(update={"tls": None})})
        await apply_config(server.pools, config, plain, server.proxy.configure)
        assert (await server.lb.health_check(bad)).status is HealthState.HEALTHY
    await server.proxy.close()


# -- the config ----------------------------------------------------------------------------------


def config_errors(tmp_path: Path, upstream: str) -> str:
    path = tmp_path / "lb.yaml"
    path.write_text(f"upstream: {upstream}\n")
    with pytest.raises(ConfigurationError) as caught:
        load_config(path)
    return str(caught.value)


def test_the_short_forms(tmp_path: Path) -> None:
    assert ServerConfig.model_validate({"upstream": {"tls": False}}).upstream.tls is None
    assert ServerConfig.model_validate({}).upstream.tls is None
    system = ServerConfig.model_validate({"upstream": {"tls": True}}).upstream.tls
    assert system is not None and system.verify and system.ca is None
    assert system.context.verify_mode is ssl.CERT_REQUIRED and system.context.check_hostname
    assert system.context.get_ca_certs() or system.context.cert_store_stats()["x509_ca"] >= 0
    assert "upstream.tls: must be true" in config_errors(tmp_path, "{tls: 'yes'}")


def test_the_context_follows_the_settings(ca: trustme.CA, tmp_path: Path) -> None:
    tls = UpstreamTLS.model_validate({"ca": write_ca(ca, tmp_path / "ca.pem"), "min_version": "1.3"})
    assert tls.context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert [c["subject"] for c in tls.context.get_ca_certs()] == [
        c["subject"] for c in ssl.create_default_context(cafile=str(tmp_path / "ca.pem")).get_ca_certs()
    ]
    assert tls.server_hostname("10.0.0.5") == "10.0.0.5"
    named = UpstreamTLS(server_name="API.Internal.Test.")
    assert named.server_name == "api.internal.test" and named.server_hostname("10.0.0.5") == "api.internal.test"
    unverified = UpstreamTLS(verify=False)
    assert unverified.context.verify_mode is ssl.CERT_NONE and not unverified.context.check_hostname


def test_equal_settings_and_files_are_equal_and_a_changed_file_is_not(
    ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path
) -> None:
    path = write_ca(ca, tmp_path / "ca.pem")
    first, second = UpstreamTLS.model_validate({"ca": path}), UpstreamTLS.model_validate({"ca": path})
    assert first == second and first.context is not second.context
    write_ca(other_ca, tmp_path / "ca.pem")
    assert UpstreamTLS.model_validate({"ca": path}) != first
    dumped = ServerConfig.model_validate({"upstream": {"tls": {"ca": path}}}).model_dump(
        mode="json", exclude_unset=True
    )
    assert ServerConfig.model_validate(dumped).upstream.tls == UpstreamTLS.model_validate({"ca": path})


def test_a_missing_or_bad_ca_file_names_the_field_and_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    assert f"upstream.tls.ca: cannot read {missing}: No such file or directory" in config_errors(
        tmp_path, f"{{tls: {{ca: {missing}}}}}"
    )
    assert "upstream.tls.ca: /dev/zero is larger than 16 MiB" in config_errors(tmp_path, "{tls: {ca: /dev/zero}}")
    assert "upstream.tls.key: /dev/zero is larger than 16 MiB" in config_errors(
        tmp_path, "{tls: {cert: /dev/zero, key: /dev/zero}}"
    )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert f"upstream.tls.ca: {junk} holds no CA certificate in PEM form" in config_errors(
        tmp_path, f"{{tls: {{ca: {junk}}}}}"
    )


def test_a_client_certificate_needs_both_halves_that_match(ca: trustme.CA, tmp_path: Path) -> None:
    cert, key = write_pair(ca.issue_cert("proxy.test"), tmp_path, "client")
    _, other_key = write_pair(ca.issue_cert("other.test"), tmp_path, "other")
    assert "upstream.tls.cert: needs key too" in config_errors(tmp_path, f"{{tls: {{cert: {cert}}}}}")
    assert "upstream.tls.cert: required with key" in config_errors(tmp_path, f"{{tls: {{key: {key}}}}}")
    assert "upstream.tls.cert: certificate and key do not match" in config_errors(
        tmp_path, f"{{tls: {{cert: {cert}, key: {other_key}}}}}"
    )
    assert f"upstream.tls.key: cannot read {tmp_path / 'gone.key'}" in config_errors(
        tmp_path, f"{{tls: {{cert: {cert}, key: {tmp_path / 'gone.key'}}}}}"
    )
    assert f"upstream.tls.cert: cannot read {tmp_path / 'gone.crt'}" in config_errors(
        tmp_path, f"{{tls: {{cert: {tmp_path / 'gone.crt'}, key: {key}}}}}"
    )
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(Path(key).read_bytes(), None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert "upstream.tls.cert: cannot load the client certificate" in config_errors(
        tmp_path, f"{{tls: {{cert: {cert}, key: {encrypted}}}}}"
    )
    tls = UpstreamTLS.model_validate({"cert": cert, "key": key})
    assert tls.cert == Path(cert) and tls.key == Path(key)


def test_other_settings_are_checked(tmp_path: Path) -> None:
    assert "upstream.tls.server_name:" in config_errors(tmp_path, "{tls: {server_name: 'not a name'}}")
    assert "upstream.tls.min_version:" in config_errors(tmp_path, "{tls: {min_version: '1.1'}}")
    assert "upstream.tls.cafile: unknown key" in config_errors(tmp_path, "{tls: {cafile: /x}}")


# -- bodies and uvloop ----------------------------------------------------------------------------


async def big_bodies_over_tls(ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path) -> None:
    """3 MiB up and 3 MiB down through TLS (flow control over the TLS transport), a reused
    connection, and an untrusted backend refused."""

    async def download(request: web.Request) -> web.StreamResponse:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        return web.Response(body=b"d" * (3 * 1024 * 1024), headers={"X-Got": str(size)})

    config = tls_config({"ca": write_ca(ca, tmp_path / "ca.pem")}, max_retries=0)
    backend = TLSBackend("big", ca.issue_cert("127.0.0.1"))
    backend.handler = download
    async with backend, start_proxy([backend.port], config=config) as proxy, proxy.client() as client:
        for _ in range(2):
            body = b"u" * (3 * 1024 * 1024)
            head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
            response = await client.request(head + body)
            assert response.status == 200 and response.header("X-Got") == str(len(body))
            assert response.body == b"d" * (3 * 1024 * 1024)
        assert proxy.proxy.pool.connects == 1
    async with (
        TLSBackend("impostor", other_ca.issue_cert("127.0.0.1")) as impostor,
        start_proxy([impostor.port], config=config) as proxy,
    ):
        status, body = await one_request(proxy)
        assert status == 502 and "did not verify" in error_of(body)


async def test_big_bodies_go_through_tls(ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path) -> None:
    await big_bodies_over_tls(ca, other_ca, tmp_path)


def test_upstream_tls_on_uvloop(ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(big_bodies_over_tls(ca, other_ca, tmp_path))


# -- omnixan-lb serve with workers ----------------------------------------------------------------


async def test_serve_with_workers_speaks_tls_probes_over_it_and_reloads_the_ca(
    ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The supervisor's config reaches the workers (as JSON, validated again there, files read
    again), the supervisor probes over TLS, and a reload that swaps the CA swaps who is trusted."""
    port, admin = free_port(), free_port()
    ours, theirs = write_ca(ca, tmp_path / "ours.pem"), write_ca(other_ca, tmp_path / "theirs.pem")
    async with (
        TLSBackend("good", ca.issue_cert("127.0.0.1")) as good,
        TLSBackend("impostor", other_ca.issue_cert("127.0.0.1")) as impostor,
    ):
        path = tmp_path / "lb.yaml"

        def write(ca_path: str) -> None:
            path.write_text(
                f'listen: "127.0.0.1:{port}"\nworkers: 2\naccess_log: false\ndrain_timeout: 5\n'
                f'admin: {{listen: "127.0.0.1:{admin}", token_env: null}}\n'
                "health_check: {type: http, path: /health, interval: 0.1, unhealthy_threshold: 1,"
                " healthy_threshold: 1, jitter: 0}\n"
                f"upstream: {{tls: {{ca: {ca_path}}}}}\n"
                f"backends: [{{host: 127.0.0.1, port: {good.port}}}, {{host: 127.0.0.1, port: {impostor.port}}}]\n"
            )

        write(ours)
        exe = Path(sys.executable).parent / "omnixan-lb"
        proc = subprocess.Popen(
            [str(exe), "serve", "--config", str(path), "--log-level", "error"],
            stderr=subprocess.PIPE,
            env={**os.environ},
        )
        processes.append(proc)

        async def health() -> dict[str, str]:
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin}/distribution") as response:
                rows = (await response.json())["backends"]
                return {
                    name: rows[f"127.0.0.1:{b.port}"]["health_status"]
                    for name, b in (("good", good), ("impostor", impostor))
                }

        async def wait_for_health(expected: dict[str, str]) -> None:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the probes did not get there"
                try:
                    if await health() == expected:
                        return
                except (aiohttp.ClientError, KeyError):
                    pass
                await asyncio.sleep(0.02)

        async def names(count: int) -> set[str]:
            seen = set()
            connector = aiohttp.TCPConnector(force_close=True)  # new connections: both workers serve
            async with aiohttp.ClientSession(connector=connector) as http:
                for _ in range(count):
                    async with http.get(f"http://127.0.0.1:{port}/") as response:
                        assert response.status == 200
                        seen.add((await response.json())["backend"])
            return seen

        await wait_for_health({"good": "healthy", "impostor": "unhealthy"})
        assert await names(20) == {"good"}
        assert ("GET", "/health") in good.requests and impostor.requests == []
        write(theirs)
        proc.send_signal(signal.SIGHUP)
        await wait_for_health({"good": "unhealthy", "impostor": "healthy"})
        assert await names(20) == {"impostor"}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0


async def test_each_pool_speaks_its_own_tls(ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path) -> None:
    """A pool's tls is its own: the default pool stays plain, pool secure verifies with its CA, and
    a pool whose CA does not match fails its requests (502) while the others serve; the pools'
    probes speak their own TLS too."""
    good_ca, wrong_ca = write_ca(ca, tmp_path / "good.pem"), write_ca(other_ca, tmp_path / "wrong.pem")
    async with (
        AioBackend("plain") as plain,
        TLSBackend("secure", ca.issue_cert("127.0.0.1")) as secure,
        TLSBackend("mismatched", ca.issue_cert("127.0.0.1")) as mismatched,
    ):
        config = server_config(
            max_retries=0,
            health_check={"enabled": False, "unhealthy_threshold": 1},
            backends=[{"host": HOST, "port": plain.port}],
            pools={
                "secure": {"tls": {"ca": good_ca}, "backends": [{"host": HOST, "port": secure.port}]},
                "wrong": {"tls": {"ca": wrong_ca}, "backends": [{"host": HOST, "port": mismatched.port}]},
            },
            routes=[
                {"match": {"path_prefix": "/secure/"}, "pool": "secure"},
                {"match": {"path_prefix": "/wrong/"}, "pool": "wrong"},
            ],
        )
        async with start_proxy([], config=config) as proxy:
            await proxy.pools.start(config)  # the pools' backends, from the config
            status, body = await one_request(proxy, "/")
            assert status == 200 and json.loads(body)["backend"] == "plain"
            status, body = await one_request(proxy, "/secure/x")
            assert status == 200 and json.loads(body)["backend"] == "secure"
            assert secure.sni == [None]  # an IP backend: no SNI, its IP verified
            status, body = await one_request(proxy, "/wrong/x")
            assert status == 502 and "TLS" in error_of(body)
            assert mismatched.requests == []
            secure_id = next(iter(proxy.pools["secure"].backends))
            wrong_id = next(iter(proxy.pools["wrong"].backends))
            assert (await proxy.pools["secure"].health_check(secure_id)).status is HealthState.HEALTHY
            assert (await proxy.pools["wrong"].health_check(wrong_id)).status is HealthState.UNHEALTHY
