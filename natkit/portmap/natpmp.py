"""NAT-PMP (RFC 6886) messages: the external-address request (opcode 0) and UDP/TCP mappings.

Wire layout (RFC 6886 §3.2-3.3), all big-endian:

    request  op 0   version 0 | opcode 0                                     2 bytes
    answer   op 0   version 0 | 128+0 | result (2) | epoch (4) | ext IP (4)  12 bytes
    request  map    version 0 | 1 UDP / 2 TCP | reserved (2) | internal port | suggested
                    external port | lifetime (4)                             12 bytes
    answer   map    version 0 | 128+op | result (2) | epoch (4) | internal port | mapped
                    external port | lifetime (4)                             16 bytes

A mapping is deleted by a map request with lifetime 0 and suggested external port 0 (§3.4).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "PORT",
    "RESULTS",
    "NatPmpError",
    "NatPmpExternal",
    "NatPmpMapping",
    "external_address_request",
    "map_request",
    "parse_external_address",
    "parse_map",
]

PORT = 5351
VERSION = 0
OP_EXTERNAL, OP_UDP, OP_TCP = 0, 1, 2
RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized/refused",
    3: "network failure",
    4: "out of resources",
    5: "unsupported opcode",
}
"""Result codes, RFC 6886 §3.5."""


class NatPmpError(ValueError):
    """An answer that is not a well-formed NAT-PMP response to what was asked."""


@dataclass(frozen=True, slots=True)
class NatPmpExternal:
    """The answer to opcode 0."""

    result: int
    epoch: int
    """Seconds since the gateway's mapping table was (re)started."""
    address: ipaddress.IPv4Address

    @property
    def ok(self) -> bool:
        return self.result == 0


@dataclass(frozen=True, slots=True)
class NatPmpMapping:
    """The answer to a map (or delete) request."""

    protocol: Literal["udp", "tcp"]
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int

    @property
    def ok(self) -> bool:
        return self.result == 0


def external_address_request() -> bytes:
    return bytes((VERSION, OP_EXTERNAL))


def map_request(
    internal_port: int,
    lifetime: int,
    *,
    external_port: int = 0,
    protocol: Literal["udp", "tcp"] = "udp",
) -> bytes:
    """A mapping request; `lifetime` 0 (with `external_port` 0) deletes the mapping."""
    op = OP_UDP if protocol == "udp" else OP_TCP
    return struct.pack("!BBHHHI", VERSION, op, 0, internal_port, external_port, lifetime)


def _header(data: bytes, op: int, size: int) -> int:
    if len(data) < 4 or data[0] != VERSION:
        raise NatPmpError(f"not a NAT-PMP answer ({len(data)} bytes, version {data[:1].hex()})")
    if data[1] != 128 + op:
        raise NatPmpError(f"answer to opcode {data[1] - 128}, asked {op}")
    result: int = struct.unpack_from("!H", data, 2)[0]
    # RFC 6886 §3.5: an error answer may be shorter (e.g. unsupported version: 8 bytes).
    if result == 0 and len(data) < size:
        raise NatPmpError(f"answer of {len(data)} bytes, expected {size}")
    return result


def parse_external_address(data: bytes) -> NatPmpExternal:
    result = _header(data, OP_EXTERNAL, 12)
    if len(data) < 12:
        return NatPmpExternal(result, 0, ipaddress.IPv4Address(0))
    epoch, addr = struct.unpack_from("!I4s", data, 4)
    return NatPmpExternal(result, epoch, ipaddress.IPv4Address(addr))


def parse_map(data: bytes, protocol: Literal["udp", "tcp"] = "udp") -> NatPmpMapping:
    result = _header(data, OP_UDP if protocol == "udp" else OP_TCP, 16)
    if len(data) < 16:
        return NatPmpMapping(protocol, result, 0, 0, 0, 0)
    epoch, internal, external, lifetime = struct.unpack_from("!IHHI", data, 4)
    return NatPmpMapping(protocol, result, epoch, internal, external, lifetime)
