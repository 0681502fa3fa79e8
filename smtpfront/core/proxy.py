"""The HAProxy PROXY protocol, versions 1 (text) and 2 (binary).

Rule: :func:`parse_proxy_header` is a pure function over the bytes received so far. It
returns ``None`` until a whole header is present, then ``(info, consumed)``; anything
malformed raises ``LocalProtocolError(BAD_PROXY_HEADER, fatal=True)`` as soon as the
received prefix proves it (a client speaking SMTP is refused at its first byte, §2.1:
"abort the connection as soon as possible"). Whether a peer may send a header at all is
the adapter's decision (DESIGN rule 9, spec §5), never this module's.

Section numbers (§) refer to "The PROXY protocol, Versions 1 & 2" (haproxy
doc/proxy-protocol.txt). Where the spec lets a receiver choose, this parser refuses:

* v1: fields are separated by exactly one space; ports are canonical decimals (no
  sign, no leading zero) in 0..65535; addresses must parse with :mod:`ipaddress` as the
  declared family, and an IPv6 scope (``%eth0``) is refused. Any CR or LF inside the
  line is refused, including in the ignored tail of an ``UNKNOWN`` line.
* v2 family/protocol byte: only the seven bytes §2.2 lists as expected are accepted,
  for LOCAL as for PROXY (LOCAL still needs the family to find where its TLVs start).
  The datagram ones (``0x12``, ``0x22``, ``0x32``) fall back to UNSPEC mode as §2.2
  requires of a receiver that does not implement them. Every other byte is refused:
  nibbles out of range "must be rejected" (§2.2), and in the mixed ones (``0x01``,
  ``0x10``...) the size of the address block, hence where TLVs start, is undefined.
* A PROXY header's declared length must cover its family's address block; a LOCAL
  header's need not (LOCAL discards the block, §2.2): it then has no TLVs.
* v2 TLVs: a TLV type may appear once (NOOP excepted: it is padding, may repeat, and is
  not kept); text TLVs (authority, SSL version/CN, netns, UNIX paths) must decode
  (UTF-8, or US-ASCII where §2.2 says so) and hold no control characters, since they
  end up in logs and trace headers; UNIQUE_ID is at most 128 bytes (§2.2.5).
* ``max_size`` bounds the v2 declared length (the bytes after the 16-byte fixed part);
  a v1 line is bounded by the spec's own 107 bytes.

A v2 PROXY header with the UNSPEC family (or a datagram one) gives ``local=False``,
``family="UNKNOWN"`` and no addresses: the socket's own addresses stand (§2.2).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .errors import LocalProtocolError
from .events import ProxyInfo
from .replies import BAD_PROXY_HEADER

__all__ = [
    "parse_proxy_header", "encode_proxy_v1", "encode_proxy_v2", "crc32c",
    "V1_SIGNATURE", "V1_MAX_LINE", "V2_SIGNATURE",
    "PP2_TYPE_ALPN", "PP2_TYPE_AUTHORITY", "PP2_TYPE_CRC32C", "PP2_TYPE_NOOP",
    "PP2_TYPE_UNIQUE_ID", "PP2_TYPE_SSL", "PP2_SUBTYPE_SSL_VERSION", "PP2_SUBTYPE_SSL_CN",
    "PP2_TYPE_NETNS", "PP2_CLIENT_SSL",
]

V1_SIGNATURE = b"PROXY "  # §2.1
V1_MAX_LINE = 107  # §2.1: the worst case line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # §2.2
_V2_FIXED = 16  # §2.2: signature, ver_cmd, fam, len

# §2.1: what may follow "PROXY "; "UNKNOWN" ends the line or is followed by ignored text.
_V1_PROTOCOLS = (b"TCP4 ", b"TCP6 ", b"UNKNOWN ", b"UNKNOWN\r")

# §2.2: the 13th byte is version (high nibble, must be 2) and command (low nibble).
_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1

# §2.2: fam byte -> (family name, size of the address block). See the module docstring.
_FAMILIES: dict[int, tuple[str, int]] = {
    0x00: ("UNKNOWN", 0),  # AF_UNSPEC
    0x11: ("TCP4", 12),  # 4 + 4 address bytes, 2 + 2 port bytes
    0x12: ("UNKNOWN", 12),  # UDP over IPv4: not implemented, UNSPEC mode
    0x21: ("TCP6", 36),  # 16 + 16 address bytes, 2 + 2 port bytes
    0x22: ("UNKNOWN", 36),  # UDP over IPv6: not implemented, UNSPEC mode
    0x31: ("UNIX", 216),  # 108 + 108 bytes of sun_path
    0x32: ("UNKNOWN", 216),  # UNIX datagram: not implemented, UNSPEC mode
}
_UNIX_PATH = 108

# §2.2.x: TLV types.
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_TYPE_NETNS = 0x30
PP2_CLIENT_SSL = 0x01  # §2.2.6: the client connected over SSL/TLS
_UNIQUE_ID_MAX = 128  # §2.2.5
_SSL_FIXED = 5  # §2.2.6: uint8 client, uint32 verify, then sub-TLVs


def _bad(why: str) -> LocalProtocolError:
    # The reply is the same for every case; the note tells logs and tests which rule broke.
    err = LocalProtocolError(BAD_PROXY_HEADER, fatal=True)
    err.add_note(f"PROXY: {why}")
    return err


# -- CRC32C (Castagnoli), §2.2.3 ------------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # reflected polynomial 0x1EDC6F41
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc`` (0 to start)."""
    table = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -- parsing ----------------------------------------------------------------------------


def parse_proxy_header(
    data: bytes | bytearray | memoryview, *, max_size: int = 4096
) -> tuple[ProxyInfo, int] | None:
    """Parse a PROXY v1 or v2 header at the start of ``data``.

    Args:
        data: every byte received on the connection so far.
        max_size: the largest v2 declared length (bytes after the fixed 16) accepted.

    Returns:
        ``(info, consumed)`` once a whole header is present (the bytes after
        ``consumed`` belong to SMTP), or None while more bytes are needed.

    Raises:
        LocalProtocolError: ``BAD_PROXY_HEADER``, fatal, for anything malformed.
    """
    head = bytes(data[: len(V2_SIGNATURE)])
    if not head:
        return None
    # §2: the two signatures differ at their first byte, so a prefix matches one or none.
    if V2_SIGNATURE.startswith(head):
        return _parse_v2(data, max_size)
    if V1_SIGNATURE.startswith(head[: len(V1_SIGNATURE)]):
        return _parse_v1(bytes(data[:V1_MAX_LINE]))
    raise _bad("no PROXY protocol signature")


def _parse_v1(head: bytes) -> tuple[ProxyInfo, int] | None:
    # §2.1: "PROXY" SP proto SP src SP dst SP sport SP dport CRLF, at most 107 bytes.
    rest = head[len(V1_SIGNATURE) :]
    if not any(rest[: len(p)] == p[: len(rest)] for p in _V1_PROTOCOLS):
        raise _bad("v1: unknown protocol")
    lf = head.find(b"\n")
    if lf < 0:
        if len(head) >= V1_MAX_LINE:
            raise _bad("v1: no CRLF within 107 bytes")
        return None
    line = head[: lf - 1]
    if head[lf - 1 : lf] != b"\r" or b"\r" in line:
        raise _bad("v1: bare CR or LF")
    parts = line.split(b" ")
    if parts[1] == b"UNKNOWN":
        # §2.1: the receiver must ignore whatever follows UNKNOWN and use the socket's addresses.
        return ProxyInfo(version=1, local=True, family="UNKNOWN"), lf + 1
    if len(parts) != 6:
        raise _bad("v1: wrong number of fields")
    family = parts[1].decode("ascii")
    return ProxyInfo(
        version=1,
        local=False,
        family=family,
        source_address=_v1_address(parts[2], family),
        dest_address=_v1_address(parts[3], family),
        source_port=_v1_port(parts[4]),
        dest_port=_v1_port(parts[5]),
    ), lf + 1


def _v1_address(raw: bytes, family: str) -> str:
    cls = ipaddress.IPv4Address if family == "TCP4" else ipaddress.IPv6Address
    try:
        addr = cls(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise _bad(f"v1: not a {family} address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        raise _bad("v1: IPv6 scope not allowed")
    return str(addr)


def _v1_port(raw: bytes) -> int:
    # §2.1: a decimal integer in [0..65535]; bytes.isdigit() is ASCII-only.
    if not (raw.isdigit() and len(raw) <= 5 and (raw == b"0" or raw[:1] != b"0")) or int(raw) > 65535:
        raise _bad("v1: bad port")
    return int(raw)


def _check_v2_fixed(fixed: bytes, max_size: int) -> None:
    # Validate each byte of the fixed part as soon as it has arrived (§2.2).
    if len(fixed) > 12:
        if fixed[12] >> 4 != 2:
            raise _bad("v2: version is not 2")
        if fixed[12] & 0x0F not in (_CMD_LOCAL, _CMD_PROXY):
            raise _bad("v2: unknown command")
    if len(fixed) > 13 and fixed[13] not in _FAMILIES:
        raise _bad("v2: refused family/protocol")
    if len(fixed) >= _V2_FIXED:
        (length,) = struct.unpack_from("!H", fixed, 14)
        if length > max_size:
            raise _bad("v2: declared length over max_size")
        # LOCAL discards the address block (§2.2), so a LOCAL header may omit it.
        if length < _FAMILIES[fixed[13]][1] and fixed[12] & 0x0F == _CMD_PROXY:
            raise _bad("v2: address block shorter than the family needs")


def _parse_v2(data: bytes | bytearray | memoryview, max_size: int) -> tuple[ProxyInfo, int] | None:
    fixed = bytes(data[:_V2_FIXED])
    _check_v2_fixed(fixed, max_size)
    if len(fixed) < _V2_FIXED:
        return None
    total = _V2_FIXED + struct.unpack_from("!H", fixed, 14)[0]
    if len(data) < total:
        return None
    header = bytes(data[:total])
    family, block = _FAMILIES[header[13]]
    local = header[12] & 0x0F == _CMD_LOCAL
    src = dst = None
    sport = dport = None
    if not local and family != "UNKNOWN":
        # §2.2: LOCAL (a health check) and UNSPEC mode keep the socket's addresses.
        src, dst, sport, dport = _v2_addresses(family, header[_V2_FIXED : _V2_FIXED + block])
    # §2.2: bytes after the address block are TLVs, for LOCAL as for PROXY.
    facts = _parse_tlvs(header, min(_V2_FIXED + block, total))
    info = ProxyInfo(
        version=2, local=local, family=family,
        source_address=src, source_port=sport, dest_address=dst, dest_port=dport,
        tlvs=facts.tlvs, alpn=facts.alpn, authority=facts.authority, ssl=facts.ssl,
        ssl_version=facts.ssl_version, ssl_cn=facts.ssl_cn, netns=facts.netns,
    )  # fmt: skip
    return info, total


def _v2_addresses(family: str, block: bytes) -> tuple[str, str, int | None, int | None]:
    if family == "UNIX":
        # §2.2: two 108-byte sun_path fields; ports do not exist.
        return _unix_path(block[:_UNIX_PATH]), _unix_path(block[_UNIX_PATH:]), None, None
    size = 4 if family == "TCP4" else 16
    sport, dport = struct.unpack_from("!HH", block, 2 * size)
    src = ipaddress.ip_address(block[:size])
    dst = ipaddress.ip_address(block[size : 2 * size])
    return str(src), str(dst), sport, dport


def _unix_path(raw: bytes) -> str:
    # sun_path is NUL-terminated; a leading NUL is a Linux abstract socket, shown as "@name"
    # (all NULs is an unnamed socket).
    abstract = raw[1:].rstrip(b"\0")
    if raw[:1] == b"\0" and abstract:
        return "@" + _text(abstract, "utf-8", "UNIX path")
    return _text(raw.partition(b"\0")[0], "utf-8", "UNIX path")


def _text(raw: bytes, encoding: str, what: str) -> str:
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        raise _bad(f"v2: {what} is not {encoding}") from None
    if any(c < " " or c == "\x7f" for c in text):
        raise _bad(f"v2: control character in {what}")
    return text


@dataclass(slots=True)
class _Facts:
    """What the TLVs of one header say (§2.2.1-§2.2.7)."""

    tlvs: dict[int, bytes] = field(default_factory=dict)
    alpn: bytes | None = None
    authority: str | None = None
    ssl: bool = False
    ssl_version: str | None = None
    ssl_cn: str | None = None
    netns: str | None = None


def _iter_tlvs(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    # §2.2: type (1 byte), length (2 bytes, big-endian), value; each must fit before ``end``.
    seen: set[int] = set()
    while pos < end:
        if pos + 3 > end:
            raise _bad("v2: truncated TLV")
        kind = buf[pos]
        value_end = pos + 3 + (buf[pos + 1] << 8 | buf[pos + 2])
        if value_end > end:
            raise _bad("v2: TLV runs past the end of the header")
        if kind in seen:
            raise _bad(f"v2: duplicate TLV 0x{kind:02x}")
        if kind != PP2_TYPE_NOOP:
            seen.add(kind)
        yield kind, pos + 3, value_end
        pos = value_end


def _parse_tlvs(header: bytes, pos: int) -> _Facts:
    facts = _Facts()
    for kind, start, end in _iter_tlvs(header, pos, len(header)):
        value = header[start:end]
        if kind == PP2_TYPE_NOOP:
            continue  # §2.2.4: padding, ignored
        facts.tlvs[kind] = value
        if kind == PP2_TYPE_ALPN:
            facts.alpn = value  # §2.2.1: a byte sequence (one ALPN protocol name)
        elif kind == PP2_TYPE_AUTHORITY:
            facts.authority = _text(value, "utf-8", "authority")  # §2.2.2: the SNI, UTF-8
        elif kind == PP2_TYPE_CRC32C:
            # §2.2.3: 32 bits, network order, over the whole header with this field zeroed.
            if end - start != 4:
                raise _bad("v2: CRC32C TLV is not 4 bytes")
            if int.from_bytes(value, "big") != crc32c(header[:start] + bytes(4) + header[end:]):
                raise _bad("v2: CRC32C mismatch")
        elif kind == PP2_TYPE_UNIQUE_ID and len(value) > _UNIQUE_ID_MAX:
            raise _bad("v2: UNIQUE_ID over 128 bytes")  # §2.2.5
        elif kind == PP2_TYPE_SSL:
            _parse_ssl(header, start, end, facts)
        elif kind == PP2_TYPE_NETNS:
            facts.netns = _text(value, "ascii", "netns")  # §2.2.7: US-ASCII
    return facts


def _parse_ssl(header: bytes, start: int, end: int, facts: _Facts) -> None:
    # §2.2.6: uint8 client flags, uint32 verify result, then sub-TLVs in the same format.
    if end - start < _SSL_FIXED:
        raise _bad("v2: SSL TLV shorter than 5 bytes")
    facts.ssl = bool(header[start] & PP2_CLIENT_SSL)
    for kind, sub_start, sub_end in _iter_tlvs(header, start + _SSL_FIXED, end):
        if kind == PP2_SUBTYPE_SSL_VERSION:
            facts.ssl_version = _text(header[sub_start:sub_end], "ascii", "SSL version")  # US-ASCII
        elif kind == PP2_SUBTYPE_SSL_CN:
            facts.ssl_cn = _text(header[sub_start:sub_end], "utf-8", "SSL CN")  # UTF-8


# -- encoding (clients, tests, the load generator) --------------------------------------


_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _endpoints(source: tuple[str, int], dest: tuple[str, int]) -> tuple[_IPAddress, _IPAddress]:
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(dest[0])
    if src.version != dst.version:
        raise ValueError("source and dest must be of the same address family")
    for port in (source[1], dest[1]):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port out of range: {port}")
    return src, dst


def encode_proxy_v1(source: tuple[str, int] | None, dest: tuple[str, int] | None) -> bytes:
    """A v1 header line (§2.1), as HAProxy's ``send-proxy`` writes it.

    Args:
        source: the client's (address, port), or None with ``dest`` None for ``UNKNOWN``.
        dest: the address and port the client connected to.

    Raises:
        ValueError: one endpoint None, mixed IPv4/IPv6, or a port out of range.
    """
    if source is None and dest is None:
        return b"PROXY UNKNOWN\r\n"
    if source is None or dest is None:
        raise ValueError("source and dest must both be given or both be None")
    src, dst = _endpoints(source, dest)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {source[1]} {dest[1]}\r\n".encode("ascii")


def encode_proxy_v2(
    source: tuple[str, int] | None,
    dest: tuple[str, int] | None,
    *,
    tlvs: Sequence[tuple[int, bytes]] = (),
    crc: bool = False,
) -> bytes:
    """A v2 header (§2.2), as HAProxy's ``send-proxy-v2`` writes it.

    Args:
        source: the client's (address, port), or None with ``dest`` None for LOCAL.
        dest: the address and port the client connected to.
        tlvs: (type, value) pairs appended in order, after the address block.
        crc: append a PP2_TYPE_CRC32C TLV holding the header's checksum.

    Raises:
        ValueError: one endpoint None, mixed IPv4/IPv6, a port, TLV type or length out
            of range.
    """
    if source is None and dest is None:
        ver_cmd, fam, body = 0x20 | _CMD_LOCAL, 0x00, bytearray()
    elif source is None or dest is None:
        raise ValueError("source and dest must both be given or both be None")
    else:
        src, dst = _endpoints(source, dest)
        ver_cmd, fam = 0x20 | _CMD_PROXY, 0x11 if src.version == 4 else 0x21
        body = bytearray(src.packed + dst.packed + struct.pack("!HH", source[1], dest[1]))
    for kind, value in tlvs:
        if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
            raise ValueError(f"TLV type or length out of range: 0x{kind:x}")
        body += struct.pack("!BH", kind, len(value)) + value
    if crc:
        body += struct.pack("!BH", PP2_TYPE_CRC32C, 4) + bytes(4)
    if len(body) > 0xFFFF:
        raise ValueError("v2 header longer than 65535 bytes")
    header = bytearray(V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, len(body)) + body)
    if crc:
        header[-4:] = crc32c(header).to_bytes(4, "big")
    return bytes(header)
