"""Port allocation of a lab NAT, as nftables text: how a new mapping's external port is chosen.

Pure text, like `natkit.lab.nft` (which calls this for a NAT whose `port_allocation` is not
"preserve" or that has a `port_block`). How each allocator is made of Linux parts:

- sequential, stride N: the srcnat rule runs once per new conntrack entry, so
  ``numgen inc mod K map { 0 : B, 1 : B+N, ... }`` gives consecutive new flows B, B+N, B+2N...
  (jhash/numgen used directly as a port come out byte-swapped: FIELD-NOTES.md; hence the map).
- random: ``snat to WAN : LO-HI random`` — the kernel picks a random free port of the range for
  each new flow (the "random" flag also skips keeping the inside port).
- a port block per subscriber (each LAN address: a CGNAT's customer): that subscriber's flows are
  NATed into its own range, and a per-subscriber ``ct count`` refuses (drops) its UDP flow number
  size+1 while `size` are alive — an exhausted block, as real CGNATs do. Linux would otherwise
  reuse a port towards another destination and never run out. TCP shares the block's ports; a
  closed connection's port is free again after 10 s of TIME_WAIT (`plan.BLOCK_TCP_TIME_WAIT`).

A new port per flow is address-and-port-dependent mapping. For an endpoint-independent (or
address-dependent) NAT the first flow of an inside socket takes the allocator's port and a
dynamic map ``@alloc`` (inside ip . port [. remote ip] → external port), written after SNAT,
gives every later flow of that socket the same port: so an EIM NAT allocates one port per new
inside socket, a symmetric one per new destination. ``@alloc`` lives by the mapping's per-state
timeouts (`Nat.timeout_outbound` until a reply was seen, then `Nat.timeout_established`).
"""

from __future__ import annotations

import ipaddress

from natkit.errors import LabError
from natkit.lab.topology import Nat

__all__ = [
    "BLOCK_BASE",
    "SEQ_BASE",
    "allocates",
    "block_ranges",
    "chains",
    "declarations",
    "limit_rules",
    "sequence",
    "srcnat_rules",
]

SEQ_BASE = 30000
"""First port of the sequential allocator."""
SEQ_SLOTS = 1024
"""Ports in the sequential cycle (fewer when the stride is large)."""
BLOCK_BASE = 10000
"""Port blocks tile upwards from here, one per subscriber in LAN order."""
RANDOM_RANGE = (1024, 65535)
L4 = "meta l4proto { tcp, udp }"

# The @alloc key per mapping behaviour: rule-side expression, map typeof, conntrack-side value.
_KEYS = {
    "endpoint-independent": (
        "ip saddr . th sport",
        "ip saddr . udp sport",
        "ct original ip saddr . ct original proto-src",
    ),
    "address-dependent": (
        "ip saddr . th sport . ip daddr",
        "ip saddr . udp sport . ip daddr",
        "ct original ip saddr . ct original proto-src . ct original ip daddr",
    ),
}


def allocates(nat: Nat) -> bool:
    """Whether this module, not plain `snat`, chooses the NAT's ports."""
    return nat.port_allocation != "preserve" or nat.port_block is not None


def sequence(nat: Nat) -> list[int]:
    """The sequential allocator's ports in order (it wraps after the last)."""
    slots = min(SEQ_SLOTS, (65535 - SEQ_BASE) // nat.port_stride + 1)
    return [SEQ_BASE + i * nat.port_stride for i in range(slots)]


def block_ranges(nat: Nat, count: int) -> list[tuple[int, int]]:
    """(first, last) port of each of `count` subscribers' blocks."""
    size = nat.port_block or 1
    ranges = [(BLOCK_BASE + i * size, BLOCK_BASE + (i + 1) * size - 1) for i in range(count)]
    if ranges and ranges[-1][1] > 65535:
        raise LabError(
            f"nats.{nat.name}.port_block: {count} subscribers x {size} ports do not fit in "
            f"{BLOCK_BASE}-65535; use a smaller port_block"
        )
    return ranges


def declarations(nat: Nat) -> list[str]:
    body = []
    if nat.mapping in _KEYS:
        typeof = _KEYS[nat.mapping][1]
        t = max(nat.timeout_outbound, nat.timeout_established)
        body += [
            "  # inside socket -> external port of its first flow: later flows reuse it (EIM/ADM)",
            "  map alloc {",
            f"    typeof {typeof} : udp sport; flags dynamic,timeout; timeout {t}s;",
            "  }",
        ]
    if nat.port_block is not None:
        body += [
            "  # concurrent UDP flows per subscriber, bounded by its port block",
            "  set subscribers {",
            "    type ipv4_addr; flags dynamic; size 65535;",
            "  }",
        ]
    return body


def _allocator(nat: Nat, ports: tuple[int, int] | None) -> str:
    if nat.port_allocation == "sequential":
        elems = ", ".join(f"{i} : {p}" for i, p in enumerate(sequence(nat)))
        return f"numgen inc mod {len(sequence(nat))} map {{ {elems} }}"
    low, high = ports or RANDOM_RANGE
    # Without "random" the kernel's choice inside a block is a hash of the flow: fine for EIM
    # (the socket's first flow only); an APDM block draws at random like a real CGNAT.
    rand = nat.port_allocation == "random" or nat.mapping == "address-and-port-dependent"
    return f"{low}-{high}" + (" random" if rand else "")


def srcnat_rules(
    nat: Nat,
    wan_if: str,
    wan_ip: ipaddress.IPv4Address,
    lan: ipaddress.IPv4Network,
    clients: tuple[ipaddress.IPv4Address, ...],
) -> list[str]:
    """The srcnat chain's rules (without indentation), ending with a catch-all for ICMP."""
    rules: list[str] = []
    reuse = _KEYS.get(nat.mapping)
    sources: list[tuple[str, tuple[int, int] | None]]
    if nat.port_block is None:
        sources = [(f"ip saddr {lan}", None)]
    else:
        ranges = block_ranges(nat, len(clients))
        sources = [(f"ip saddr {c}", r) for c, r in zip(clients, ranges, strict=True)]
    for match, ports in sources:
        out = f'oifname "{wan_if}" {match} {L4}'
        if reuse is not None:
            rules.append(f"{out} snat ip to {wan_ip} : {reuse[0]} map @alloc")
        rules.append(f"{out} snat ip to {wan_ip} : {_allocator(nat, ports)}")
    rules.append(f'oifname "{wan_if}" ip saddr {lan} snat ip to {wan_ip}')
    return rules


def chains(nat: Nat, wan_if: str) -> list[str]:
    """Chains that keep @alloc: written after SNAT, refreshed by packets both ways."""
    if nat.mapping not in _KEYS:
        return []
    value = _KEYS[nat.mapping][2]
    out, est = nat.timeout_outbound, nat.timeout_established
    elem = f"{value} timeout {{t}}s : ct reply proto-dst"
    return [
        "  chain alloc_out {",
        "    type filter hook postrouting priority 210; policy accept;",
        f'    oifname "{wan_if}" {L4} ct direction original ct status & seen-reply == 0 '
        f"update @alloc {{ {elem.format(t=out)} }}",
        f'    oifname "{wan_if}" {L4} ct direction original ct status seen-reply '
        f"update @alloc {{ {elem.format(t=est)} }}",
        "  }",
        "  chain alloc_in {",
        "    type filter hook prerouting priority -140; policy accept;",
        f'    iifname "{wan_if}" {L4} ct direction reply update @alloc {{ {elem.format(t=est)} }}',
        "  }",
    ]


def limit_rules(nat: Nat, lan_if: str, wan_if: str) -> list[str]:
    """Forward-chain rules: a subscriber's UDP flow beyond its block is dropped."""
    if nat.port_block is None:
        return []
    return [
        f'    iifname "{lan_if}" oifname "{wan_if}" meta l4proto udp ct state new '
        f"add @subscribers {{ ip saddr ct count over {nat.port_block} }} drop"
    ]
