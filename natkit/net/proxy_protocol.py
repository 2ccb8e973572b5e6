"""PROXY protocol v2 on TCP/TLS listeners, sans-IO: who must send a header, and what it says.

Behind an L4 load balancer every connection comes from the balancer's address, so
XOR-MAPPED-ADDRESS, rate limits and quotas would all see one client. A balancer speaking the
PROXY protocol (haproxy's doc/proxy-protocol.txt, §2.2: version 2, binary) opens each connection
with a header naming the real client; the server reads it before any STUN byte, and before the
TLS handshake on a tls:// listener (the balancer passes TLS through and writes the header in the
clear ahead of the ClientHello).

Theory of operation, for the listener (`natkit.net.stream`): on accept, a connection from a
trusted balancer (`header_required`) is read exactly header by header — 16 bytes, then the
length they announce — so not one byte past the header is consumed before the socket becomes
a TCP or TLS stream; `parse_header` says after each read whether more is needed, and refuses
as soon as the bytes rule a header out (`ProxyRefused`, whose `kind` names the refusal for
metrics: ``proxy_missing``, ``proxy_invalid``, and `str()` is one line for the log). The wait
is bounded by ``stun.stream.frame_timeout`` from accept. `client_address` is then the client
for everything that follows: answers, rate limits, per-source caps, TURN 5-tuples.

Who must send a header (`header_required`): with ``stun.proxy_protocol`` on, a connection from
an address in ``stun.proxy_trusted`` must open with a valid v2 header, and one from anywhere else
must not (it is a direct client: a header from it would let it choose its own address). With
the key off nothing is parsed: a header is then just bytes that are not STUN (and from an
untrusted source likewise: the framer or the TLS handshake refuses them).

Accepted: version 2 only (§2.2). Version 1 (text) is refused with a reason saying to configure
the balancer for v2. The whole header (16 bytes + the length field) may be at most
`MAX_HEADER_SIZE` bytes: the largest address block is 216 bytes (AF_UNIX) and the TLVs real
balancers add (ALPN, AUTHORITY ≤ 255, UNIQUE_ID ≤ 128, SSL, cloud endpoint ids) stay well under
the rest, while the bound keeps what an unadmitted connection can make the server buffer small.
TLVs are walked and must tile the block exactly; PP2_TYPE_CRC32C, when present, must be 4 bytes
and match (§2.2.3); AUTHORITY and UNIQUE_ID lengths are checked (§2.2.2, §2.2.5); any other type
is skipped (§2.2: "a receiver may choose to skip over and ignore the TLVs").

A LOCAL command (the balancer's own health check, §2.2) means "use the real connection
address". A PROXY command must announce TCP over IPv4 or IPv6: UNSPEC (the spec lets a receiver
refuse it), AF_UNIX and UDP announce no client a STUN server can answer, and are refused rather
than silently charged to the balancer's address. An IPv4-mapped IPv6 source is used as the IPv4
address it is, so it is rate-limited as that address and not lumped into ``::ffff:0:0/64``.
The destination is reported but not used: the local address stays the listener's.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from natkit.addr import Address
from natkit.config.model import StunConfig

__all__ = [
    "MAX_HEADER_SIZE",
    "SIGNATURE",
    "Command",
    "Family",
    "ProxyHeader",
    "ProxyRefused",
    "TlvType",
    "client_address",
    "crc32c",
    "encode_header",
    "header_required",
    "parse_header",
]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
"""The 12 bytes a v2 header opens with (§2.2)."""

MAX_HEADER_SIZE = 1024
"""Largest v2 header accepted, signature to last TLV (see the module docstring)."""

_FIXED = struct.Struct("!12sBBH")  # signature, version|command, family|protocol, length
_V1_PREFIX = b"PROXY"
_AUTHORITY_MAX = 255  # §2.2.2: a host name
_UNIQUE_ID_MAX = 128  # §2.2.5


class Command(enum.IntEnum):
    """Low nibble of byte 13 (§2.2)."""

    LOCAL = 0x0
    PROXY = 0x1


class Family(enum.IntEnum):
    """Byte 14: address family (high nibble) and transport (low nibble), §2.2."""

    UNSPEC = 0x00
    TCP4 = 0x11
    UDP4 = 0x12
    TCP6 = 0x21
    UDP6 = 0x22
    UNIX_STREAM = 0x31
    UNIX_DGRAM = 0x32


class TlvType(enum.IntEnum):
    """The registered TLV types natkit looks at (§2.2)."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05


# Address block size and IP size per family; UNIX addresses are 108 bytes, no ports.
_BLOCK: dict[int, int] = {0x1: 12, 0x2: 36, 0x3: 216}
_IP_SIZE: dict[int, int] = {0x1: 4, 0x2: 16}


class ProxyRefused(Exception):
    """A connection to close unanswered: `str()` is the one-line reason, `kind` the refusal's
    name for metrics: ``proxy_invalid`` (a bad header), ``proxy_missing`` (a trusted source
    sent none)."""

    def __init__(self, reason: str, kind: str = "proxy_invalid") -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed v2 header. `source`/`destination` are None for LOCAL, UNSPEC and AF_UNIX."""

    command: Command
    family: Family
    source: Address | None
    destination: Address | None
    length: int
    """Bytes the header took: the data after them is the stream's own first bytes."""
    tlvs: tuple[tuple[int, bytes], ...] = ()


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, RFC 4960 Appendix B), as §2.2.3 checks the header with."""
    table, crc = _CRC32C_TABLE, 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def parse_header(data: bytes) -> ProxyHeader | None:
    """The v2 header at the start of `data`; None while more bytes are needed to tell.

    Raises `ProxyRefused` (and nothing else, whatever the bytes) when `data` does not open
    with an acceptable header. Refuses as soon as the bytes so far rule a header out, so a
    client that sent STUN instead is told at once, not after a timeout.
    """
    head = data[: len(SIGNATURE)]
    if head != SIGNATURE[: len(head)]:
        if data[:5] == _V1_PREFIX[: len(data[:5])]:
            if len(data) < len(_V1_PREFIX):
                return None
            raise ProxyRefused(
                "PROXY protocol v1 (text) header: natkit accepts only v2 (binary); "
                "configure the load balancer for v2 (haproxy: send-proxy-v2)"
            )
        raise ProxyRefused(
            "no PROXY protocol v2 header (the connection did not open with one)", "proxy_missing"
        )
    if len(data) < _FIXED.size:
        return None
    _, ver_cmd, fam, length = _FIXED.unpack_from(data)
    total = _FIXED.size + length
    if ver_cmd >> 4 != 2:
        raise ProxyRefused(f"PROXY header version {ver_cmd >> 4}, expected 2")
    if ver_cmd & 0xF not in (Command.LOCAL, Command.PROXY):
        raise ProxyRefused(f"PROXY header command {ver_cmd & 0xF:#x} is not LOCAL or PROXY")
    if total > MAX_HEADER_SIZE:
        raise ProxyRefused(
            f"PROXY header of {total} bytes exceeds the {MAX_HEADER_SIZE}-byte limit"
        )
    if len(data) < total:
        return None
    block = data[:total]
    if ver_cmd & 0xF == Command.LOCAL:
        # §2.2: the receiver "must use the real connection endpoints and discard the protocol
        # block including the family which is ignored".
        return ProxyHeader(Command.LOCAL, Family.UNSPEC, None, None, total)
    family = _family(fam)
    if family is Family.UNSPEC:
        return ProxyHeader(Command.PROXY, family, None, None, total)  # addresses ignored
    size = _BLOCK[fam >> 4]
    if length < size:
        raise ProxyRefused(
            f"PROXY header length {length} is shorter than the {family.name} address block "
            f"({size} bytes)"
        )
    tlvs = _tlvs(block, _FIXED.size + size)
    if fam >> 4 == 0x3:
        return ProxyHeader(Command.PROXY, family, None, None, total, tlvs)
    source, destination = _addresses(block, fam >> 4)
    return ProxyHeader(Command.PROXY, family, source, destination, total, tlvs)


def _family(fam: int) -> Family:
    if fam >> 4 not in (0x0, 0x1, 0x2, 0x3) or fam & 0xF not in (0x0, 0x1, 0x2):
        # §2.2: other values "must be rejected as invalid by receivers".
        raise ProxyRefused(f"PROXY header address family/protocol {fam:#04x} is invalid")
    if fam >> 4 == 0 or fam & 0xF == 0:
        return Family.UNSPEC
    return Family(fam)


def _addresses(block: bytes, af: int) -> tuple[Address, Address]:
    n = _IP_SIZE[af]
    ip = ipaddress.IPv4Address if af == 0x1 else ipaddress.IPv6Address
    offset = _FIXED.size
    src_ip = ip(block[offset : offset + n])
    dst_ip = ip(block[offset + n : offset + 2 * n])
    src_port, dst_port = struct.unpack_from("!HH", block, offset + 2 * n)
    return Address(str(src_ip), src_port), Address(str(dst_ip), dst_port)


def _tlvs(block: bytes, offset: int) -> tuple[tuple[int, bytes], ...]:
    """The TLVs from `offset` to the end of `block`; they must tile it exactly (a trailing
    fragment is a partial header, which §2.2 says to reject)."""
    found: list[tuple[int, bytes]] = []
    crc_seen = False
    while offset < len(block):
        if offset + 3 > len(block):
            raise ProxyRefused("PROXY header ends inside a TLV header")
        kind, size = block[offset], int.from_bytes(block[offset + 1 : offset + 3])
        start, end = offset + 3, offset + 3 + size
        if end > len(block):
            raise ProxyRefused(f"PROXY TLV {kind:#04x} of {size} bytes overruns the header")
        value = block[start:end]
        if kind == TlvType.CRC32C:
            if size != 4 or crc_seen:
                raise ProxyRefused("PROXY CRC32C TLV must appear once, 4 bytes long")
            crc_seen = True
            # §2.2.3: the checksum covers the whole header with its own field zeroed.
            if crc32c(block[:start] + bytes(4) + block[end:]) != int.from_bytes(value):
                raise ProxyRefused("PROXY header CRC32C does not match")
        elif kind == TlvType.AUTHORITY and size > _AUTHORITY_MAX:
            raise ProxyRefused(f"PROXY AUTHORITY TLV of {size} bytes (at most 255)")
        elif kind == TlvType.UNIQUE_ID and size > _UNIQUE_ID_MAX:
            raise ProxyRefused(f"PROXY UNIQUE_ID TLV of {size} bytes (at most 128)")
        found.append((kind, value))
        offset = end
    return tuple(found)


def encode_header(
    source: Address | None,
    destination: Address | None,
    *,
    tlvs: Iterable[tuple[int, bytes]] = (),
    checksum: bool = False,
) -> bytes:
    """A v2 header as a load balancer writes it: PROXY over TCP from `source` to
    `destination`, or LOCAL when both are None; `checksum` appends a CRC32C TLV (§2.2.3).
    For tests and tools that stand in for a balancer."""
    if (source is None) != (destination is None):
        raise ValueError("give both source and destination, or neither (LOCAL)")
    if source is None or destination is None:
        ver_cmd, fam, block = 0x20 | Command.LOCAL, Family.UNSPEC, b""
    else:
        src, dst = source.ip, destination.ip
        if src.version != dst.version:
            raise ValueError(f"{source} and {destination} are not of one address family")
        fam = Family.TCP4 if src.version == 4 else Family.TCP6
        block = src.packed + dst.packed + struct.pack("!HH", source.port, destination.port)
        ver_cmd = 0x20 | Command.PROXY
    body = block + b"".join(bytes([k]) + len(v).to_bytes(2) + v for k, v in tlvs)
    if checksum:
        body += bytes([TlvType.CRC32C, 0, 4]) + bytes(4)
    header = _FIXED.pack(SIGNATURE, ver_cmd, fam, len(body)) + body
    if checksum:
        header = header[:-4] + crc32c(header).to_bytes(4)
    return header


def _v4_form(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    return ip.ipv4_mapped


def header_required(peer: Address, stun: StunConfig) -> bool:
    """Whether a connection from `peer` must open with a PROXY header: ``stun.proxy_protocol``
    is on and `peer` is in ``stun.proxy_trusted``. A dual-stack listener sees an IPv4 balancer
    as ``::ffff:a.b.c.d``; it is matched as the IPv4 address it is."""
    if not stun.proxy_protocol:
        return False
    ip = peer.ip
    v4 = _v4_form(ip)
    return any(ip in net or (v4 is not None and v4 in net) for net in stun.proxy_networks)


def client_address(header: ProxyHeader, peer: Address) -> Address:
    """The client a trusted balancer's `header` announces; `peer` (the real connection
    address) for LOCAL. `ProxyRefused` for a header that announces no TCP client."""
    if header.command is Command.LOCAL:
        return peer
    if header.family not in (Family.TCP4, Family.TCP6) or header.source is None:
        raise ProxyRefused(
            f"PROXY header announces {header.family.name}, not a TCP client (TCP4 or TCP6)"
        )
    mapped = _v4_form(header.source.ip)
    return Address(str(mapped), header.source.port) if mapped else header.source
