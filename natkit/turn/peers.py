"""The TURN peer policy shared by both engines: which peer addresses a relay may send to.

An open TURN relay is a proxy into the operator's own network (RFC 8656 §21.3): a client asks
for a permission to 127.0.0.1 or 10.0.0.5 and reaches services never meant to be public. So the
policy refuses (403, RFC 8656 §9.2) every range in ``turn.peers.deny`` (default: loopback,
private, CGNAT, link-local, multicast, unspecified, …) and the server's own addresses, and
``turn.peers.allow`` opens holes deliberately. **allow wins** over deny: a hole is an explicit
operator decision. Own addresses are the configured ones (listeners, relay, alternate) and
every address on this host's interfaces (`natkit.hostaddr`; with wildcard listeners no listener
names them, yet a relay to any of them reaches ssh, the signal port, the TURN port itself). An
allow *range* does not open an own address inside it (a LAN opened for a lab must not open the
host on it); an allow entry naming the address itself (a /32 or /128) does: a test relaying to
its own 127.0.0.1 needs exactly that.

Addresses that carry an IPv4 address inside IPv6 are judged by the IPv4 address too, because
that is where the packet may end up:

- IPv4-mapped ``::ffff:a.b.c.d`` (RFC 4291 §2.5.5.2): a dual-stack socket sends it to a.b.c.d.
  It is *canonicalised* to the IPv4 address before any check (allow and deny), as coturn ≥ 4.9
  does after CVE-2026-27624.
- IPv4-compatible ``::a.b.c.d`` (deprecated, RFC 4291 §2.5.5.1): canonicalised the same way
  (``::`` and ``::1`` excepted: they are IPv6's unspecified and loopback).
- 6to4 ``2002:AABB:CCDD::/48`` (RFC 3056), NAT64 ``64:ff9b::/96`` (RFC 6052), SIIT
  "IPv4-translated" ``::ffff:0:a.b.c.d`` (RFC 2765 §2.1) and Teredo ``2001::/32`` (RFC 4380;
  server and de-obfuscated client): denied when the embedded IPv4 is denied (and not allowed),
  since a translator or relay on the path would deliver to it.

The default deny list is derived from the IANA special-purpose registries
(`natkit.special_addresses`), which leaves these embedding prefixes to the rules above.

`coturn_lines` renders the policy as coturn's ``denied-peer-ip``/``allowed-peer-ip``, which take
``ip`` or ``ip-ip`` and never CIDR (4.6.1 ignores a CIDR with "Wrong address format" and runs
with no rule; ≥ 4.11 refuses to start).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from natkit.addr import IPAddress

__all__ = [
    "MAPPED_V4_RANGE",
    "PeerPolicy",
    "canonical",
    "coturn_blocks",
    "coturn_lines",
    "embedded_ipv4",
    "embedded_lines",
    "network_range",
    "touches_loopback",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Every IPv4-mapped address; coturn < 4.9 never matches these against IPv4 rules.
MAPPED_V4_RANGE = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPAT_V4 = ipaddress.IPv6Network("::/96")
_NAT64_WKP = ipaddress.IPv6Network("64:ff9b::/96")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 §2.1 "IPv4-translated"
_TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380 §2.6


def _parse_networks(texts: Iterable[str], key: str) -> tuple[IPNetwork, ...]:
    nets: list[IPNetwork] = []
    for text in texts:
        try:
            # strict=False: "10.1.2.3/8" means the /8 it lies in, as every firewall reads it.
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"turn.peers.{key}: {text!r} is not an IP address or CIDR") from None
    return tuple(nets)


def canonical(ip: IPAddress) -> IPAddress:
    """The address the kernel really sends to: IPv4-mapped/-compatible IPv6 → the IPv4."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _COMPAT_V4 and int(ip) > 1:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """IPv4 addresses a 6to4, NAT64 (well-known prefix), SIIT or Teredo address leads to."""
    found: list[ipaddress.IPv4Address] = []
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip in _NAT64_WKP or ip in _SIIT:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return tuple(found)


def _exact(nets: Iterable[IPNetwork]) -> frozenset[IPAddress]:
    return frozenset(canonical(n.network_address) for n in nets if n.num_addresses == 1)


def _own_set(texts: Iterable[str]) -> frozenset[IPAddress]:
    own = set()
    for text in texts:
        ip = ipaddress.ip_address(text.split("%")[0])
        if not ip.is_unspecified:  # a wildcard listener is not an address of its own
            own.add(canonical(ip))
    return frozenset(own)


@dataclass(frozen=True)
class PeerPolicy:
    """Which peers a TURN relay may send to. Build it once; `is_allowed` is called per request.

    `own_addresses` are the configured ones (listeners, relay, alternate); `host_addresses` every
    address on this host's interfaces, replaced while serving by `replace_host_addresses`.
    """

    deny: Sequence[str]
    allow: Sequence[str] = ()
    own_addresses: Sequence[str] = ()
    host_addresses: Collection[str] = ()
    _deny: tuple[IPNetwork, ...] = field(init=False, repr=False)
    _allow: tuple[IPNetwork, ...] = field(init=False, repr=False)
    _exact: frozenset[IPAddress] = field(init=False, repr=False)
    _configured: frozenset[IPAddress] = field(init=False, repr=False)
    _own: frozenset[IPAddress] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_deny", _parse_networks(self.deny, "deny"))
        object.__setattr__(self, "_allow", _parse_networks(self.allow, "allow"))
        object.__setattr__(self, "_exact", _exact(self._allow))
        object.__setattr__(self, "_configured", _own_set(self.own_addresses))
        self.replace_host_addresses(self.host_addresses)

    def replace_host_addresses(self, addresses: Iterable[str]) -> None:
        """Replace the host's own addresses (the server refreshes them while it runs).

        The one mutable part of the policy: the set is rebuilt and swapped in one assignment,
        so `is_allowed` (one set lookup for it) never sees half an update."""
        object.__setattr__(self, "_own", self._configured | _own_set(addresses))

    @property
    def deny_networks(self) -> tuple[IPNetwork, ...]:
        return self._deny

    @property
    def allow_networks(self) -> tuple[IPNetwork, ...]:
        return self._allow

    @property
    def own(self) -> frozenset[IPAddress]:
        """Every own address, configured and the host's (canonical)."""
        return self._own

    @property
    def own_refused(self) -> frozenset[IPAddress]:
        """The own addresses no ``turn.peers.allow`` entry names exactly: always refused."""
        return self._own - self._exact

    def _own_refused(self, ip: IPAddress) -> bool:
        # An allow *range* opened for a LAN does not open this host inside it; only an entry
        # naming the address itself (a /32 or /128: a lab relaying to its own 127.0.0.1) does.
        return ip in self._own and ip not in self._exact

    def _allowed_explicitly(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self._allow)

    def allows_explicitly(self, ip: str | IPAddress) -> bool:
        """Does ``turn.peers.allow`` open `ip` (canonicalised) on purpose, to every port?"""
        addr = canonical(ipaddress.ip_address(ip) if isinstance(ip, str) else ip)
        return self._allowed_explicitly(addr) and not self._own_refused(addr)

    def _refused_v4(self, ip: ipaddress.IPv4Address) -> bool:
        if self._own_refused(ip):
            return True
        return any(ip in net for net in self._deny) and not self._allowed_explicitly(ip)

    def is_allowed(self, ip: str | IPAddress) -> bool:
        """May the relay send to `ip`? (False → the server answers 403 Forbidden.)"""
        addr = canonical(ipaddress.ip_address(ip) if isinstance(ip, str) else ip)
        if self._own_refused(addr):
            return False
        if self._allowed_explicitly(addr):
            return True
        if any(addr in net for net in self._deny):
            return False
        if isinstance(addr, ipaddress.IPv6Address):
            for v4 in embedded_ipv4(addr):
                if self._refused_v4(v4):
                    return False
        return True

    def refused_ipv4(self) -> list[ipaddress.IPv4Network]:
        """The IPv4 addresses refused inside an embedding (`embedded_ipv4`), as CIDR blocks:
        own addresses, and ``deny`` less ``allow`` (the rule `_refused_v4` applies)."""
        holes = [n for n in self._allow if isinstance(n, ipaddress.IPv4Network)]
        blocks: list[ipaddress.IPv4Network] = []
        for net in self._deny:
            if isinstance(net, ipaddress.IPv4Network):
                blocks += [b for b in _minus(net, holes) if isinstance(b, ipaddress.IPv4Network)]
        blocks += [
            ipaddress.IPv4Network(ip)
            for ip in self.own_refused
            if isinstance(ip, ipaddress.IPv4Address)
        ]
        return list(ipaddress.collapse_addresses(blocks))


def _minus(net: IPNetwork, holes: Iterable[IPNetwork]) -> list[IPNetwork]:
    """`net` without `holes`, as CIDR blocks."""
    blocks = [net]
    for hole in holes:
        out: list[IPNetwork] = []
        for block in blocks:
            if block.version != hole.version or not block.overlaps(hole):
                out.append(block)
            elif hole.subnet_of(block) and hole != block:  # type: ignore[arg-type]
                out.extend(block.address_exclude(hole))  # type: ignore[arg-type]
        blocks = out
    return sorted(blocks, key=lambda b: (b.version, b.network_address))


def _fmt(ip: IPAddress) -> str:
    # ::ffff:127.0.0.1 rather than Python's ::ffff:7f00:1, so the file reads as intended.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def network_range(net: IPNetwork) -> str:
    """One network as coturn's ``ip`` (a single address) or ``LOW-HIGH``.

    Each CIDR block stays its own range, never merged with neighbours: coturn < 4.9 compares
    IPv6 range bounds byte by byte (each byte between min's and max's), which is exact for a
    CIDR block but wrong for an arbitrary range.
    """
    low, high = net.network_address, net.broadcast_address
    return _fmt(low) if low == high else f"{_fmt(low)}-{_fmt(high)}"


def coturn_blocks(net: IPNetwork) -> list[IPNetwork]:
    """`net` as blocks coturn reads as meant.

    coturn treats an all-zero range bound as *no* bound (``addr_any``, every version): a lone
    ``::`` or ``0.0.0.0`` matches every address, and an IPv6 range from ``::`` matches every
    IPv4 address too. So the unspecified address itself is never rendered (coturn refuses it on
    its own since 4.5.2) and an IPv6 network starting at ``::`` is split into the CIDR blocks
    around it. An IPv4 range from 0.0.0.0 stays: its upper bound still limits it to IPv4.
    """
    if not net.network_address.is_unspecified:
        return [net]
    if isinstance(net, ipaddress.IPv4Network):
        return [] if net.prefixlen == 32 else [net]
    if net.prefixlen == 128:
        return []
    return sorted(net.address_exclude(ipaddress.IPv6Network("::/128")))


def coturn_lines(policy: PeerPolicy) -> list[str]:
    """``allowed-peer-ip=`` and ``denied-peer-ip=`` lines for turnserver.conf.

    coturn checks allowed before denied (a hole wins, as in natkit). Its built-in loopback
    check runs before both and is only lifted with ``allow-loopback-peers``; the renderer adds
    that when an allow range touches loopback (the denied list still covers the rest of it).
    IPv4-mapped addresses are canonicalised by natkit but not by coturn < 4.9: an IPv4 hole is
    therefore also rendered in its mapped IPv6 form. Own addresses are cut out of the allow
    ranges (unless named exactly), since coturn would let an allow range win over them.
    coturn judges no embedded IPv4 address at all: `embedded_lines` renders those forms.
    """
    own = sorted(policy.own_refused, key=lambda a: (a.version, int(a)))
    own_nets = [ipaddress.ip_network(ip) for ip in own]
    lines: list[str] = []
    for net in policy.allow_networks:
        for part in _minus(net, own_nets):
            blocks = coturn_blocks(part)
            if isinstance(part, ipaddress.IPv4Network):
                blocks.append(_mapped(part))
            lines += [f"allowed-peer-ip={network_range(b)}" for b in blocks]
    for net in policy.deny_networks:
        lines += [f"denied-peer-ip={network_range(b)}" for b in coturn_blocks(net)]
    lines += [f"denied-peer-ip={_fmt(ip)}" for ip in own]
    return lines + embedded_lines(policy)


# The IPv6 forms that carry an IPv4 address in a fixed place (RFC 6052 §2.2 for the /96 ones):
# (name, prefix, bit offset of the IPv4 address from the top).
_EMBEDDINGS: tuple[tuple[str, ipaddress.IPv6Network, int], ...] = (
    ("IPv4-compatible ::a.b.c.d (RFC 4291 §2.5.5.1)", _COMPAT_V4, 96),
    ("NAT64 64:ff9b::a.b.c.d (RFC 6052)", _NAT64_WKP, 96),
    ("SIIT ::ffff:0:a.b.c.d (RFC 2765 §2.1)", _SIIT, 96),
    ("6to4 2002:AABB:CCDD::/48 (RFC 3056)", ipaddress.IPv6Network("2002::/16"), 16),
    ("Teredo server 2001:0:AABB:CCDD::/64 (RFC 4380 §4)", _TEREDO, 32),
)


def _embedded_block(
    prefix: ipaddress.IPv6Network, offset: int, net: ipaddress.IPv4Network
) -> ipaddress.IPv6Network:
    base = int(prefix.network_address) | int(net.network_address) << (96 - offset)
    return ipaddress.IPv6Network((base, offset + net.prefixlen))


def _teredo_client(net: ipaddress.IPv4Network) -> str:
    """RFC 4380 §4: the client IPv4, XORed with 0xffffffff, is the last 32 bits, below 64 bits
    of server address, flags and port. No CIDR holds that set; coturn < 4.9 compares an IPv6
    range byte by byte (each byte between the bounds'), so this box is exact there, and an
    ordered comparison only widens it (never a bypass)."""
    low = int(net.broadcast_address) ^ 0xFFFFFFFF
    high = int(net.network_address) ^ 0xFFFFFFFF
    top = int(_TEREDO.network_address)
    lo, hi = ipaddress.IPv6Address(top | low), ipaddress.IPv6Address(top | (2**64 - 1) << 32 | high)
    return f"{lo}-{hi}"


def embedded_lines(policy: PeerPolicy) -> list[str]:
    """``denied-peer-ip=`` for every IPv6 form that embeds a refused IPv4 address.

    The builtin judges these by the IPv4 address they carry (`embedded_ipv4`); coturn only by
    the IPv6 address. So each refused IPv4 block (`PeerPolicy.refused_ipv4`) is rendered under
    each embedding prefix: exactly what the builtin refuses, no more (a public host's 6to4,
    NAT64 or Teredo address stays relayable on both engines). About 6 lines per refused IPv4
    block (~100 for the default list): a whole-prefix deny would be shorter but refuse what the
    builtin relays. A block already inside a denied IPv6 range is left out (SIIT by default).
    """
    v6_deny = [n for n in policy.deny_networks if isinstance(n, ipaddress.IPv6Network)]

    def covered(net: ipaddress.IPv6Network) -> bool:
        return any(net.subnet_of(d) for d in v6_deny)

    refused = policy.refused_ipv4()
    lines = []
    for name, prefix, offset in _EMBEDDINGS:
        if covered(prefix):
            continue
        lines.append(f"# {name}: the refused IPv4 ranges in this form")
        for net in refused:
            block = _embedded_block(prefix, offset, net)
            if not covered(block):
                lines += [f"denied-peer-ip={network_range(b)}" for b in coturn_blocks(block)]
    if not covered(_TEREDO):
        lines.append(
            "# Teredo client 2001:0::/32, last 32 bits = IPv4 XOR 0xffffffff (RFC 4380 §4)"
        )
        lines += [f"denied-peer-ip={_teredo_client(net)}" for net in refused]
    return lines


def _mapped(net: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    base = int(MAPPED_V4_RANGE.network_address) | int(net.network_address)
    return ipaddress.IPv6Network((base, 96 + net.prefixlen))


def touches_loopback(policy: PeerPolicy) -> bool:
    """Does an allow range open any loopback address (needs coturn's allow-loopback-peers)?"""
    loopbacks = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    return any(
        a.version == b.version and a.overlaps(b) for a in policy.allow_networks for b in loopbacks
    )
