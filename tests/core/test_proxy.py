"""PROXY protocol v1/v2 parser and encoders (smtpfront.core.proxy)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpfront.core.errors import LocalProtocolError
from smtpfront.core.events import ProxyInfo
from smtpfront.core.proxy import (
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V1_MAX_LINE,
    V1_SIGNATURE,
    V2_SIGNATURE,
    crc32c,
    encode_proxy_v1,
    encode_proxy_v2,
    parse_proxy_header,
)
from smtpfront.core.replies import BAD_PROXY_HEADER

SMTP = b"EHLO x\r\n"
SRC4, DST4 = ("192.0.2.1", 12345), ("198.51.100.2", 25)
SRC6, DST6 = ("2001:db8::1", 40000), ("2001:db8::25", 587)
INET_BLOCK = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack("!HH", 12345, 25)
INET6_BLOCK = (
    bytes.fromhex("20010db8000000000000000000000001")
    + bytes.fromhex("20010db8000000000000000000000025")
    + struct.pack("!HH", 40000, 587)
)


def v2(ver_cmd: int = 0x21, fam: int = 0x11, body: bytes = INET_BLOCK, length: int | None = None) -> bytes:
    """A v2 header built by hand (not by the encoder under test)."""
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, len(body) if length is None else length) + body


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def unix_block(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def with_crc(header: bytes, at: int) -> bytes:
    """Patch the 4-byte CRC32C value starting at ``at`` (it must hold zeros)."""
    return header[:at] + crc32c(header).to_bytes(4, "big") + header[at + 4 :]


def ssl_value(client: int, *subs: bytes) -> bytes:
    return bytes([client]) + (0).to_bytes(4, "big") + b"".join(subs)


def parse(data: bytes, **kw: int) -> ProxyInfo:
    result = parse_proxy_header(data + SMTP, **kw)
    assert result is not None
    info, consumed = result
    assert consumed == len(data)
    return info


def assert_bad(data: bytes | bytearray, why: str = "", **kw: int) -> None:
    with pytest.raises(LocalProtocolError) as exc:
        parse_proxy_header(data, **kw)
    assert exc.value.reply is BAD_PROXY_HEADER
    assert exc.value.fatal
    assert any(why in note for note in exc.value.__notes__), exc.value.__notes__


# -- CRC32C -------------------------------------------------------------------------------


def test_crc32c_vectors() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 §B.4
    assert crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 §B.4
    assert crc32c(b"56789", crc32c(b"1234")) == 0xE3069283
    assert crc32c(memoryview(bytearray(b"123456789"))) == 0xE3069283


# -- v1 -----------------------------------------------------------------------------------


def test_v1_tcp4() -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.2 12345 25\r\n"
    assert encode_proxy_v1(SRC4, DST4) == line
    assert parse(line) == ProxyInfo(1, False, "TCP4", "192.0.2.1", 12345, "198.51.100.2", 25)


def test_v1_tcp6_normalized() -> None:
    info = parse(b"PROXY TCP6 2001:DB8:0:0::1 ::ffff:192.0.2.1 0 65535\r\n")
    assert info == ProxyInfo(1, False, "TCP6", "2001:db8::1", 0, "::ffff:c000:201", 65535)
    assert parse(encode_proxy_v1(SRC6, DST6)) == ProxyInfo(1, False, "TCP6", *SRC6, *DST6)


def test_v1_worst_case_tcp6_line() -> None:
    full = ":".join(["ffff"] * 8)
    line = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert parse(line).source_address == full


@pytest.mark.parametrize(
    "line",
    [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY UNKNOWN anything \xff\r\n"],
)
def test_v1_unknown(line: bytes) -> None:
    assert parse(line) == ProxyInfo(1, True, "UNKNOWN")


def test_v1_encode_unknown() -> None:
    assert encode_proxy_v1(None, None) == b"PROXY UNKNOWN\r\n"


@pytest.mark.parametrize("size", [V1_MAX_LINE - 1, V1_MAX_LINE, V1_MAX_LINE + 1])
def test_v1_line_limit(size: int) -> None:
    # §2.1: 107 bytes, CRLF included. The filler is ignored text after UNKNOWN.
    line = b"PROXY UNKNOWN " + b"x" * (size - 16) + b"\r\n"
    assert len(line) == size
    if size <= V1_MAX_LINE:
        assert parse(line) == ProxyInfo(1, True, "UNKNOWN")
    else:
        assert_bad(line, "107")
        assert_bad(line[:V1_MAX_LINE], "107")  # decided once 107 bytes hold no LF
        assert parse_proxy_header(line[: V1_MAX_LINE - 1]) is None


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n", "protocol"),
        (b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n", "protocol"),
        (b"PROXY  TCP4 192.0.2.1 198.51.100.2 1 2\r\n", "protocol"),
        (b"PROXY UNKNOWNX\r\n", "protocol"),
        (b"PROXY \r\n", "protocol"),
        (b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n", "fields"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n", "fields"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n", "fields"),
        (b"PROXY TCP4 192.0.2.1\t198.51.100.2 1 2\r\n", "fields"),
        (b"PROXY TCP4 \r\n", "fields"),
        (b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n", "TCP4 address"),
        (b"PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n", "TCP6 address"),
        (b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n", "TCP4 address"),
        (b"PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n", "TCP4 address"),
        (b"PROXY TCP4 host.example 198.51.100.2 1 2\r\n", "TCP4 address"),
        (b"PROXY TCP4 192.0.2.\xb9 198.51.100.2 1 2\r\n", "TCP4 address"),
        (b"PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n", "scope"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n", "port"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 99999\r\n", "port"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n", "port"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n", "port"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 025 2\r\n", "port"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 000001 2\r\n", "port"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 0x19 2\r\n", "port"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 \xd9\xa3\r\n", "port"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n", "bare"),
        (b"PROXY UNKNOWN\n", "protocol"),
        (b"PROXY UNKNOWN x\n", "bare"),
        (b"PROXY UNKNOWN x\ry\r\n", "bare"),
        (b"PROXY UNKNOWN\r\r\n", "bare"),
    ],
)
def test_v1_malformed(line: bytes, why: str) -> None:
    assert_bad(line + SMTP, why)


# -- v2 addresses -------------------------------------------------------------------------


def test_v2_inet() -> None:
    header = v2()
    assert encode_proxy_v2(SRC4, DST4) == header
    assert parse(header) == ProxyInfo(2, False, "TCP4", *SRC4, *DST4)


def test_v2_inet6() -> None:
    header = v2(fam=0x21, body=INET6_BLOCK)
    assert encode_proxy_v2(SRC6, DST6) == header
    assert parse(header) == ProxyInfo(2, False, "TCP6", *SRC6, *DST6)


def test_v2_unix() -> None:
    info = parse(v2(fam=0x31, body=unix_block(b"/run/client.sock", b"/run/smtpfront.sock")))
    assert info == ProxyInfo(2, False, "UNIX", "/run/client.sock", None, "/run/smtpfront.sock", None)


@pytest.mark.parametrize(
    ("path", "expected"),
    [(b"", ""), (b"/a\0junk", "/a"), (b"\0smtpfront", "@smtpfront"), (b"/" * 108, "/" * 108)],
)
def test_v2_unix_paths(path: bytes, expected: str) -> None:
    # sun_path ends at its NUL (bytes after it are ignored); a leading NUL is a Linux abstract name.
    info = parse(v2(fam=0x31, body=unix_block(path, b"/b")))
    assert (info.source_address, info.dest_address) == (expected, "/b")


def test_v2_unspec_proxy_keeps_socket_addresses() -> None:
    info = parse(v2(fam=0x00, body=tlv(PP2_TYPE_AUTHORITY, b"mx.example")))
    assert info == ProxyInfo(2, False, "UNKNOWN", tlvs={2: b"mx.example"}, authority="mx.example")


def test_v2_extra_address_bytes_are_tlvs() -> None:
    info = parse(v2(body=INET_BLOCK + tlv(0xE0, b"custom")))
    assert (info.source_address, info.tlvs) == ("192.0.2.1", {0xE0: b"custom"})


# -- v2 LOCAL -----------------------------------------------------------------------------


def test_v2_local() -> None:
    header = encode_proxy_v2(None, None)
    assert header == v2(0x20, 0x00, b"")
    assert parse(header) == ProxyInfo(2, True, "UNKNOWN")


def test_v2_local_with_family_ignores_addresses() -> None:
    assert parse(v2(0x20, 0x11)) == ProxyInfo(2, True, "TCP4")
    assert parse(v2(0x20, 0x21, INET6_BLOCK)) == ProxyInfo(2, True, "TCP6")
    assert parse(v2(0x20, 0x31, unix_block(b"/a", b"/b"))) == ProxyInfo(2, True, "UNIX")


@pytest.mark.parametrize("body", [b"", INET_BLOCK[:5], INET_BLOCK[:11]])
def test_v2_local_may_omit_the_address_block(body: bytes) -> None:
    assert parse(v2(0x20, 0x11, body)) == ProxyInfo(2, True, "TCP4")


def test_v2_local_parses_tlvs() -> None:
    header = encode_proxy_v2(None, None, tlvs=[(PP2_TYPE_AUTHORITY, b"mx.example")], crc=True)
    info = parse(header)
    assert (info.local, info.family, info.source_address) == (True, "UNKNOWN", None)
    assert info.authority == "mx.example"
    assert set(info.tlvs) == {PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C}
    assert parse(v2(0x20, 0x11, INET_BLOCK + tlv(PP2_TYPE_NETNS, b"blue"))).netns == "blue"
    assert_bad(v2(0x20, 0x00, tlv(PP2_TYPE_AUTHORITY, b"x")[:-1]), "past the end")


# -- v2 TLVs ------------------------------------------------------------------------------


def test_v2_alpn_authority_unique_id_netns_unknown() -> None:
    tlvs = [
        (PP2_TYPE_ALPN, b"smtp"),
        (PP2_TYPE_AUTHORITY, b"m\xc3\xa4il.example"),
        (PP2_TYPE_UNIQUE_ID, b"\x00\xff" * 64),
        (PP2_TYPE_NETNS, b"ns1"),
        (0xEA, b"\x01vpce-1234"),
        (0x99, b""),
    ]
    info = parse(encode_proxy_v2(SRC4, DST4, tlvs=tlvs))
    assert info.tlvs == dict(tlvs)
    assert (info.alpn, info.authority, info.netns) == (b"smtp", "mäil.example", "ns1")
    assert (info.ssl, info.ssl_version, info.ssl_cn) == (False, None, None)


def test_v2_noop_is_ignored_and_may_repeat() -> None:
    tlvs = [(PP2_TYPE_NOOP, b""), (PP2_TYPE_ALPN, b"smtp"), (PP2_TYPE_NOOP, b"\0" * 7)]
    info = parse(encode_proxy_v2(SRC4, DST4, tlvs=tlvs))
    assert info.tlvs == {PP2_TYPE_ALPN: b"smtp"}


@pytest.mark.parametrize(("client", "ssl"), [(0x01, True), (0x07, True), (0x06, False), (0x00, False)])
def test_v2_ssl(client: int, ssl: bool) -> None:
    value = ssl_value(
        client,
        tlv(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"),
        tlv(PP2_SUBTYPE_SSL_CN, b"J\xc3\xb6rg"),
        tlv(0x23, b"TLS_AES_128_GCM_SHA256"),  # cipher: kept only in the raw value
    )
    info = parse(encode_proxy_v2(SRC4, DST4, tlvs=[(PP2_TYPE_SSL, value)]))
    assert (info.ssl, info.ssl_version, info.ssl_cn) == (ssl, "TLSv1.3", "Jörg")
    assert info.tlvs == {PP2_TYPE_SSL: value}


def test_v2_ssl_without_sub_tlvs() -> None:
    info = parse(encode_proxy_v2(SRC4, DST4, tlvs=[(PP2_TYPE_SSL, ssl_value(1))]))
    assert (info.ssl, info.ssl_version, info.ssl_cn) == (True, None, None)


def test_v2_crc_good() -> None:
    header = encode_proxy_v2(SRC6, DST6, tlvs=[(PP2_TYPE_ALPN, b"smtp")], crc=True)
    info = parse(header)
    assert info.tlvs[PP2_TYPE_CRC32C] == header[-4:]
    assert crc32c(header[:-4] + bytes(4)) == int.from_bytes(header[-4:], "big")


def test_v2_crc_not_last() -> None:
    # The field is zeroed where it stands, wherever that is (§2.2.3).
    body = INET_BLOCK + tlv(PP2_TYPE_CRC32C, bytes(4)) + tlv(PP2_TYPE_AUTHORITY, b"mx.example")
    header = with_crc(v2(body=body), 16 + len(INET_BLOCK) + 3)
    assert parse(header).authority == "mx.example"


def test_v2_crc_bad() -> None:
    header = encode_proxy_v2(SRC4, DST4, crc=True)
    assert_bad(header[:-1] + bytes([header[-1] ^ 1]), "mismatch")
    tampered = bytearray(header)
    tampered[16 + 9] ^= 0x01  # the source port
    assert_bad(bytes(tampered), "mismatch")
    assert_bad(v2(body=INET_BLOCK + tlv(PP2_TYPE_CRC32C, bytes(4))), "mismatch")


@pytest.mark.parametrize("size", [0, 3, 5, 8])
def test_v2_crc_wrong_length(size: int) -> None:
    assert_bad(v2(body=INET_BLOCK + tlv(PP2_TYPE_CRC32C, bytes(size))), "4 bytes")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (INET_BLOCK + b"\x01", "truncated"),
        (INET_BLOCK + b"\x01\x00", "truncated"),
        (INET_BLOCK + b"\x01\x00\x05abcd", "past the end"),
        (INET_BLOCK + tlv(PP2_TYPE_ALPN, b"smtp") + b"\xe0\xff\xff", "past the end"),
        (INET_BLOCK + tlv(PP2_TYPE_ALPN, b"a") + tlv(PP2_TYPE_ALPN, b"b"), "duplicate"),
        (INET_BLOCK + tlv(PP2_TYPE_AUTHORITY, b"\xff\xfe"), "utf-8"),
        (INET_BLOCK + tlv(PP2_TYPE_AUTHORITY, b"mx\r\nX-Evil: 1"), "control"),
        (INET_BLOCK + tlv(PP2_TYPE_AUTHORITY, b"mx\x00"), "control"),
        (INET_BLOCK + tlv(PP2_TYPE_NETNS, b"n\xc3\xa4"), "ascii"),
        (INET_BLOCK + tlv(PP2_TYPE_NETNS, b"ns\x7f"), "control"),
        (INET_BLOCK + tlv(PP2_TYPE_UNIQUE_ID, b"u" * 129), "128"),
        (INET_BLOCK + tlv(PP2_TYPE_SSL, b"\x01\x00\x00\x00"), "5 bytes"),
        (INET_BLOCK + tlv(PP2_TYPE_SSL, ssl_value(1, b"\x21\x00")), "truncated"),
        (INET_BLOCK + tlv(PP2_TYPE_SSL, ssl_value(1, b"\x21\x00\x09TLSv1.3")), "past the end"),
        (INET_BLOCK + tlv(PP2_TYPE_SSL, ssl_value(1, tlv(0x21, b"TLSv1\xff"))), "ascii"),
        (INET_BLOCK + tlv(PP2_TYPE_SSL, ssl_value(1, tlv(0x22, b"\xc3"))), "utf-8"),
        (INET_BLOCK + tlv(PP2_TYPE_SSL, ssl_value(1, tlv(0x22, b"a"), tlv(0x22, b"b"))), "duplicate"),
    ],
)
def test_v2_malformed_tlvs(body: bytes, why: str) -> None:
    assert_bad(v2(body=body) + SMTP, why)


def test_v2_unique_id_limit() -> None:
    assert parse(v2(body=INET_BLOCK + tlv(PP2_TYPE_UNIQUE_ID, b"u" * 128))).tlvs[5] == b"u" * 128


def test_v2_unix_path_must_decode() -> None:
    assert_bad(v2(fam=0x31, body=unix_block(b"/run/\xff", b"/x")), "UNIX path")
    assert_bad(v2(fam=0x31, body=unix_block(b"/run/\n", b"/x")), "UNIX path")


# -- v2 fixed part ------------------------------------------------------------------------


@pytest.mark.parametrize("ver_cmd", [0x01, 0x11, 0x31, 0xF1, 0x10])
def test_v2_bad_version(ver_cmd: int) -> None:
    assert_bad(v2(ver_cmd) + SMTP, "version")
    assert_bad(V2_SIGNATURE + bytes([ver_cmd]), "version")  # decided at the 13th byte


@pytest.mark.parametrize("command", range(2, 16))
def test_v2_unknown_command(command: int) -> None:
    assert_bad(v2(0x20 | command) + SMTP, "command")
    assert_bad(V2_SIGNATURE + bytes([0x20 | command]), "command")


@pytest.mark.parametrize(
    ("fam", "body"), [(0x12, INET_BLOCK), (0x22, INET6_BLOCK), (0x32, unix_block(b"/a", b"/b"))]
)
def test_v2_datagram_falls_back_to_unspec(fam: int, body: bytes) -> None:
    # §2.2: a receiver that does not implement a listed combination falls back to UNSPEC mode.
    info = parse(v2(0x21, fam, body + tlv(PP2_TYPE_ALPN, b"smtp")))
    assert info == ProxyInfo(2, False, "UNKNOWN", tlvs={PP2_TYPE_ALPN: b"smtp"}, alpn=b"smtp")
    assert parse(v2(0x20, fam, body)) == ProxyInfo(2, True, "UNKNOWN")
    assert_bad(v2(0x21, fam, body[:-1]), "shorter")


def test_v2_refused_families() -> None:
    accepted = {0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32}
    for fam in set(range(256)) - accepted:  # 0x01, 0x10, 0x33, 0x41, ...
        for ver_cmd in (0x20, 0x21):
            assert_bad(v2(ver_cmd, fam, INET6_BLOCK * 7), "family")
            assert_bad(V2_SIGNATURE + bytes([ver_cmd, fam]), "family")  # decided at the 14th byte


@pytest.mark.parametrize(("fam", "need"), [(0x11, 12), (0x21, 36), (0x31, 216)])
def test_v2_address_block_too_short(fam: int, need: int) -> None:
    assert_bad(v2(0x21, fam, bytes(need - 1)) + SMTP, "shorter")
    assert_bad(v2(0x21, fam, b"", length=need - 1), "shorter")  # decided at the 16th byte
    assert parse_proxy_header(v2(0x21, fam, b"", length=need)) is None


@pytest.mark.parametrize("max_size", [None, 40])
def test_v2_max_size(max_size: int | None) -> None:
    # The declared length (bytes after the fixed 16) may equal max_size, not exceed it.
    limit = 4096 if max_size is None else max_size
    kw = {} if max_size is None else {"max_size": max_size}
    for length, ok in ((limit - 1, True), (limit, True), (limit + 1, False)):
        header = v2(body=INET_BLOCK + tlv(PP2_TYPE_NOOP, bytes(length - len(INET_BLOCK) - 3)))
        assert len(header) == 16 + length
        if ok:
            assert parse(header, **kw).tlvs == {}
        else:
            assert_bad(header, "max_size", **kw)
            assert_bad(header[:16], "max_size", **kw)  # decided at the 16th byte


def test_v2_largest_declared_length() -> None:
    header = v2(body=INET_BLOCK + tlv(0xE0, bytes(0xFFFF - 12 - 3)))
    assert parse(header, max_size=0xFFFF).tlvs[0xE0] == bytes(0xFFFF - 15)


# -- signatures and early rejection -------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"E", b"EHLO", b"EHLO x\r\n", b"HELO", b"\x16\x03\x01", b"proxy ", b"PROXX", b"PROXY\r\n", b"PROXY X",
     b"\r\n\r\n\x00\r\nQUIX", b"\r\n.\r\n", b"\n", b" PROXY", b"\x00"],
)
def test_early_reject(data: bytes) -> None:
    assert_bad(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"P", b"PROXY", b"PROXY ", b"PROXY TCP", b"PROXY UNKNOWN", b"PROXY UNKNOWN\r", b"\r", b"\r\n\r\n",
     V2_SIGNATURE[:-1], V2_SIGNATURE, V2_SIGNATURE + b"\x21\x11\x00"],
)
def test_needs_more(data: bytes) -> None:
    assert parse_proxy_header(data) is None


def test_input_types() -> None:
    header = encode_proxy_v2(SRC6, DST6, tlvs=[(PP2_TYPE_ALPN, b"smtp")], crc=True) + SMTP
    expected = parse_proxy_header(header)
    assert expected is not None
    assert parse_proxy_header(bytearray(header)) == expected
    assert parse_proxy_header(memoryview(header)) == expected
    buffer = bytearray(b"\xff" * 8 + header + b"\0" * 100)
    assert parse_proxy_header(memoryview(buffer)[8 : 8 + len(header)]) == expected


# -- split reads --------------------------------------------------------------------------

VALID_HEADERS = [
    encode_proxy_v1(SRC4, DST4),
    encode_proxy_v1(SRC6, DST6),
    encode_proxy_v1(None, None),
    b"PROXY UNKNOWN 2001:db8::1 2001:db8::2 1 2\r\n",
    encode_proxy_v2(SRC4, DST4),
    encode_proxy_v2(SRC6, DST6, tlvs=[(PP2_TYPE_ALPN, b"smtp"), (PP2_TYPE_AUTHORITY, b"mx")], crc=True),
    encode_proxy_v2(None, None),
    encode_proxy_v2(None, None, tlvs=[(PP2_TYPE_NOOP, b"\0\0")], crc=True),
    encode_proxy_v2(SRC4, DST4, tlvs=[(PP2_TYPE_SSL, ssl_value(1, tlv(0x21, b"TLSv1.2"), tlv(0x22, b"cn")))]),
    v2(fam=0x31, body=unix_block(b"/a", b"/b") + tlv(PP2_TYPE_NETNS, b"ns")),
    v2(fam=0x00, body=b""),
    v2(0x20, 0x11, b""),
]


@pytest.mark.parametrize("header", VALID_HEADERS)
def test_every_split_point(header: bytes) -> None:
    data = header + SMTP
    expected = parse_proxy_header(data)
    assert expected is not None
    assert expected[1] == len(header)
    for cut in range(len(header)):
        assert parse_proxy_header(data[:cut]) is None, cut
    for cut in range(len(header), len(data) + 1):
        assert parse_proxy_header(data[:cut]) == expected, cut


# -- properties ---------------------------------------------------------------------------


def outcome(data: bytes) -> str:
    """Parse and classify; any exception but LocalProtocolError escapes and fails the test."""
    try:
        result = parse_proxy_header(data)
    except LocalProtocolError as exc:
        assert exc.reply is BAD_PROXY_HEADER and exc.fatal
        return "error"
    if result is None:
        return "need"
    info, consumed = result
    assert isinstance(info, ProxyInfo) and 0 < consumed <= len(data)
    return "header"


@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    outcome(data)


@given(st.sampled_from([V1_SIGNATURE, V1_SIGNATURE + b"TCP4 ", V1_SIGNATURE + b"TCP6 ", V2_SIGNATURE]),
       st.binary(max_size=300))
def test_random_bytes_after_a_signature(prefix: bytes, data: bytes) -> None:
    outcome(prefix + data)


@given(st.sampled_from(VALID_HEADERS), st.data())
def test_mutated_headers(header: bytes, draw: st.DataObject) -> None:
    data = bytearray(header + SMTP)
    for _ in range(draw.draw(st.integers(1, 3))):
        data[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(0, len(data)))
    outcome(bytes(data[:cut]))


endpoints = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)),
)
ports = st.integers(0, 65535)


@given(endpoints, ports, ports)
def test_encode_round_trip(addrs: tuple[object, object], sport: int, dport: int) -> None:
    src, dst = (str(addrs[0]), sport), (str(addrs[1]), dport)
    family = "TCP4" if "." in src[0] and ":" not in src[0] else "TCP6"
    for version, header in ((1, encode_proxy_v1(src, dst)), (2, encode_proxy_v2(src, dst, crc=True))):
        info = parse(header)
        assert (info.version, info.family) == (version, family)
        assert (info.source_address, info.source_port, info.dest_address, info.dest_port) == (*src, *dst)


DECODED_TYPES = {PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_NOOP, PP2_TYPE_UNIQUE_ID,
                 PP2_TYPE_SSL, PP2_TYPE_NETNS}
custom_tlvs = st.dictionaries(
    st.integers(0, 255).filter(lambda k: k not in DECODED_TYPES), st.binary(max_size=40), max_size=6
)


@given(custom_tlvs, st.booleans())
def test_unknown_tlvs_round_trip(tlvs: dict[int, bytes], crc: bool) -> None:
    info = parse(encode_proxy_v2(SRC4, DST4, tlvs=list(tlvs.items()), crc=crc))
    assert {k: v for k, v in info.tlvs.items() if k != PP2_TYPE_CRC32C} == tlvs


# -- encoder argument checks --------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "dest"),
    [(SRC4, None), (None, DST4), (SRC4, DST6), (("192.0.2.1", 65536), DST4), (SRC4, ("192.0.2.1", -1)),
     (("not-an-ip", 1), DST4)],
)
def test_encoders_refuse_bad_arguments(source: tuple[str, int] | None, dest: tuple[str, int] | None) -> None:
    with pytest.raises(ValueError):
        encode_proxy_v1(source, dest)
    with pytest.raises(ValueError):
        encode_proxy_v2(source, dest)


def test_encode_v2_refuses_bad_tlvs() -> None:
    with pytest.raises(ValueError):
        encode_proxy_v2(SRC4, DST4, tlvs=[(256, b"")])
    with pytest.raises(ValueError):
        encode_proxy_v2(SRC4, DST4, tlvs=[(0xE0, bytes(0x10000))])
    with pytest.raises(ValueError):
        encode_proxy_v2(SRC4, DST4, tlvs=[(0xE0, bytes(0xFFF0)), (0xE1, bytes(0x20))])
