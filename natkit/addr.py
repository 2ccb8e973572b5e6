"""Transport addresses and listen URIs: pure values shared by every subsystem.

`Address` is an (ip, port) pair with a parsed IP; `ListenURI` is a ``udp://``, ``tcp://`` or
``tls://`` URI with IPv6 literals in brackets (RFC 3986 §3.2.2), e.g. ``udp://[::]:3478``.
`Candidate` is one ICE candidate (RFC 8445 §5.1) as `natkit diagnose` gathers it and
`natkit p2p` reports it: one class for both layers.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "Address",
    "Candidate",
    "FiveTuple",
    "IPAddress",
    "ListenURI",
    "Transport",
    "format_hostport",
    "parse_hostport",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Transport(enum.StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


class Address(NamedTuple):
    """A transport address as Python sockets speak it: ``(host, port)`` with a literal IP host."""

    host: str
    port: int

    @property
    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.host)

    @property
    def family(self) -> int:
        """4 or 6 (a literal IPv6 host has a colon, an IPv4 one never: no parse needed, and
        the TURN gauges ask per allocation)."""
        return 6 if ":" in self.host else 4

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


class FiveTuple(NamedTuple):
    """One client's side of a connection to a server (RFC 8656 §2.2: what an allocation is
    keyed by): client address, server address, transport."""

    client: Address
    local: Address
    transport: Transport


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port``, a bare IPv6 literal or a bare host.

    Raises ValueError with a message fit for a user.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']' in {text!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:  # bare IPv6 literal, no port
        host, port_text = text, ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if not port_text:
        if default_port is None:
            raise ValueError(f"missing port in {text!r} (write HOST:PORT, IPv6 as [ADDR]:PORT)")
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} in {text!r} is not a number from 0 to 65535")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class ListenURI:
    """Where a server listens: transport + literal IP + port."""

    transport: Transport
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenURI:
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise ValueError(f"{text!r} is not a listen URI (expected e.g. udp://0.0.0.0:3478)")
        try:
            transport = Transport(scheme.lower())
        except ValueError:
            raise ValueError(
                f"unknown transport {scheme!r} in {text!r} (expected udp, tcp or tls)"
            ) from None
        if rest.count(":") > 1 and not rest.startswith("["):
            raise ValueError(
                f"write the IPv6 address in {text!r} in brackets, e.g. udp://[::1]:3478"
            )
        host, port = parse_hostport(rest, default_port=5349 if transport is Transport.TLS else 3478)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IP address literal") from None
        return cls(transport, host, port)

    @property
    def address(self) -> Address:
        return Address(self.host, self.port)

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.host).version

    def __str__(self) -> str:
        return f"{self.transport.value}://{format_hostport(self.host, self.port)}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One ICE candidate: type, transport and address, with priority and foundation (RFC 8445
    §5.1.2, §5.1.1.3) and the related address of a reflexive or relayed one (§5.1.1.2)."""

    type: str
    """host, srflx, prflx or relay (prflx never appears while gathering)."""
    protocol: str
    address: str
    port: int
    priority: int = 0
    foundation: str = ""
    related_address: str | None = None
    related_port: int | None = None

    @classmethod
    def from_aioice(cls, c: Any) -> Candidate:
        """From an `aioice.Candidate` (the ICE agent both diagnose and p2p run)."""
        return cls(
            type=str(c.type),
            protocol=str(c.transport).lower(),
            address=str(c.host),
            port=int(c.port),
            priority=int(c.priority),
            foundation=str(c.foundation),
            related_address=c.related_address,
            related_port=c.related_port,
        )

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.type} {self.protocol} {host}:{self.port}"
