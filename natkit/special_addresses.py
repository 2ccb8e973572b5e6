"""The IANA special-purpose address registries as data, and the peer deny list derived from them.

`natkit/data/iana-ipv{4,6}-special-registry.csv` are the IANA IPv4 and IPv6 Special-Purpose
Address Registries (RFC 6890 and its updates: RFC 8190, RFC 9374, RFC 9602, RFC 9637, ...) with
IANA's column names; the allocation and termination dates are left out. Update them from
iana.org when the registries change: `DEFAULT_DENIED_PEERS` follows, and
tests/unit/test_special_addresses.py checks the result.

The derivation (`default_denied_peers`):

1. every block whose "Globally Reachable" is not True (False, or N/A as for the deprecated
   192.88.99.0/24 and 2001:10::/28) is denied whole: a globally reachable more-specific inside
   one (192.0.0.9/32 PCP anycast, 192.0.0.10/32 TURN anycast, 192.88.99.2/32 6a44, the 2001:1::
   anycasts, AMT 2001:3::/32, AS112 2001:4:112::/48, ORCHIDv2 2001:20::/28, DRIP DETs
   2001:30::/28) stays denied: none is a peer a TURN client has business with, and ORCHIDs and
   DETs are identifiers, not locators (RFC 7343 §2, RFC 9374 §3);
2. except the prefixes that `natkit.turn.peers` judges by the IPv4 address they carry
   (`EMBEDDED_IPV4`: IPv4-mapped, Teredo, 6to4): a Teredo or 6to4 address of a public host
   stays relayable, one of a private host is refused through its IPv4 address;
3. plus what the registry does not list (`BEYOND_REGISTRY`): multicast, site-local and SIIT.
"""

from __future__ import annotations

import csv
import io
import ipaddress
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = [
    "BEYOND_REGISTRY",
    "DEFAULT_DENIED_PEERS",
    "EMBEDDED_IPV4",
    "Entry",
    "default_denied_peers",
    "registry",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Judged by their embedded IPv4 address in natkit.turn.peers, so not denied whole.
EMBEDDED_IPV4: tuple[str, ...] = (
    "::ffff:0:0/96",  # IPv4-mapped (RFC 4291 §2.5.5.2): canonicalised to the IPv4 address
    "2001::/32",  # Teredo (RFC 4380): server and client IPv4
    "2002::/16",  # 6to4 (RFC 3056)
)

# Denied although (or because) no special-purpose registry entry covers them.
BEYOND_REGISTRY: tuple[str, ...] = (
    "224.0.0.0/4",  # multicast (RFC 5771): a relay must not join or flood a group
    "::ffff:0:0:0/96",  # SIIT "IPv4-translated" (RFC 2765 §2.1): embeds IPv4, nothing global
    "fec0::/10",  # site-local (deprecated by RFC 3879, still routed as unicast by Linux)
    "ff00::/8",  # multicast (RFC 4291 §2.7)
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One registry row; the booleans are True, False or None (IANA's "N/A")."""

    network: IPNetwork
    name: str
    rfc: str
    source: bool | None
    destination: bool | None
    forwardable: bool | None
    globally_reachable: bool | None
    reserved_by_protocol: bool | None


_BOOL = {"True": True, "False": False, "N/A": None}


@cache
def registry(version: int) -> tuple[Entry, ...]:
    """The IANA special-purpose registry for IP `version` (4 or 6), in IANA's order."""
    path = resources.files("natkit").joinpath(f"data/iana-ipv{version}-special-registry.csv")
    rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
    return tuple(_entry(row) for row in rows)


_COLUMNS = ("Source", "Destination", "Forwardable", "Globally Reachable", "Reserved-by-Protocol")


def _entry(row: dict[str, str]) -> Entry:
    flags = (_BOOL[row[key]] for key in _COLUMNS)
    return Entry(ipaddress.ip_network(row["Address Block"]), row["Name"], row["RFC"], *flags)


def _minus(net: IPNetwork, holes: list[IPNetwork]) -> list[IPNetwork]:
    """`net` without `holes`, as CIDR blocks."""
    blocks = [net]
    for hole in holes:
        out: list[IPNetwork] = []
        for block in blocks:
            if block.version == hole.version and hole.subnet_of(block):  # type: ignore[arg-type]
                out.extend(block.address_exclude(hole))  # type: ignore[arg-type]
            elif not (block.version == hole.version and block.subnet_of(hole)):  # type: ignore[arg-type]
                out.append(block)
        blocks = out
    return blocks


def default_denied_peers() -> tuple[str, ...]:
    """The derivation in the module docstring, as sorted CIDR strings (IPv4 first)."""
    embedded = [ipaddress.ip_network(n) for n in EMBEDDED_IPV4]
    nets: list[IPNetwork] = [ipaddress.ip_network(n) for n in BEYOND_REGISTRY]
    for version in (4, 6):
        for entry in registry(version):
            if entry.globally_reachable is not True:
                nets.extend(_minus(entry.network, embedded))
    # Drop blocks inside another; adjacent blocks stay apart, so each keeps its reason.
    nets.sort(key=lambda n: (n.version, n.network_address, n.prefixlen))
    kept: list[IPNetwork] = []
    for net in nets:
        if not (kept and kept[-1].version == net.version and net.subnet_of(kept[-1])):  # type: ignore[arg-type]
            kept.append(net)
    return tuple(str(n) for n in kept)


DEFAULT_DENIED_PEERS: tuple[str, ...] = default_denied_peers()
