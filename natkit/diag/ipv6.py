"""IPv6 as diagnose reports it: which translation (if any) sits between this host and the
server, whether that leaves IPv6 direct connections open, and whether the host is IPv6-only. Pure.

    none     the server saw our own address and port: no NAT (an RFC 6092 firewall may filter,
             which ICE's outbound checks open, as for a cone NAT's filter)
    prefix   only the top 64 bits changed, port kept: NPTv6 (RFC 6296)
    address  anything else: NAT66 (address and usually port rewritten)

Direct over IPv6 is predicted only between two untranslated hosts: ICE (aioice, browsers)
offers host candidates for IPv6 and asks STUN for server-reflexive ones over IPv4 only, so a
translated IPv6 address is never offered to the peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

from natkit.addr import Address

__all__ = ["Translation", "ipv4_less", "ipv6_direct", "translation"]

Translation = Literal["none", "prefix", "address"]


def translation(local: Address | None, public: Address | None) -> Translation | None:
    """How our IPv6 address reached the server (None: not measured)."""
    if local is None or public is None:
        return None
    mine, seen = ipaddress.ip_address(local.host), ipaddress.ip_address(public.host)
    if mine.version != 6 or seen.version != 6:
        return None
    if mine == seen and local.port == public.port:
        return "none"
    low = (1 << 64) - 1
    if int(mine) & low == int(seen) & low and local.port == public.port:
        return "prefix"
    return "address"


def ipv6_direct(udp6: bool | None, kind: Translation | None) -> bool | None:
    """Whether a direct IPv6 path to peers with untranslated IPv6 is open (None: no IPv6)."""
    if not udp6:
        return None if udp6 is None else False
    return kind == "none"


def ipv4_less(addresses: Iterable[str]) -> bool:
    """No IPv4 address but loopback and link-local: an IPv6-only host (RFC 7050's case)."""
    for text in addresses:
        try:
            ip = ipaddress.ip_interface(text).ip
        except ValueError:
            continue
        if ip.version == 4 and not (ip.is_loopback or ip.is_link_local):
            return False
    return True
