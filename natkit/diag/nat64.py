"""NAT64 prefix discovery (RFC 7050): ask for the AAAA records of ipv4only.arpa.

The name has only A records (192.0.0.170 and .171, RFC 7050 §2.2), so any AAAA answer was
synthesized by a DNS64 (RFC 6147), and where the well-known IPv4 address sits inside it reveals
the NAT64 prefix and its length (RFC 6052 §2.2: /32, /40, /48, /56, /64 or /96; bits 64-71 are
the reserved "u" octet and never carry address bits).

The DNS part is a minimal sans-IO codec (one question, answers read, names skipped) so that
the discovery needs no resolver library; `discover` asks a given DNS64 server over UDP, or
the system resolver (getaddrinfo) when none is given. `through` then sends one STUN Binding
to an IPv4 server's address synthesized with the prefix (RFC 6052 §2.2): the answer shows
whether IPv4 is reachable through NAT64 and which IPv4 address and port the NAT64 maps to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from natkit.addr import Address
from natkit.diag.classify import Binding

__all__ = [
    "WELL_KNOWN_NAME",
    "Nat64Result",
    "aaaa_query",
    "discover",
    "parse_aaaa",
    "prefixes",
    "synthesize",
    "through",
]

WELL_KNOWN_NAME = "ipv4only.arpa"
WELL_KNOWN_V4 = (ipaddress.IPv4Address("192.0.0.170"), ipaddress.IPv4Address("192.0.0.171"))
PREFIX_LENGTHS = (96, 64, 56, 48, 40, 32)
TYPE_AAAA, CLASS_IN = 28, 1


@dataclass(frozen=True, slots=True)
class Nat64Result:
    """What discovery found: the prefixes (empty: no DNS64 seen) and how it asked."""

    prefixes: tuple[ipaddress.IPv6Network, ...] = ()
    resolver: str | None = None
    """The DNS64 server asked; None: the system resolver."""
    synthesized: tuple[str, ...] = field(default=())
    """The AAAA records of ipv4only.arpa, as received."""
    error: str | None = None
    ipv4: Binding | None = None
    """A Binding to an IPv4 STUN server through the first prefix (None: not tried)."""

    @property
    def detected(self) -> bool:
        return bool(self.prefixes)


def aaaa_query(name: str, txid: int) -> bytes:
    """A recursive DNS query for the AAAA records of `name`."""
    labels = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.strip(".").split("."))
    header = struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0)
    return header + labels + b"\x00" + struct.pack("!HH", TYPE_AAAA, CLASS_IN)


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        if pos >= len(data):
            raise ValueError("truncated name")
        length = data[pos]
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return pos + 2
        if length == 0:
            return pos + 1
        pos += 1 + length


def parse_aaaa(data: bytes, txid: int) -> list[ipaddress.IPv6Address]:
    """The AAAA records in a response to `aaaa_query(..., txid)`; ValueError if it is not one
    (wrong id, not a response, an error rcode, truncated)."""
    if len(data) < 12:
        raise ValueError("short DNS message")
    rid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
    if rid != txid or not flags & 0x8000:
        raise ValueError("not the response to our query")
    if flags & 0x000F not in (0, 3):  # NOERROR, or NXDOMAIN (no records: no DNS64)
        raise ValueError(f"DNS error rcode {flags & 0x000F}")
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    out = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        if pos + 10 > len(data):
            raise ValueError("truncated answer")
        rtype, rclass, _, rdlen = struct.unpack("!HHIH", data[pos : pos + 10])
        pos += 10
        rdata = data[pos : pos + rdlen]
        pos += rdlen
        if rtype == TYPE_AAAA and rclass == CLASS_IN and len(rdata) == 16:
            out.append(ipaddress.IPv6Address(rdata))
    return out


def _embedded(addr: ipaddress.IPv6Address, length: int) -> ipaddress.IPv4Address:
    """The IPv4 address RFC 6052 §2.2 places after a prefix of `length` bits."""
    raw = addr.packed
    if length == 96:
        return ipaddress.IPv4Address(raw[12:16])
    start = length // 8
    octets = [b for i, b in enumerate(raw) if i != 8][start : start + 4]  # skip the u octet
    return ipaddress.IPv4Address(bytes(octets))


def prefixes(synthesized: list[ipaddress.IPv6Address]) -> list[ipaddress.IPv6Network]:
    """The NAT64 prefixes that the synthesized addresses of ipv4only.arpa reveal (RFC 7050 §3)."""
    found: list[ipaddress.IPv6Network] = []
    for addr in synthesized:
        for length in PREFIX_LENGTHS:
            if _embedded(addr, length) in WELL_KNOWN_V4:
                net = ipaddress.IPv6Network((addr, length), strict=False)
                if net not in found:
                    found.append(net)
                break
    return found


def synthesize(prefix: ipaddress.IPv6Network, ipv4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """The IPv6 address a DNS64 makes of `ipv4` with `prefix` (RFC 6052 §2.2)."""
    length = prefix.prefixlen
    head = prefix.network_address.packed[: length // 8]
    if length == 96:
        return ipaddress.IPv6Address(head + ipv4.packed)
    raw = bytearray(16)
    raw[: len(head)] = head
    slots = [i for i in range(len(head), 16) if i != 8][:4]  # skip the u octet
    for index, octet in zip(slots, ipv4.packed, strict=True):
        raw[index] = octet
    return ipaddress.IPv6Address(bytes(raw))


async def through(prefix: ipaddress.IPv6Network, server: Address, deadline: float) -> Binding:
    """One Binding to IPv4 `server` at its synthesized address, from this (IPv6) host."""
    from natkit.diag.probes import RttEstimator, StunSocket, local_ip_towards

    target = Address(str(synthesize(prefix, ipaddress.IPv4Address(server.host))), server.port)
    try:
        sock = await StunSocket.open(local_ip_towards(target), RttEstimator())
    except OSError as err:
        return Binding(target, "error", error=f"cannot send: {err.strerror or err}")
    try:
        return await sock.binding(target, deadline)
    finally:
        sock.close()


class _Answer(asyncio.DatagramProtocol):
    def __init__(self, txid: int) -> None:
        self.txid = txid
        self.done: asyncio.Future[list[ipaddress.IPv6Address]] = (
            asyncio.get_running_loop().create_future()
        )

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.done.done():
            return
        try:
            self.done.set_result(parse_aaaa(data, self.txid))
        except ValueError as err:
            if "rcode" in str(err):
                self.done.set_exception(err)  # a real answer saying no; others are noise

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def _ask(resolver: str, timeout: float, txid: int) -> list[ipaddress.IPv6Address]:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in resolver else socket.AF_INET
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Answer(txid), remote_addr=(resolver, 53), family=family
    )
    try:
        query = aaaa_query(WELL_KNOWN_NAME, txid)
        for attempt in range(3):  # RFC 7050 §3: retransmit; three tries within the budget
            transport.sendto(query)
            try:
                return await asyncio.wait_for(asyncio.shield(proto.done), timeout / 3)
            except TimeoutError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
    finally:
        transport.close()


async def _system(timeout: float) -> list[ipaddress.IPv6Address]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(WELL_KNOWN_NAME, None, family=socket.AF_INET6), timeout
        )
    except socket.gaierror:
        return []  # no AAAA: no DNS64 on the path
    return [ipaddress.IPv6Address(str(i[4][0]).split("%")[0]) for i in infos]


async def discover(resolver: str | None, timeout: float, txid: int = 0x4E36) -> Nat64Result:
    """Resolve ipv4only.arpa AAAA via `resolver` (an IP literal) or the system resolver."""
    try:
        found = await (_ask(resolver, timeout, txid) if resolver else _system(timeout))
    except TimeoutError:
        return Nat64Result(resolver=resolver, error="no DNS answer for ipv4only.arpa")
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return Nat64Result(resolver=resolver, error=f"ipv4only.arpa: {why}")
    return Nat64Result(
        prefixes=tuple(prefixes(found)),
        resolver=resolver,
        synthesized=tuple(str(a) for a in dict.fromkeys(found)),
    )
