"""TLS to backends: the ``tls:`` settings of a pool and the one ``ssl.SSLContext`` they make.

:class:`UpstreamTLS` is what a config says under ``upstream.tls`` (the default pool) and, in
the same shape, under a pool's ``tls``. :data:`TLSSetting` is that field's type: it takes the
short forms too (``true``: the system's CAs, verification on; ``false`` or absent: plain TCP).

Validation reads every file it names and builds the context, so a bad file is refused with
the file and the field path (``upstream.tls.ca: cannot read /x.pem: ...``) before anything of
a new config applies; a reload validates in a thread, so the event loop goes on serving. The
context verifies the backend's certificate against ``ca`` (or the system's CAs) and the name
``server_name`` (or the backend's host: a DNS name, or an IP literal checked against the
certificate's IP addresses), offers ALPN ``http/1.1``, and presents ``cert`` when given.
``verify: false`` turns verification off: unsafe, logged as a warning at start and on reload.

:class:`UpstreamTLSError` is a failed handshake, as the pool's connect raises it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from .._log import log_event
from ..config import StrictModel, check_host
from ..health import ProbeTLS

MAX_FILE_BYTES = 16 * 1024 * 1024
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _no_password() -> bytes:
    """An encrypted key gets this empty password and fails to load: the proxy never prompts."""
    return b""


def _read(path: Path) -> bytes:
    """The file's bytes, at most MAX_FILE_BYTES (a CA bundle of every public CA is ~250 KB; a
    path such as /dev/zero must end in an error, not fill the memory)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB: not a certificate file")
    return data


def _ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's words, without the ``(_ssl.c:1006)`` of the C source line."""
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc.reason or exc.strerror or exc))


def _pem(path: Path, data: bytes) -> str:
    """The text of a PEM file (``cadata`` as bytes would be taken for DER)."""
    text = data.decode("latin-1")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else str(exc)
        raise ValueError(f"{path} holds no CA certificate in PEM form ({reason})") from None
    return text


def _load_pair(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"certificate and key do not match ({cert}, {key})") from None
        raise ValueError(
            f"cannot load the client certificate {cert} with key {key} (PEM, key not encrypted): {_ssl_reason(exc)}"
        ) from None
    except OSError as exc:  # gone or unreadable since the field was checked
        raise ValueError(f"cannot read {cert} or {key}: {exc.strerror or exc}") from None


class UpstreamTLS(StrictModel):
    """TLS to a pool's backends (see the module docstring). ``key`` comes before ``cert`` so that
    ``cert``'s check can see it, and name ``cert`` in what it finds wrong with the pair."""

    ca: Path | None = Field(
        default=None, description="a file of PEM CA certificates to verify backends with; absent: the system's CAs"
    )
    server_name: str | None = Field(
        default=None, description="the name sent (SNI) and verified; absent: the backend's host"
    )
    key: Path | None = Field(default=None, description="the client certificate's private key file (PEM, not encrypted)")
    cert: Path | None = Field(
        default=None,
        validate_default=True,
        description="a client certificate file (PEM, its chain after it) presented to backends; needs key",
    )
    verify: bool = Field(
        default=True, description="verify the backend's certificate and name; false: no verification (unsafe; logged)"
    )
    min_version: Literal["1.2", "1.3"] = Field(default="1.2", description='the oldest TLS version: "1.2" or "1.3"')

    _context: ssl.SSLContext = PrivateAttr()
    _fingerprint: bytes = PrivateAttr(default=b"")

    @field_validator("ca")
    @classmethod
    def _ca(cls, value: Path | None) -> Path | None:
        if value is not None:
            _pem(value, _read(value))
        return value

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.strip().lower().removesuffix(".")
        check_host(name)
        return name

    @field_validator("key")
    @classmethod
    def _key(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read(value)
        return value

    @field_validator("cert")
    @classmethod
    def _cert(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "key" not in info.data:
            return value  # the key was refused: its own error says why
        key = info.data["key"]
        if value is None:
            if key is not None:
                raise ValueError("required with key: a client certificate is a cert and its key")
            return None
        _read(value)
        if key is None:
            raise ValueError("needs key too: the client certificate's private key")
        _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), value, key)
        return value

    @model_validator(mode="after")
    def _build(self) -> UpstreamTLS:
        digest = hashlib.sha256(repr(self.model_dump(mode="json")).encode())
        if self.ca is None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        else:
            data = _read(self.ca)
            digest.update(data)
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=_pem(self.ca, data))
        context.minimum_version = _VERSIONS[self.min_version]
        context.set_alpn_protocols(["http/1.1"])
        if self.cert is not None and self.key is not None:
            digest.update(_read(self.cert))
            digest.update(_read(self.key))
            _load_pair(context, self.cert, self.key)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._context = context
        self._fingerprint = digest.digest()
        return self

    def __eq__(self, other: object) -> bool:
        """Equal settings and equal files (the contexts are equal in all but identity)."""
        if not isinstance(other, UpstreamTLS):
            return NotImplemented
        return self._fingerprint == other._fingerprint

    __hash__ = None  # type: ignore[assignment]  # mutable, as every config model

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    @property
    def fingerprint(self) -> bytes:
        """The settings and the bytes of every file they name: equal fingerprints, same TLS."""
        return self._fingerprint

    def server_hostname(self, host: str) -> str:
        """The name sent as SNI and verified for a backend at ``host`` (Python sends no SNI for
        an IP literal, and verifies it against the certificate's IP addresses)."""
        return self.server_name or host

    def probe_tls(self) -> ProbeTLS:
        """The same TLS for the library's health probes."""
        return ProbeTLS(self._context, self.server_name)

    def warn_if_unverified(self, field: str) -> None:
        """``verify: false`` is allowed, and said out loud."""
        if not self.verify:
            log_event(
                "upstream_tls_unverified",
                logging.WARNING,
                field=f"{field}.verify",
                hint="backends' certificates are not verified: anyone on the path can read and change the traffic",
            )


class UpstreamTLSError(OSError):
    """The TCP connect to a backend succeeded and the TLS handshake did not: its certificate did
    not verify, the handshake failed, timed out, or the backend closed the connection. ``reason``
    says which in words fit for the client's answer; ``detail`` is the whole story, for the log.
    Raised by the pool's connect; defined here, as mypyc compiles no subclass of OSError."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def tls_error(exc: BaseException, timeout: float) -> UpstreamTLSError:
    """What a failed handshake (``exc``, after ``timeout`` s for a timeout) is called."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UpstreamTLSError("its certificate did not verify", str(exc.verify_message or exc))
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTLSError("the handshake timed out", f"no TLS handshake within {timeout:g} s")
    if isinstance(exc, ssl.SSLError):
        return UpstreamTLSError("the handshake failed", str(exc.reason or exc))
    return UpstreamTLSError("the handshake failed", f"{type(exc).__name__}: {exc}".rstrip(": "))


def _short_form(value: Any) -> Any:
    """``tls: true`` is TLS with the system's CAs; ``tls: false`` (or null) is plain TCP."""
    if value is True:
        return {}
    if value is False:
        return None
    if value is None or isinstance(value, (dict, UpstreamTLS)):
        return value
    raise ValueError(
        "must be true (the system's CAs), false (plain TCP), or a mapping {ca, server_name, cert, key, ...}"
    )


TLSSetting = Annotated[UpstreamTLS | None, BeforeValidator(_short_form)]
"""The type of a ``tls:`` field: a mapping of :class:`UpstreamTLS` settings, ``true`` or ``false``."""
