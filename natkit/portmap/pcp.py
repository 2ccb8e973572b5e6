"""PCP (RFC 6887) messages: ANNOUNCE (opcode 0) and MAP (opcode 1), IPv4 through IPv4-mapped
addresses.

Wire layout, big-endian. Request header (§7.1, 24 bytes): version 2 | R=0, opcode | reserved (2) |
requested lifetime (4) | client IP (16). Response header (§7.2, 24 bytes): version 2 | R=1,
opcode | reserved | result code | lifetime (4) | epoch (4) | reserved (12). MAP body (§11.1, 36
bytes, same in both directions): nonce (12) | protocol | reserved (3) | internal port | (suggested
/ assigned) external port | (suggested / assigned) external IP (16).

ANNOUNCE asks for nothing: a server answers it with SUCCESS, which is how a client learns that PCP
is there without creating a mapping (§14.1). A NAT-PMP-only gateway answers a PCP request with a
NAT-PMP "unsupported version" (version 0, result 1; RFC 6887 §9): `parse_response` reports that
as `PcpError`. A MAP with lifetime 0 and the mapping's nonce deletes it (§15).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "PORT",
    "RESULTS",
    "PcpError",
    "PcpMapping",
    "PcpResponse",
    "announce_request",
    "map_request",
    "parse_response",
]

PORT = 5351
VERSION = 2
OP_ANNOUNCE, OP_MAP = 0, 1
PROTOCOLS = {"udp": 17, "tcp": 6}
RESULTS = {
    0: "SUCCESS",
    1: "UNSUPP_VERSION",
    2: "NOT_AUTHORIZED",
    3: "MALFORMED_REQUEST",
    4: "UNSUPP_OPCODE",
    5: "UNSUPP_OPTION",
    6: "MALFORMED_OPTION",
    7: "NETWORK_FAILURE",
    8: "NO_RESOURCES",
    9: "UNSUPP_PROTOCOL",
    10: "USER_EX_QUOTA",
    11: "CANNOT_PROVIDE_EXTERNAL",
    12: "ADDRESS_MISMATCH",
    13: "EXCESSIVE_REMOTE_PEERS",
}
"""Result codes, RFC 6887 §7.4."""
_HEADER = struct.Struct("!BBHI16s")
_RESPONSE = struct.Struct("!BBBBII12s")
_MAP = struct.Struct("!12sB3sHH16s")


class PcpError(ValueError):
    """An answer that is not a well-formed PCP response to what was asked."""


def _v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """RFC 6887 §5: IPv4 addresses travel as IPv4-mapped IPv6 addresses."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{ip}").packed
    return ip.packed


def _ip(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    v6 = ipaddress.IPv6Address(raw)
    return v6.ipv4_mapped or v6


@dataclass(frozen=True, slots=True)
class PcpMapping:
    """The MAP body of a response."""

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_address: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class PcpResponse:
    opcode: int
    result: int
    lifetime: int
    epoch: int
    mapping: PcpMapping | None = None

    @property
    def ok(self) -> bool:
        return self.result == 0

    @property
    def result_name(self) -> str:
        return RESULTS.get(self.result, f"result {self.result}")


def announce_request(client: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """ANNOUNCE: lifetime 0, no body (§14.1)."""
    return _HEADER.pack(VERSION, OP_ANNOUNCE, 0, 0, _v6(client))


def map_request(
    client: ipaddress.IPv4Address | ipaddress.IPv6Address,
    nonce: bytes,
    internal_port: int,
    lifetime: int,
    *,
    protocol: Literal["udp", "tcp"] = "udp",
    external_port: int = 0,
    external_address: ipaddress.IPv4Address | None = None,
) -> bytes:
    """MAP for `client`'s `internal_port`; lifetime 0 with the same nonce deletes it. With no
    suggested external address the all-zeros IPv4-mapped address means "any" (§11.1)."""
    if len(nonce) != 12:
        raise ValueError("a PCP mapping nonce is 12 bytes")
    suggested = _v6(external_address or ipaddress.IPv4Address(0))
    body = _MAP.pack(nonce, PROTOCOLS[protocol], b"\0" * 3, internal_port, external_port, suggested)
    return _HEADER.pack(VERSION, OP_MAP, 0, lifetime, _v6(client)) + body


def parse_response(data: bytes, opcode: int) -> PcpResponse:
    """The response to a request with `opcode`; PcpError if it is none."""
    if len(data) >= 4 and data[0] == 0 and data[3] == 1:
        raise PcpError("the gateway speaks NAT-PMP only (answered: unsupported version)")
    if len(data) < _RESPONSE.size or data[0] != VERSION:
        raise PcpError(f"not a PCP response ({len(data)} bytes, version {data[:1].hex()})")
    _, r_op, _, result, lifetime, epoch, _ = _RESPONSE.unpack_from(data)
    if not r_op & 0x80:
        raise PcpError("a PCP request, not a response (R bit clear)")
    if r_op & 0x7F != opcode:
        raise PcpError(f"response to opcode {r_op & 0x7F}, asked {opcode}")
    mapping = None
    if opcode == OP_MAP and len(data) >= _RESPONSE.size + _MAP.size:
        nonce, proto, _, internal, external, addr = _MAP.unpack_from(data, _RESPONSE.size)
        mapping = PcpMapping(nonce, proto, internal, external, _ip(addr))
    elif opcode == OP_MAP and result == 0:
        raise PcpError(f"MAP response of {len(data)} bytes, expected {_RESPONSE.size + _MAP.size}")
    return PcpResponse(r_op & 0x7F, result, lifetime, epoch, mapping)
