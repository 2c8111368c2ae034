"""The PROXY protocol, versions 1 and 2: the header a proxy in front of us sends, and the one we send.

HAProxy's ``doc/proxy-protocol.txt`` defines it: a connection from a proxy starts with one header
that names the client (``PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\\r\\n`` in version 1, a
binary block after a 12-byte signature in version 2), then the connection's own bytes follow.
:class:`ProxyHeaderReader` reads that header from the first bytes of a connection, accepting both
versions (as HAProxy's ``accept-proxy`` does) and refusing anything else as soon as a byte tells;
:func:`encode_v1`, :func:`encode_v2` and :func:`encode_local_v2` write one for an upstream.

Who may send a header (only ``trusted_proxies``) is the listener's rule, not this module's: it
only reads and writes bytes, and imports nothing from the package. See docs/proxy-protocol.md.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

SIGNATURE_V2: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_BYTES: Final = 107  # "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n", CRLF included
V2_MAX_BYTES: Final = 4096  # the default cap on a v2 header's length field (addresses + TLVs)

PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_TYPE_NETNS: Final = 0x30

_V1_PREFIX: Final = b"PROXY "
_V1_PROTOCOLS: Final = (b"TCP4 ", b"TCP6 ", b"UNKNOWN\r", b"UNKNOWN ")
# The bytes a TCP4/TCP6 line may hold before its CRLF: digits, hex letters, dots, colons, spaces.
_V1_TCP_BYTES: Final = b"0123456789abcdefABCDEF.: "
_DIGITS: Final = b"0123456789"
# The address block's size for each family/transport byte version 2 allows; others are refused.
_V2_ADDRESS_BYTES: Final = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
_V2_FAMILY_NAMES: Final = {
    0x00: "UNSPEC",
    0x11: "TCP over IPv4",
    0x12: "UDP over IPv4",
    0x21: "TCP over IPv6",
    0x22: "UDP over IPv6",
    0x31: "UNIX stream",
    0x32: "UNIX datagram",
}


class ProxyProtocolError(ValueError):
    """A PROXY protocol header that is malformed or too big (the message names what), or one we cannot write."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header says about the connection it starts.

    ``command`` is ``"local"`` for a v2 LOCAL header (a health check by the proxy itself) and for a
    v1 ``UNKNOWN`` line: use the real connection's addresses then. ``source`` and ``destination``
    are ``(ip, port)`` with the IP in its canonical text (``ipaddress``), or None when the header
    names no TCP/UDP address (LOCAL, UNKNOWN, UNSPEC, UNIX). ``tlvs`` are a v2 header's
    type-length-value fields, ``(type, value)`` in the order they came.
    """

    version: int
    command: Literal["proxy", "local"]
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, or None."""
        for tlv_type, value in self.tlvs:
            if tlv_type == kind:
                return value
        return None

    @property
    def authority(self) -> str | None:
        """``PP2_TYPE_AUTHORITY`` (0x02): the host name the client asked for (TLS SNI), if sent."""
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8")


class ProxyHeaderReader:
    """Incremental: fed the first bytes of a connection until the header is complete.

    :meth:`feed` returns ``(header, the bytes after it)`` once the header is complete and None while
    more is needed. It raises :class:`ProxyProtocolError` as soon as the bytes cannot start a valid
    header (the first byte is neither ``P`` nor ``\\r``, the signature or a field is wrong), and when
    a v1 line has no CRLF in its first 107 bytes or a v2 header announces more than ``max_v2_bytes``
    after its 16 fixed bytes, so at most one read past those limits is ever held. Each byte fed is
    looked at a bounded number of times: feeding byte by byte costs what one feed does.
    """

    def __init__(self, max_v2_bytes: int = V2_MAX_BYTES) -> None:
        if not 0 <= max_v2_bytes <= 0xFFFF:
            raise ValueError(f"max_v2_bytes must be within 0..65535, not {max_v2_bytes}")
        self.max_v2_bytes = max_v2_bytes
        self._buffer = bytearray()
        self._scanned = 0  # v1: bytes already checked for CR, LF and forbidden bytes
        self._v2_total = -1  # v2: the header's full size, once its 16 fixed bytes are in
        self._done = False

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        if self._done:
            raise RuntimeError("this ProxyHeaderReader already read its header")
        buffer = self._buffer
        buffer += data
        if not buffer:
            return None
        first = buffer[0]
        if first == 0x50:  # "P"
            found = self._feed_v1()
        elif first == 0x0D:  # "\r"
            found = self._feed_v2()
        else:
            raise ProxyProtocolError(f"PROXY: the connection starts with {bytes(buffer[:1])!r}, not a PROXY header")
        if found is not None:
            self._done = True
            self._buffer = bytearray()
        return found

    # -- version 1 ------------------------------------------------------------------------------

    def _feed_v1(self) -> tuple[ProxyHeader, bytes] | None:
        buffer = self._buffer
        size = len(buffer)
        if self._scanned < 14:  # "PROXY " and the protocol word, checked as they come
            _check_v1_start(bytes(buffer[:14]))
        start = max(self._scanned, 6)
        limit = min(size, V1_MAX_BYTES)
        cr = buffer.find(b"\r", start, limit)
        lf = buffer.find(b"\n", start, limit)
        if lf >= 0 and (cr < 0 or lf < cr):
            raise ProxyProtocolError("PROXY v1: LF without CR")
        stop = limit if cr < 0 else cr
        _check_v1_bytes(buffer, start, stop)
        self._scanned = stop  # a CR whose LF is yet to come is looked at again
        if 0 <= cr < V1_MAX_BYTES - 1 and cr + 1 < size:
            if buffer[cr + 1] != 0x0A:
                raise ProxyProtocolError("PROXY v1: CR not followed by LF")
            return parse_v1(bytes(buffer[:cr])), bytes(buffer[cr + 2 :])
        if size >= V1_MAX_BYTES:
            raise ProxyProtocolError(f"PROXY v1: no CRLF within the first {V1_MAX_BYTES} bytes")
        return None

    # -- version 2 ------------------------------------------------------------------------------

    def _feed_v2(self) -> tuple[ProxyHeader, bytes] | None:
        buffer = self._buffer
        size = len(buffer)
        if self._v2_total < 0:
            head = bytes(buffer[:16])
            bad = _first_mismatch((SIGNATURE_V2,), head[:12])
            if bad >= 0:
                raise ProxyProtocolError(f"PROXY v2: bad signature {head[: bad + 1]!r}")
            _check_v2_fixed(head)
            if size < 16:
                return None
            length = int.from_bytes(head[14:16], "big")
            if length > self.max_v2_bytes:
                limit = self.max_v2_bytes
                raise ProxyProtocolError(
                    f"PROXY v2: header of {length} bytes after its 16 fixed ones is over the limit ({limit})"
                )
            _check_v2_length(head[12], head[13], length)
            self._v2_total = 16 + length
        total = self._v2_total
        if size < total:
            return None
        return parse_v2(bytes(buffer[:total])), bytes(buffer[total:])


# -- reading --------------------------------------------------------------------------------------


def _check_v1_start(head: bytes) -> None:
    """Refuse a v1 line whose first bytes (up to 14) cannot begin ``PROXY TCP4 ``/``TCP6 ``/``UNKNOWN``."""
    bad = _first_mismatch((_V1_PREFIX,), head[:6])
    if bad >= 0:
        raise ProxyProtocolError(f"PROXY v1: bad signature {head[: bad + 1]!r}, expected 'PROXY '")
    word = head[6:]
    bad = _first_mismatch(_V1_PROTOCOLS, word)
    if bad >= 0 and word[bad] not in b"\r\n":  # a CR or LF is judged with the line's end
        raise ProxyProtocolError(f"PROXY v1: unknown protocol {word[: bad + 1]!r}, expected TCP4, TCP6 or UNKNOWN")


def _first_mismatch(options: tuple[bytes, ...], got: bytes) -> int:
    """The index of the first byte of ``got`` that no option has there (-1 if it begins or extends one)."""
    for option in options:  # the usual case: a valid start, one comparison
        if option.startswith(got) or got.startswith(option):
            return -1
    # Errors quote ``got`` up to that byte: a message does not depend on how the bytes were split.
    for end in range(1, len(got) + 1):
        seen = got[:end]
        if not any(option.startswith(seen) or seen.startswith(option) for option in options):
            return end - 1
    return -1


def _check_v1_bytes(buffer: bytearray, start: int, end: int) -> None:
    """A TCP4/TCP6 line holds only address, port and space bytes; an UNKNOWN line's rest is ignored."""
    start = max(start, 11)  # "PROXY TCP4 " itself is checked by _check_v1_start
    if start >= end or buffer[6:9] != b"TCP":
        return
    stray = bytes(buffer[start:end]).translate(None, _V1_TCP_BYTES)
    if stray:
        raise ProxyProtocolError(f"PROXY v1: unexpected byte {stray[:1]!r} in the line")


def parse_v1(line: bytes) -> ProxyHeader:
    """The header a whole v1 line says (without its CRLF)."""
    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
        return ProxyHeader(1, "local", None, None)
    fields = line.split(b" ")
    if b"" in fields:
        raise ProxyProtocolError(f"PROXY v1: extra spaces in {line!r}, fields are separated by exactly one")
    if len(fields) != 6:
        raise ProxyProtocolError(
            f"PROXY v1: {len(fields)} fields in {line!r}, expected 'PROXY TCP4|TCP6 src dst sport dport'"
        )
    protocol = fields[1]
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1: unknown protocol {protocol!r}, expected TCP4, TCP6 or UNKNOWN")
    v6 = protocol == b"TCP6"
    source = (_v1_address(fields[2], v6, "source"), _v1_port(fields[4], "source"))
    destination = (_v1_address(fields[3], v6, "destination"), _v1_port(fields[5], "destination"))
    return ProxyHeader(1, "proxy", source, destination)


def _v1_address(field: bytes, v6: bool, role: str) -> str:
    text = field.decode("ascii")  # only ASCII bytes got this far
    family = "TCP6" if v6 else "TCP4"
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.IPv6Address(text) if v6 else ipaddress.IPv4Address(text)
        )
    except ValueError:
        kind = "IPv6" if v6 else "IPv4"
        raise ProxyProtocolError(f"PROXY v1: {family} {role} address {text!r} is not an {kind} address") from None
    return str(address)


def _v1_port(field: bytes, role: str) -> int:
    text = field.decode("ascii")
    if len(field) > 5 or field.strip(_DIGITS) or (len(field) > 1 and field[0] == 0x30):
        raise ProxyProtocolError(f"PROXY v1: {role} port {text!r} is not a decimal 0..65535 without leading zeros")
    port = int(field)
    if port > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v1: {role} port {text!r} out of range")
    return port


def _check_v2_fixed(head: bytes) -> None:
    """Refuse a v2 header's version/command and family bytes as soon as they are in."""
    if len(head) > 12:
        version, command = head[12] >> 4, head[12] & 0x0F
        if version != 2:
            raise ProxyProtocolError(f"PROXY v2: version {version} in byte 13 (0x{head[12]:02x}), expected 2")
        if command > 1:
            raise ProxyProtocolError(f"PROXY v2: unknown command 0x{command:x} (0 LOCAL and 1 PROXY are defined)")
    if len(head) > 13 and head[13] not in _V2_ADDRESS_BYTES:
        raise ProxyProtocolError(f"PROXY v2: unknown address family/transport 0x{head[13]:02x}")


def _check_v2_length(version_command: int, family: int, length: int) -> None:
    """A PROXY header's length must hold its family's addresses (a LOCAL one's are ignored, the spec says)."""
    needed = _V2_ADDRESS_BYTES[family]
    if length < needed and version_command & 0x0F == 1:
        raise ProxyProtocolError(
            f"PROXY v2: length {length} is too short for {_V2_FAMILY_NAMES[family]} addresses ({needed} bytes)"
        )


def parse_v2(header: bytes) -> ProxyHeader:
    """The header a whole v2 block says (16 fixed bytes, then exactly the length they announce)."""
    if len(header) < 16 or not header.startswith(SIGNATURE_V2):
        raise ProxyProtocolError("PROXY v2: bad signature")
    _check_v2_fixed(header[:16])
    if len(header) != 16 + int.from_bytes(header[14:16], "big"):
        raise ProxyProtocolError("PROXY v2: the block's size is not the length its header announces")
    local = header[12] & 0x0F == 0
    family = header[13]
    needed = _V2_ADDRESS_BYTES[family]
    _check_v2_length(header[12], family, len(header) - 16)
    if len(header) - 16 < needed:  # a LOCAL header's addresses are ignored whatever its family says
        return ProxyHeader(2, "local", None, None)
    tlvs = _parse_tlvs(header, 16 + needed)
    if local:
        return ProxyHeader(2, "local", None, None, tlvs)
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    if family in (0x11, 0x12):
        source = (socket.inet_ntop(socket.AF_INET, header[16:20]), int.from_bytes(header[24:26], "big"))
        destination = (socket.inet_ntop(socket.AF_INET, header[20:24]), int.from_bytes(header[26:28], "big"))
    elif family in (0x21, 0x22):
        source = (str(ipaddress.IPv6Address(header[16:32])), int.from_bytes(header[48:50], "big"))
        destination = (str(ipaddress.IPv6Address(header[32:48])), int.from_bytes(header[50:52], "big"))
    return ProxyHeader(2, "proxy", source, destination, tlvs)


def _parse_tlvs(header: bytes, offset: int) -> tuple[tuple[int, bytes], ...]:
    """The TLVs from ``offset`` to the end; each must fit, a CRC32C must match, an AUTHORITY be UTF-8."""
    tlvs: list[tuple[int, bytes]] = []
    end = len(header)
    crc_at = -1
    while offset < end:
        if end - offset < 3:
            raise ProxyProtocolError(
                f"PROXY v2: TLV at byte {offset} overruns the block ({end - offset} bytes left, a TLV takes 3 or more)"
            )
        kind = header[offset]
        length = int.from_bytes(header[offset + 1 : offset + 3], "big")
        start = offset + 3
        if start + length > end:
            raise ProxyProtocolError(
                f"PROXY v2: TLV 0x{kind:02x} of {length} bytes at byte {offset} overruns the block ({end - start} left)"
            )
        value = header[start : start + length]
        if kind == PP2_TYPE_CRC32C:
            if length != 4:
                raise ProxyProtocolError(f"PROXY v2: CRC32C TLV of {length} bytes, expected 4")
            if crc_at >= 0:
                raise ProxyProtocolError("PROXY v2: more than one CRC32C TLV")
            crc_at = start
        elif kind == PP2_TYPE_AUTHORITY:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise ProxyProtocolError("PROXY v2: AUTHORITY TLV is not UTF-8") from None
        tlvs.append((kind, value))
        offset = start + length
    if crc_at >= 0:
        sent = int.from_bytes(header[crc_at : crc_at + 4], "big")
        computed = crc32c(header[:crc_at] + b"\x00\x00\x00\x00" + header[crc_at + 4 :])
        if sent != computed:
            raise ProxyProtocolError(f"PROXY v2: bad CRC32C 0x{sent:08x}, the header's is 0x{computed:08x}")
    return tuple(tlvs)


# -- CRC32C (Castagnoli, RFC 4960 appendix B), for the PP2_TYPE_CRC32C TLV -------------------------


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C of ``data`` (a header of at most a few KiB, once per connection: a table is fast enough)."""
    table = _CRC32C_TABLE
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -- writing --------------------------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(value: tuple[str, int], role: str) -> tuple[IPAddress, int]:
    ip, port = value
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise ProxyProtocolError(f"PROXY: {role} address {ip!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ProxyProtocolError(f"PROXY: {role} address {ip!r} has a scope id, which the protocol cannot carry")
    if not 0 <= port <= 0xFFFF:
        raise ProxyProtocolError(f"PROXY: {role} port {port!r} out of range")
    return address, port


def _same_family(source: tuple[str, int], destination: tuple[str, int]) -> tuple[IPAddress, IPAddress, int, int]:
    """Both addresses in one family: an IPv4 one next to an IPv6 one becomes ``::ffff:a.b.c.d``, as HAProxy does."""
    src, sport = _address(source, "source")
    dst, dport = _address(destination, "destination")
    if src.version != dst.version:
        if isinstance(src, ipaddress.IPv4Address):
            src = ipaddress.IPv6Address(0xFFFF00000000 | int(src))
        if isinstance(dst, ipaddress.IPv4Address):
            dst = ipaddress.IPv6Address(0xFFFF00000000 | int(dst))
    return src, dst, sport, dport


def _v6_text(address: ipaddress.IPv6Address) -> str:
    """Hex groups only, as version 1 asks (Python 3.13 writes a mapped IPv4 address in dotted form)."""
    text = address.compressed
    if "." not in text:
        return text
    low = int(address) & 0xFFFFFFFF
    return text[: text.rindex(":") + 1] + f"{low >> 16:x}:{low & 0xFFFF:x}"


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """``PROXY TCP4|TCP6 src dst sport dport\\r\\n`` for a connection from ``source`` to ``destination``."""
    src, dst, sport, dport = _same_family(source, destination)
    if isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address):
        return f"PROXY TCP6 {_v6_text(src)} {_v6_text(dst)} {sport} {dport}\r\n".encode("ascii")
    return f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode("ascii")


def encode_v2(source: tuple[str, int], destination: tuple[str, int], tlvs: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """A v2 PROXY header (TCP over IPv4 or IPv6) for ``source`` -> ``destination``, then ``tlvs``.

    A ``PP2_TYPE_CRC32C`` TLV among ``tlvs`` (4 bytes, any value) is filled in with the header's
    checksum; the others are written as given.
    """
    src, dst, sport, dport = _same_family(source, destination)
    family = 0x11 if src.version == 4 else 0x21
    addresses = src.packed + dst.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return _v2(0x21, family, addresses, tlvs)


def encode_local_v2() -> bytes:
    """A v2 LOCAL header (UNSPEC, no address): a connection the proxy makes for itself, a health check."""
    return SIGNATURE_V2 + b"\x20\x00\x00\x00"


def _v2(command: int, family: int, addresses: bytes, tlvs: Sequence[tuple[int, bytes]]) -> bytes:
    block = bytearray(addresses)
    crc_at = -1
    for kind, value in tlvs:
        if not 0 <= kind <= 0xFF:
            raise ProxyProtocolError(f"PROXY v2: TLV type {kind} is not a byte")
        if len(value) > 0xFFFF:
            raise ProxyProtocolError(f"PROXY v2: TLV 0x{kind:02x} of {len(value)} bytes is over 65535")
        if kind == PP2_TYPE_CRC32C:
            if len(value) != 4 or crc_at >= 0:
                raise ProxyProtocolError("PROXY v2: a CRC32C TLV is one 4-byte value")
            crc_at = 16 + len(block) + 3
        block += bytes((kind,)) + len(value).to_bytes(2, "big") + bytes(value)
    if len(block) > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v2: {len(block)} bytes of addresses and TLVs, over 65535")
    header = SIGNATURE_V2 + bytes((command, family)) + len(block).to_bytes(2, "big") + bytes(block)
    if crc_at < 0:
        return header
    header = header[:crc_at] + b"\x00\x00\x00\x00" + header[crc_at + 4 :]
    return header[:crc_at] + crc32c(header).to_bytes(4, "big") + header[crc_at + 4 :]
