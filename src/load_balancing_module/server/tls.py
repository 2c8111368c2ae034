"""TLS termination: a listener's ``tls`` settings into server ``ssl.SSLContext`` objects.

One context per certificate, all alike but for their certificate (as NGINX and HAProxy keep one
``SSL_CTX`` per certificate): a handshake starts on the first one (the default), and the SNI
callback switches it to the context of the certificate whose names match the name the client
asked for. The names are a certificate's DNS subject alternative names, ``*.`` wildcards
included (one label), or its common name when it has no SAN, as browsers read them (RFC 6125).

Every context is ``ssl.create_default_context(Purpose.CLIENT_AUTH)`` (the library's choice of
ciphers, compression off), with TLS 1.2 or 1.3 at least, ALPN ``http/1.1`` only, no
renegotiation, and no key log file even if ``SSLKEYLOGFILE`` is set; with ``client_ca``, client
certificates are required and checked against it.

Loading reads files: :func:`load_tls` runs where the config is read (a thread, or ``check``),
never on the event loop. Every problem is a :class:`ConfigurationError` naming the file.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..exceptions import ConfigurationError
from .config import CertificateConfig, ListenerConfig, ListenerTLS, ServerConfig

ALPN: Final = ["http/1.1"]  # h2 comes later; a client offering only h2 gets no ALPN (as NGINX does)
VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# The header that carries a verified client certificate's subject to the backend (RFC 4514); a
# client's own header of that name is always dropped (headers.py).
SUBJECT_HEADER: Final = b"X-Client-Cert-Subject"


class _EncryptedKey(Exception):
    """Raised by the password callback: a key that needs a passphrase is refused, never prompted for."""


def _no_password() -> bytes:
    raise _EncryptedKey


@dataclass(frozen=True)
class Certificate:
    """One loaded certificate: its files, the names SNI matches, its expiry, its context."""

    cert: str
    key: str
    names: tuple[str, ...]
    not_after: float  # unix time
    context: ssl.SSLContext


class ServerTLS:
    """One TLS listener's certificates; :attr:`context` is the one every handshake starts with."""

    def __init__(self, certificates: list[Certificate], client_certs: bool) -> None:
        self.certificates = certificates
        self.client_certs = client_certs  # clients present a certificate, checked against client_ca
        self.context = certificates[0].context
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for certificate in certificates:
            for name in certificate.names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], certificate.context)  # the first certificate naming it
                else:
                    exact.setdefault(name, certificate.context)
        self._exact = exact
        self._wildcard = wildcard
        if len(certificates) > 1:
            self.context.sni_callback = self._on_sni

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        """The context for a client that asked for ``server_name``: an exact name first, then a
        wildcard one label deep, else the default."""
        if not server_name:
            return self.context
        name = server_name.lower().removesuffix(".")
        found = self._exact.get(name)
        if found is None:
            _, dot, parent = name.partition(".")
            found = self._wildcard.get(parent) if dot else None
        return self.context if found is None else found

    def _on_sni(self, ssl_object: ssl.SSLObject, server_name: str | None, initial: ssl.SSLContext) -> None:
        chosen = self.context_for(server_name)
        if chosen is not initial:
            ssl_object.context = chosen


def load_tls(config: ServerConfig) -> list[ServerTLS | None]:
    """The TLS of every listener (``config.effective_listeners``, in order), None for a plain one.

    Reads files: run it off the event loop. :class:`ConfigurationError` lists every problem."""
    problems: list[str] = []
    out: list[ServerTLS | None] = []
    for i, listener in enumerate(config.effective_listeners):
        if listener.tls is None:
            out.append(None)
            continue
        try:
            out.append(load_listener(listener.tls, f"listeners[{i}].tls"))
        except ConfigurationError as exc:
            problems.extend(str(exc).splitlines())
    if problems:
        raise ConfigurationError("\n".join(problems))
    return out


def load_listener(tls: ListenerTLS, where: str) -> ServerTLS:
    problems: list[str] = []
    certificates = []
    for i, files in enumerate(tls.certificates):
        try:
            certificates.append(load_certificate(files, tls, f"{where}.certificates[{i}]"))
        except ConfigurationError as exc:
            problems.append(str(exc))
    if problems:  # a bad client_ca is one problem, however many certificates share it
        raise ConfigurationError("\n".join(dict.fromkeys(problems)))
    return ServerTLS(certificates, tls.client_ca is not None)


def load_certificate(files: CertificateConfig, tls: ListenerTLS, where: str) -> Certificate:
    """A certificate and its key, checked to belong together, in a context of its own."""
    try:
        pem = Path(files.cert).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{where}.cert: cannot read {files.cert}: {exc.strerror or exc}") from None
    try:
        leaf = x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        raise ConfigurationError(f"{where}.cert: {files.cert} holds no PEM certificate") from None
    context = server_context(tls, where)
    try:
        context.load_cert_chain(files.cert, files.key, password=_no_password)
    except _EncryptedKey:
        raise ConfigurationError(
            f"{where}.key: {files.key} is encrypted: give the key without a passphrase (readable by this user only)"
        ) from None
    except OSError as exc:  # ssl.SSLError is one; a missing or unreadable key too
        raise ConfigurationError(f"{where}.key: {_key_problem(files, exc)}") from None
    return Certificate(files.cert, files.key, names_of(leaf), leaf.not_valid_after_utc.timestamp(), context)


def _key_problem(files: CertificateConfig, exc: OSError) -> str:
    if not isinstance(exc, ssl.SSLError):
        return f"cannot read {files.key}: {exc.strerror or exc}"
    if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
        return f"{files.key} is not the key of the certificate in {files.cert}"
    return f"{files.key} is not a PEM private key for {files.cert} ({exc.reason or exc})"


def server_context(tls: ListenerTLS, where: str) -> ssl.SSLContext:
    """A server context with everything of ``tls`` but a certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # PROTOCOL_TLS_SERVER, safe ciphers
    context.minimum_version = VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.set_alpn_protocols(ALPN)
    if context.keylog_filename:  # SSLKEYLOGFILE: a server never writes its session keys out
        context.keylog_filename = None  # type: ignore[assignment]
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigurationError(
                f"{where.rpartition('.')[0]}.client_ca: cannot load {tls.client_ca}: {reason}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def names_of(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a certificate is for (lowercase): its SAN, or its common name if it has none."""
    names: list[str | bytes]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    else:
        names = list(san.get_values_for_type(x509.DNSName))
    text = (n.decode("latin-1") if isinstance(n, bytes) else n for n in names)
    return tuple(dict.fromkeys(n.lower().removesuffix(".") for n in text))


def expired(tls: list[ServerTLS | None], now: float) -> list[Certificate]:
    """The certificates past their notAfter at ``now`` (unix time)."""
    return [c for t in tls if t is not None for c in t.certificates if c.not_after <= now]


def expiries(addresses: list[str], tls: list[ServerTLS | None]) -> list[tuple[str, str, float]]:
    """(listener address, certificate file, notAfter) of every certificate, for the expiry metric."""
    rows = []
    for address, loaded in zip(addresses, tls, strict=True):
        if loaded is not None:
            rows += [(address, c.cert, c.not_after) for c in loaded.certificates]
    return rows


def client_subject(ssl_object: object) -> bytes:
    """The verified client certificate's subject, as an RFC 4514 string of visible ASCII: every
    other byte (controls, UTF-8) written as ``\\XX``, so that it cannot end a header line."""
    if not isinstance(ssl_object, (ssl.SSLObject, ssl.SSLSocket)):
        return b""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return b""
    text = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    out = bytearray()
    for byte in text.encode():
        if 0x20 <= byte < 0x7F:
            out.append(byte)
        else:
            out += b"\\%02X" % byte
    return bytes(out)


def same_shape(old: list[ListenerConfig], new: list[ListenerConfig]) -> bool:
    """The listeners bound and their roles unchanged (those need a restart); certificates, versions
    and client CAs may change on a reload."""
    return [(li.address, li.redirect_https, li.tls is None) for li in old] == [
        (li.address, li.redirect_https, li.tls is None) for li in new
    ]
