"""The PROXY protocol codec (server/proxy_protocol.py): what it reads, what it refuses, what it writes.

Every reading case is fed all at once, byte by byte and in pieces of 2, 3 and 7 bytes (``feed``),
and must give the same header and the same rest. Then:

- the examples of HAProxy's doc/proxy-protocol.txt, v1 (TCP4, TCP6, UNKNOWN) and v2 (PROXY over
  IPv4 and IPv6, LOCAL, UNSPEC, UNIX, TLVs, CRC32C), with the bytes after the header intact;
- each malformed header refused with a ProxyProtocolError naming the problem, as soon as a byte
  tells, and nothing buffered past the size caps;
- hypothesis: encode_v1/encode_v2 read back for any addresses, ports, TLVs and splits, and random
  bytes giving nothing but a header, None or ProxyProtocolError;
- interop with a real HAProxy on 127.0.0.1 (skipped without ``haproxy``): its ``send-proxy`` and
  ``send-proxy-v2`` (with a CRC32C) read by a server of the test, and our headers sent into its
  ``accept-proxy`` frontend, which answers with the addresses it took.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from load_balancing_module.server.proxy_protocol import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    SIGNATURE_V2,
    ProxyHeader,
    ProxyHeaderReader,
    ProxyProtocolError,
    crc32c,
    encode_local_v2,
    encode_v1,
    encode_v2,
)

SPLITS = [0, 1, 2, 3, 7]  # 0: all at once
REQUEST = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"


def feed_split(data: bytes, size: int, reader: ProxyHeaderReader | None = None) -> tuple[ProxyHeader, bytes] | None:
    """Feed ``data`` in pieces of ``size`` bytes (all at once for 0); what the reader returned, or None.

    Pieces after the header are the rest: the caller would hand them to the HTTP reader.
    """
    reader = reader or ProxyHeaderReader()
    pieces = [data] if size == 0 else [data[i : i + size] for i in range(0, len(data), size)]
    for index, piece in enumerate(pieces):
        found = reader.feed(piece)
        if found is not None:
            header, rest = found
            return header, rest + b"".join(pieces[index + 1 :])
    return None


def read(data: bytes, reader_max: int = 4096) -> tuple[ProxyHeader, bytes]:
    """The header and rest of ``data``, the same however it is split."""
    results = [feed_split(data, size, ProxyHeaderReader(reader_max)) for size in SPLITS]
    assert results[0] is not None, "the header is incomplete"
    assert all(r == results[0] for r in results), results
    return results[0]


def refused(data: bytes) -> str:
    """The error ``data`` gets however it is split (the same message each time)."""
    messages = set()
    for size in SPLITS:
        with pytest.raises(ProxyProtocolError) as caught:
            feed_split(data, size)
        messages.add(str(caught.value))
    assert len(messages) == 1, messages
    return messages.pop()


def v2(command: int, family: int, block: bytes) -> bytes:
    return SIGNATURE_V2 + bytes((0x20 | command, family)) + len(block).to_bytes(2, "big") + block


def tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + len(value).to_bytes(2, "big") + value


IPV4_BLOCK = bytes.fromhex("c0a80001 c0a8000b dc04 01bb")  # 192.168.0.1:56324 -> 192.168.0.11:443
IPV6_BLOCK = (
    ipaddress.IPv6Address("2001:db8::1").packed
    + ipaddress.IPv6Address("2001:db8::2").packed
    + bytes.fromhex("dc04 01bb")
)


# -- version 1 --------------------------------------------------------------------------------------


def test_v1_tcp4_the_spec_example_then_the_request_intact() -> None:
    header, rest = read(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + REQUEST)
    assert header == ProxyHeader(1, "proxy", ("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert rest == REQUEST


def test_v1_tcp4_extremes() -> None:
    header, rest = read(b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n")
    assert header.source == ("255.255.255.255", 65535)
    assert header.destination == ("0.0.0.0", 0)
    assert rest == b""


def test_v1_tcp6_the_longest_line_and_canonical_addresses() -> None:
    longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {longest} {longest} 65535 65535\r\n".encode()
    assert len(line) == 104
    header, _ = read(line)
    assert header.source == (longest, 65535)
    header, rest = read(b"PROXY TCP6 2001:DB8:0:0::1 ::1 1 2\r\nxyz")
    assert header == ProxyHeader(1, "proxy", ("2001:db8::1", 1), ("::1", 2))
    assert rest == b"xyz"


def test_v1_unknown_short_and_the_107_byte_worst_case_mean_local() -> None:
    header, rest = read(b"PROXY UNKNOWN\r\n" + REQUEST)
    assert header == ProxyHeader(1, "local", None, None)
    assert rest == REQUEST
    worst = b"PROXY UNKNOWN " + b"f" * 39 + b" " + b"f" * 39 + b" 65535 65535\r\n"
    assert len(worst) == 107
    header, rest = read(worst + b"GET")
    assert header.command == "local" and header.source is None and rest == b"GET"
    # "the receiver must ignore anything presented before the CRLF"
    header, _ = read(b"PROXY UNKNOWN \xff anything at all \x00\r\n")
    assert header.command == "local"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"GET / HTTP/1.1\r\n", "starts with b'G', not a PROXY header"),
        (b"\x16\x03\x01", "not a PROXY header"),  # a TLS ClientHello
        (b"PROXZ TCP4", "PROXY v1: bad signature"),
        (b"PROXY  TCP4", "PROXY v1: unknown protocol"),
        (b"PROXY TCP5 1.2.3.4", "PROXY v1: unknown protocol b'TCP5"),
        (b"PROXY UNKNOWNX\r\n", "PROXY v1: unknown protocol"),
        (b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", "PROXY v1: unknown protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "PROXY v1: LF without CR"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "PROXY v1: CR not followed by LF"),
        (b"PROXY UNKNOWN\n", "PROXY v1: LF without CR"),
        (b"PROXY TCP4\r\n", "PROXY v1: 2 fields"),
        (b"PROXY TCP\rX", "PROXY v1: CR not followed by LF"),
        (b"PROXY TCP4 " + b"1" * 200, "PROXY v1: no CRLF within the first 107 bytes"),
        (b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n", "PROXY v1: no CRLF within the first 107 bytes"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "PROXY v1: extra spaces"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "PROXY v1: extra spaces"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "PROXY v1: 5 fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "PROXY v1: 7 fields"),
        (b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", "PROXY v1: unexpected byte b'\\t'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "PROXY v1: unexpected byte b'+'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "PROXY v1: unexpected byte b'-'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n", "PROXY v1: TCP4 destination address '5.6.7.256' is not an IPv4"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "PROXY v1: TCP4 source address '1.2.3' is not an IPv4"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "PROXY v1: TCP4 source address '01.2.3.4' is not an IPv4"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "PROXY v1: TCP4 source address '::1' is not an IPv4"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "PROXY v1: TCP6 source address '1.2.3.4' is not an IPv6"),
        (b"PROXY TCP6 ::1 1::2::3 1 2\r\n", "PROXY v1: TCP6 destination address '1::2::3' is not an IPv6"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "PROXY v1: unexpected byte b'%'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n", "PROXY v1: source port '70000' out of range"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "PROXY v1: destination port '65536' out of range"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 0443 2\r\n", "PROXY v1: source port '0443' is not a decimal"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 1234567\r\n", "PROXY v1: destination port '1234567' is not a decimal"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 ab\r\n", "PROXY v1: destination port 'ab' is not a decimal"),
    ],
)
def test_v1_malformed_is_refused_naming_the_problem(data: bytes, problem: str) -> None:
    assert problem in refused(data)


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        (b"X", "not a PROXY header"),
        (b"PROXI", "bad signature"),
        (b"PROXY X", "unknown protocol"),
        (b"PROXY TCP4 1.2.3.4\n", "LF without CR"),
        (b"PROXY TCP4 1.2.3.4\rZ", "CR not followed by LF"),
        (b"PROXY TCP4 1.2.3.4/", "unexpected byte"),
    ],
)
def test_v1_refused_as_soon_as_a_byte_tells(prefix: bytes, problem: str) -> None:
    """No waiting for the CRLF or the 107th byte when the bytes so far cannot start a header."""
    reader = ProxyHeaderReader()
    for byte in prefix[:-1]:
        assert reader.feed(bytes((byte,))) is None
    with pytest.raises(ProxyProtocolError, match=re.escape(problem)):
        reader.feed(prefix[-1:])


def test_v1_line_without_crlf_is_refused_at_byte_107_not_later() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(b"PROXY UNKNOWN " + b"x" * 92) is None  # 106 bytes
    with pytest.raises(ProxyProtocolError, match="no CRLF within the first 107 bytes"):
        reader.feed(b"x" + b"y" * 1_000_000)


# -- version 2 --------------------------------------------------------------------------------------


def test_v2_proxy_over_ipv4_then_the_request_intact() -> None:
    data = v2(1, 0x11, IPV4_BLOCK) + REQUEST
    assert data[:16] == bytes.fromhex("0d0a0d0a000d0a515549540a 21 11 000c")
    header, rest = read(data)
    assert header == ProxyHeader(2, "proxy", ("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert rest == REQUEST


def test_v2_proxy_over_ipv6() -> None:
    header, rest = read(v2(1, 0x21, IPV6_BLOCK) + b"\r\n\r\n")
    assert header == ProxyHeader(2, "proxy", ("2001:db8::1", 56324), ("2001:db8::2", 443))
    assert rest == b"\r\n\r\n"


def test_v2_udp_families_give_their_addresses() -> None:
    assert read(v2(1, 0x12, IPV4_BLOCK))[0].source == ("192.168.0.1", 56324)
    assert read(v2(1, 0x22, IPV6_BLOCK))[0].destination == ("2001:db8::2", 443)


def test_v2_local_means_the_real_connection_whatever_it_carries() -> None:
    assert encode_local_v2() == SIGNATURE_V2 + b"\x20\x00\x00\x00"
    header, rest = read(encode_local_v2() + REQUEST)
    assert header == ProxyHeader(2, "local", None, None)
    assert rest == REQUEST
    # "Receivers MUST always consider this field to skip the appropriate number of bytes"
    header, rest = read(v2(0, 0x11, IPV4_BLOCK) + b"after")
    assert header == ProxyHeader(2, "local", None, None)
    assert rest == b"after"
    header, _ = read(v2(0, 0x11, b"\x01\x02\x03"))  # a LOCAL header's addresses are ignored, however short
    assert header.command == "local"
    header, _ = read(v2(0, 0x00, tlv(PP2_TYPE_NOOP, b"")))
    assert header.tlvs == ((PP2_TYPE_NOOP, b""),)


def test_v2_unspec_and_unix_carry_no_source() -> None:
    header, rest = read(v2(1, 0x00, b"") + b"x")
    assert header == ProxyHeader(2, "proxy", None, None)
    assert rest == b"x"
    unix_block = b"/run/client.sock".ljust(108, b"\x00") + b"/run/lb.sock".ljust(108, b"\x00")
    for family in (0x31, 0x32):
        header, rest = read(v2(1, family, unix_block + tlv(PP2_TYPE_AUTHORITY, b"example.test")) + b"y")
        assert header.command == "proxy" and header.source is None and header.destination is None
        assert header.authority == "example.test"
        assert rest == b"y"


def test_v2_tlvs_exposed_in_order_with_authority_ssl_and_crc32c() -> None:
    ssl = bytes((0x01,)) + (0).to_bytes(4, "big") + tlv(0x21, b"TLSv1.3")  # PP2_CLIENT_SSL, verified
    block = (
        IPV4_BLOCK
        + tlv(PP2_TYPE_ALPN, b"h2")
        + tlv(PP2_TYPE_AUTHORITY, "bücher.test".encode())
        + tlv(PP2_TYPE_SSL, ssl)
        + tlv(0xE0, b"")
        + tlv(PP2_TYPE_CRC32C, b"\x00\x00\x00\x00")
    )
    data = v2(1, 0x11, block)
    data = data[:-4] + crc32c(data).to_bytes(4, "big")
    header, rest = read(data + REQUEST)
    assert [kind for kind, _ in header.tlvs] == [PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL, 0xE0, PP2_TYPE_CRC32C]
    assert header.authority == "bücher.test"
    assert header.tlv(PP2_TYPE_SSL) == ssl
    assert header.tlv(PP2_TYPE_ALPN) == b"h2"
    assert header.tlv(0x30) is None
    assert header.source == ("192.168.0.1", 56324)
    assert rest == REQUEST


def test_crc32c_is_the_castagnoli_checksum() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value (RFC 3720 B.4 and others)
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeroes


def _with_crc(block_before: bytes, block_after: bytes = b"") -> bytes:
    data = v2(1, 0x11, IPV4_BLOCK + block_before + tlv(PP2_TYPE_CRC32C, bytes(4)) + block_after)
    at = 16 + len(IPV4_BLOCK) + len(block_before) + 3
    return data[:at] + crc32c(data).to_bytes(4, "big") + data[at + 4 :]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c", "PROXY v2: bad signature"),
        (b"\r\r", "PROXY v2: bad signature"),
        (SIGNATURE_V2 + b"\x11\x11\x00\x0c" + IPV4_BLOCK, "PROXY v2: version 1 in byte 13 (0x11), expected 2"),
        (SIGNATURE_V2 + b"\x31\x11\x00\x0c" + IPV4_BLOCK, "PROXY v2: version 3"),
        (SIGNATURE_V2 + b"\x22\x11\x00\x0c" + IPV4_BLOCK, "PROXY v2: unknown command 0x2"),
        (SIGNATURE_V2 + b"\x2f\x11\x00\x0c" + IPV4_BLOCK, "PROXY v2: unknown command 0xf"),
        (SIGNATURE_V2 + b"\x21\x41\x00\x0c" + IPV4_BLOCK, "PROXY v2: unknown address family/transport 0x41"),
        (SIGNATURE_V2 + b"\x21\x13\x00\x0c" + IPV4_BLOCK, "PROXY v2: unknown address family/transport 0x13"),
        (SIGNATURE_V2 + b"\x20\x10\x00\x00", "PROXY v2: unknown address family/transport 0x10"),
        (v2(1, 0x11, IPV4_BLOCK[:11]), "PROXY v2: length 11 is too short for TCP over IPv4 addresses (12 bytes)"),
        (v2(1, 0x21, IPV6_BLOCK[:35]), "PROXY v2: length 35 is too short for TCP over IPv6 addresses (36 bytes)"),
        (v2(1, 0x31, bytes(215)), "PROXY v2: length 215 is too short for UNIX stream addresses (216 bytes)"),
        (v2(1, 0x11, IPV4_BLOCK + b"\x01\x00"), "PROXY v2: TLV at byte 28 overruns the block (2 bytes left"),
        (v2(1, 0x11, IPV4_BLOCK + b"\x02\x00\x05abcd"), "PROXY v2: TLV 0x02 of 5 bytes at byte 28 overruns the block"),
        (v2(1, 0x11, IPV4_BLOCK + tlv(1, b"ok") + b"\x05\xff\xff"), "PROXY v2: TLV 0x05 of 65535 bytes at byte 33"),
        (v2(0, 0x00, b"\x04\x00\x09"), "PROXY v2: TLV 0x04 of 9 bytes at byte 16 overruns"),
        (v2(1, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_CRC32C, bytes(4))), "PROXY v2: bad CRC32C 0x00000000"),
        (v2(1, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_CRC32C, bytes(3))), "PROXY v2: CRC32C TLV of 3 bytes, expected 4"),
        (v2(1, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_AUTHORITY, b"\xff\xfe")), "PROXY v2: AUTHORITY TLV is not UTF-8"),
        (v2(1, 0x11, IPV4_BLOCK + tlv(0xE0, bytes(4090))), "PROXY v2: header of 4105 bytes after its 16 fixed ones"),
    ],
)
def test_v2_malformed_is_refused_naming_the_problem(data: bytes, problem: str) -> None:
    assert problem in refused(data)


def test_v2_crc32c_a_flipped_bit_anywhere_is_refused() -> None:
    good = _with_crc(tlv(PP2_TYPE_AUTHORITY, b"a.test"), tlv(PP2_TYPE_NOOP, b"pad"))
    assert read(good)[0].authority == "a.test"
    for at in (13, 17, 33, len(good) - 1):  # the family, an address, the authority, the NOOP's padding
        corrupt = bytearray(good)
        corrupt[at] ^= 0x01
        if at == 13:  # 0x11 -> 0x10 is an unknown family before the CRC is looked at
            assert "unknown address family" in refused(bytes(corrupt))
        else:
            assert "bad CRC32C" in refused(bytes(corrupt))
    two = v2(1, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_CRC32C, bytes(4)) + tlv(PP2_TYPE_CRC32C, bytes(4)))
    assert "more than one CRC32C TLV" in refused(two)


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        (b"\r\n\r\n\x01", "bad signature"),
        (SIGNATURE_V2 + b"\x10", "version 1"),
        (SIGNATURE_V2 + b"\x23", "unknown command"),
        (SIGNATURE_V2 + b"\x21\x99", "unknown address family"),
        (SIGNATURE_V2 + b"\x21\x21\x00\x10", "too short for TCP over IPv6"),
        (SIGNATURE_V2 + b"\x21\x21\xff\xff", "over the limit (4096)"),
    ],
)
def test_v2_refused_as_soon_as_a_byte_tells(prefix: bytes, problem: str) -> None:
    """Refused on the byte that tells: a hostile peer does not make us wait for (or hold) the block."""
    reader = ProxyHeaderReader()
    for byte in prefix[:-1]:
        assert reader.feed(bytes((byte,))) is None
    with pytest.raises(ProxyProtocolError, match=re.escape(problem)):
        reader.feed(prefix[-1:])


def test_v2_the_size_cap_is_configurable() -> None:
    big = v2(1, 0x11, IPV4_BLOCK + tlv(0xE1, bytes(20_000)))
    assert "over the limit (4096)" in refused(big)
    header, rest = feed_split(big + b"tail", 1000, ProxyHeaderReader(max_v2_bytes=65535)) or (None, b"")
    assert header is not None and header.tlv(0xE1) == bytes(20_000) and rest == b"tail"
    with pytest.raises(ProxyProtocolError, match=r"over the limit \(0\)"):
        ProxyHeaderReader(0).feed(v2(1, 0, b"x"))
    assert ProxyHeaderReader(0).feed(v2(1, 0, b"")) is not None
    with pytest.raises(ValueError, match="max_v2_bytes"):
        ProxyHeaderReader(70_000)


def test_a_reader_reads_one_header() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(b"") is None
    assert reader.feed(encode_local_v2()) is not None
    with pytest.raises(RuntimeError):
        reader.feed(b"GET")


def test_byte_by_byte_is_linear() -> None:
    """Feeding a capped-size header one byte at a time does bounded work per byte (no re-scan of the whole)."""
    data = v2(1, 0x11, IPV4_BLOCK + tlv(0xE0, bytes(60_000)))
    reader = ProxyHeaderReader(max_v2_bytes=65535)
    started = time.perf_counter()
    found = None
    for i in range(len(data)):
        found = reader.feed(data[i : i + 1])
    assert found is not None and found[0].tlv(0xE0) == bytes(60_000)
    assert time.perf_counter() - started < 5.0  # quadratic would be 60k * 60k byte copies


# -- encoding ---------------------------------------------------------------------------------------


def test_encode_v1() -> None:
    assert encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert encode_v1(("2001:db8::1", 1), ("::1", 2)) == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"


def test_encode_mixed_families_maps_ipv4_into_ipv6_as_haproxy_does() -> None:
    line = encode_v1(("192.0.2.1", 1), ("2001:db8::2", 2))
    assert line == b"PROXY TCP6 ::ffff:c000:201 2001:db8::2 1 2\r\n"  # hex groups, as v1 asks
    header, _ = read(line)
    assert ipaddress.IPv6Address(header.source[0] if header.source else "").ipv4_mapped == ipaddress.IPv4Address(
        "192.0.2.1"
    )
    data = encode_v2(("2001:db8::1", 1), ("192.0.2.2", 2))
    assert data[13] == 0x21
    header, _ = read(data)
    assert header.destination is not None
    assert ipaddress.IPv6Address(header.destination[0]).ipv4_mapped == ipaddress.IPv4Address("192.0.2.2")


def test_encode_v2_bytes_and_the_crc32c_filled_in() -> None:
    assert encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443)) == v2(1, 0x11, IPV4_BLOCK)
    data = encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443), [(PP2_TYPE_AUTHORITY, b"a.test"), (3, b"????")])
    header, _ = read(data)
    crc = header.tlv(PP2_TYPE_CRC32C)
    assert crc is not None and crc != b"????"
    assert header.authority == "a.test"


@pytest.mark.parametrize(
    ("source", "destination", "tlvs", "problem"),
    [
        (("192.0.2.1", 70000), ("192.0.2.2", 1), (), "source port 70000 out of range"),
        (("192.0.2.1", 1), ("192.0.2.2", -1), (), "destination port -1 out of range"),
        (("example.test", 1), ("192.0.2.2", 1), (), "source address 'example.test' is not an IP address"),
        (("fe80::1%eth0", 1), ("::1", 1), (), "has a scope id"),
        (("::1", 1), ("::1", 1), ((256, b""),), "TLV type 256 is not a byte"),
        (("::1", 1), ("::1", 1), ((1, bytes(70_000)),), "TLV 0x01 of 70000 bytes is over 65535"),
        (("::1", 1), ("::1", 1), ((1, bytes(40_000)), (1, bytes(40_000))), "over 65535"),
        (("::1", 1), ("::1", 1), ((3, b"12"),), "a CRC32C TLV is one 4-byte value"),
    ],
)
def test_encode_refuses_what_it_cannot_write(
    source: tuple[str, int], destination: tuple[str, int], tlvs: Sequence[tuple[int, bytes]], problem: str
) -> None:
    with pytest.raises(ProxyProtocolError, match=problem):
        encode_v2(source, destination, tlvs)
    if not tlvs:
        with pytest.raises(ProxyProtocolError, match=problem):
            encode_v1(source, destination)


# -- hypothesis -------------------------------------------------------------------------------------

ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
endpoints = st.one_of(
    st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)), st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports))
)
tlv_lists = st.lists(
    st.one_of(
        st.tuples(
            st.integers(0, 255).filter(lambda k: k not in (PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C)), st.binary(max_size=64)
        ),
        st.tuples(st.just(PP2_TYPE_AUTHORITY), st.text(max_size=20).map(str.encode)),
    ),
    max_size=6,
)
splits = st.lists(st.integers(1, 40), min_size=1, max_size=30)


def chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    at = 0
    for size in sizes:
        yield data[at : at + size]
        at += size
    yield data[at:]


def read_chunks(data: bytes, sizes: list[int]) -> tuple[ProxyHeader, bytes] | None:
    reader = ProxyHeaderReader()
    pieces = list(chunks(data, sizes))
    for index, piece in enumerate(pieces):
        found = reader.feed(piece)
        if found is not None:
            return found[0], found[1] + b"".join(pieces[index + 1 :])
    return None


def canonical(endpoint: tuple[str, int]) -> tuple[str, int]:
    return str(ipaddress.ip_address(endpoint[0])), endpoint[1]


@settings(max_examples=300, deadline=None)
@given(endpoints, st.binary(max_size=64), splits)
def test_hypothesis_v1_round_trip(pair: tuple[tuple[str, int], tuple[str, int]], rest: bytes, sizes: list[int]) -> None:
    source, destination = pair
    found = read_chunks(encode_v1(source, destination) + rest, sizes)
    assert found == (ProxyHeader(1, "proxy", canonical(source), canonical(destination)), rest)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(endpoints, tlv_lists, st.booleans(), st.binary(max_size=64), splits)
def test_hypothesis_v2_round_trip(
    pair: tuple[tuple[str, int], tuple[str, int]],
    tlvs: list[tuple[int, bytes]],
    with_crc: bool,
    rest: bytes,
    sizes: list[int],
) -> None:
    source, destination = pair
    sent = [*tlvs, (PP2_TYPE_CRC32C, b"\x00\x00\x00\x00")] if with_crc else tlvs
    found = read_chunks(encode_v2(source, destination, sent) + rest, sizes)
    assert found is not None
    header, after = found
    assert (header.version, header.command, header.source, header.destination) == (
        2,
        "proxy",
        canonical(source),
        canonical(destination),
    )
    assert [t for t in header.tlvs if t[0] != PP2_TYPE_CRC32C] == [t for t in tlvs if t[0] != PP2_TYPE_CRC32C]
    assert after == rest


prefixes = st.sampled_from(
    [b"", b"P", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", SIGNATURE_V2, SIGNATURE_V2 + b"\x21"]
)


@settings(max_examples=1000, deadline=None)
@given(prefixes, st.binary(max_size=300), splits)
def test_hypothesis_random_bytes_give_a_header_none_or_a_proxy_protocol_error(
    prefix: bytes, data: bytes, sizes: list[int]
) -> None:
    try:
        found = read_chunks(prefix + data, sizes)
    except ProxyProtocolError:
        return
    if found is not None:
        header, rest = found
        assert header.version in (1, 2) and header.command in ("proxy", "local")
        assert len(rest) < len(prefix + data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=120), st.sampled_from([0x11, 0x12, 0x21, 0x22, 0x31, 0x00]), splits)
def test_hypothesis_random_v2_blocks_give_a_header_or_a_proxy_protocol_error(
    block: bytes, family: int, sizes: list[int]
) -> None:
    """Past the signature and the fixed bytes: random addresses and TLV bytes."""
    try:
        found = read_chunks(v2(1, family, block), sizes)
    except ProxyProtocolError:
        return
    assert found is not None and found[1] == b""


# -- interop with HAProxy ---------------------------------------------------------------------------

HAPROXY = shutil.which("haproxy")
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (Debian: apt-get install -y haproxy) for the interop tests"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], ports: Sequence[int], log: Path) -> None:
    """Bounded poll until HAProxy listens on every port (read from /proc, no connection made)."""
    deadline = time.monotonic() + 10.0
    wanted = {f"{port:04X}" for port in ports}
    while True:
        listening = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A":  # TCP_LISTEN
                        listening.add(fields[1].rsplit(":", 1)[1])
        if wanted <= listening:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"haproxy did not start listening on {ports}: {log.read_text()}")
        time.sleep(0.02)


class HAProxy:
    """A real ``haproxy -db`` on 127.0.0.1 with the test's configuration, stopped by its pid."""

    def __init__(self, tmp_path: Path, config: str, ports: Sequence[int]) -> None:
        assert HAPROXY is not None
        path = tmp_path / "haproxy.cfg"
        path.write_text(config)
        check = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = tmp_path / "haproxy.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=out, stderr=subprocess.STDOUT)
        wait_listening(self.proc, ports, self.log)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


HAPROXY_GLOBAL = """\
global
    maxconn 64
defaults
    timeout connect 2s
    timeout client 5s
    timeout server 5s
"""


class HeaderServer:
    """The test's server: reads each connection's PROXY header with ProxyHeaderReader, keyed by source port."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[ProxyHeader, bytes]] = {}
        self.errors: list[str] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proxy = ProxyHeaderReader()
        try:
            found = None
            while found is None:
                data = await reader.read(65536)
                if not data:
                    return
                found = proxy.feed(data)
            header, rest = found
            while b"\n" not in rest:
                more = await reader.read(65536)
                if not more:
                    break
                rest += more
            self.seen[header.source[1] if header.source else -1] = (header, rest)
            writer.write(b"read\n")
            await writer.drain()
        except ProxyProtocolError as exc:
            self.errors.append(str(exc))
        finally:
            writer.close()


@needs_haproxy
async def test_haproxy_send_proxy_v1_and_v2_are_read(tmp_path: Path) -> None:
    backend = HeaderServer()
    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    v1_port, v2_port = free_port(), free_port()
    config = (
        HAPROXY_GLOBAL
        + f"""\
    mode tcp
listen send_v1
    bind 127.0.0.1:{v1_port}
    server s 127.0.0.1:{backend_port} send-proxy
listen send_v2
    bind 127.0.0.1:{v2_port}
    server s 127.0.0.1:{backend_port} send-proxy-v2 proxy-v2-options crc32c
"""
    )
    haproxy = await asyncio.to_thread(HAProxy, tmp_path, config, [v1_port, v2_port])
    try:
        for port, version in ((v1_port, 1), (v2_port, 2)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            client = writer.get_extra_info("sockname")
            writer.write(b"hello\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert answer == b"read\n", (answer, backend.errors)
            header, rest = backend.seen[client[1]]
            assert header.version == version and header.command == "proxy"
            assert header.source == (client[0], client[1])
            assert header.destination == ("127.0.0.1", port)
            assert rest == b"hello\n"
            if version == 2:
                assert header.tlv(PP2_TYPE_CRC32C) is not None  # HAProxy's checksum, verified by the reader
        assert backend.errors == []
    finally:
        await asyncio.to_thread(haproxy.stop)
        server.close()
        await server.wait_closed()


ANSWER = "src=%[src] sport=%[src_port] dst=%[dst] dport=%[dst_port]"  # what HAProxy took from the header


@needs_haproxy
async def test_our_headers_are_accepted_by_haproxy_accept_proxy(tmp_path: Path) -> None:
    port = free_port()
    config = (
        HAPROXY_GLOBAL
        + f"""\
    mode http
frontend accept
    bind 127.0.0.1:{port} accept-proxy
    http-request return status 200 content-type text/plain lf-string "{ANSWER}"
"""
    )
    haproxy = await asyncio.to_thread(HAProxy, tmp_path, config, [port])
    request = b"GET / HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n"

    async def ask(header: bytes) -> tuple[bytes, tuple[str, int]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = writer.get_extra_info("sockname")
        writer.write(header + request)
        try:
            answer = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:  # how HAProxy refuses a bad header
            answer = b""
        writer.close()
        return answer, client

    try:
        crc = [(PP2_TYPE_AUTHORITY, b"lb.test"), (PP2_TYPE_CRC32C, bytes(4))]
        cases = [
            (
                encode_v1(("203.0.113.7", 4321), ("198.51.100.1", 443)),
                b"src=203.0.113.7 sport=4321 dst=198.51.100.1 dport=443",
            ),
            (encode_v1(("2001:db8::7", 1), ("2001:db8::1", 80)), b"src=2001:db8::7 sport=1 dst=2001:db8::1 dport=80"),
            (
                encode_v2(("203.0.113.8", 65535), ("198.51.100.2", 8443)),
                b"src=203.0.113.8 sport=65535 dst=198.51.100.2 dport=8443",
            ),
            (
                encode_v2(("2001:db8::8", 9), ("2001:db8::2", 1), crc),
                b"src=2001:db8::8 sport=9 dst=2001:db8::2 dport=1",
            ),
        ]
        for header, expected in cases:
            answer, _ = await ask(header)
            assert answer.startswith(b"HTTP/1.1 200"), (header, answer)
            assert answer.endswith(expected), (header, answer)
        answer, client = await ask(encode_local_v2())  # LOCAL: HAProxy keeps the real connection's addresses
        assert answer.endswith(f"src=127.0.0.1 sport={client[1]} dst=127.0.0.1 dport={port}".encode()), answer
        # A wrong checksum is refused by HAProxy too: our CRC32C is the one it computes.
        good = encode_v2(("203.0.113.9", 1), ("198.51.100.3", 2), crc)
        answer, _ = await ask(good)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        answer, _ = await ask(good[:-1] + bytes((good[-1] ^ 1,)))
        assert answer == b"", answer
    finally:
        await asyncio.to_thread(haproxy.stop)
