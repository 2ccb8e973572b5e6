"""nftables rulesets, as text: one table per node, loaded atomically with one `nft -f`.

How each RFC 4787 behaviour is made of Linux parts (measured; see FIELD-NOTES.md):

- Mapping. Endpoint-independent (EIM) with port preservation: `snat` to the WAN address without
  a port, which keeps the inside port when free. EIM without preservation ("off") or with per-host
  port blocks ("blocks", RFC 4787 REQ-3: Linux would otherwise give two inside hosts the same
  external port towards different destinations): the port is a fixed function of the inside port,
  folded into the host's block (``sport & (size-1) | base``), so it is the same for every
  destination. Address-dependent (ADM): the port is ``jhash(inside ip, inside port, remote ip)``
  through a ``{i : port}`` map (jhash used directly as a port comes out byte-swapped).
  Address-and-port-dependent (APDM): ``masquerade fully-random``.
- Filtering. Address-and-port-dependent (APDF) is conntrack itself. Endpoint-independent (EIF):
  a dynamic map *mapped UDP port → inside ip . port*, written after SNAT and refreshed by packets
  in both directions; a new inbound flow to a mapped port is DNATed through it. Address-dependent
  (ADF): the same, admitted only if (mapped port, remote ip) is in a dynamic set of remotes the
  inside endpoint has sent to.
- The conntrack trap: an unsolicited inbound packet that reaches INPUT is confirmed by conntrack
  and makes the inside host's later packet to that peer collide and get a new port (a cone NAT then
  looks symmetric under the RFC 3489 test order). NEW packets from the WAN that are not DNATed are
  therefore dropped in input and forward, before confirmation.
- Hairpinning (REQ-9): a LAN packet to the WAN address is DNATed through the mapping map and
  SNATed to the WAN address.
- Port-mapping protocols (`natkit.lab.portmap`): miniupnpd writes its DNAT and accept rules into
  the regular chains upnp_prerouting / upnp_forward / upnp_postrouting of this table, jumped to
  first from dstnat / forward / srcnat, so a mapping it makes takes precedence over the NAT's own
  behaviour. NAT-PMP and PCP share UDP 5351 (one switch in miniupnpd): a protocol that is off is
  dropped here by its version byte, before conntrack could admit a retry as established.
- Mapping lifetime: the dynamic map/set timeouts here; the conntrack UDP timeouts are per-namespace
  sysctls set by the plan (two separate clocks). Per state: a mapping that has seen only outbound
  packets lives `timeout_outbound` (conntrack: nf_conntrack_udp_timeout), one that has seen
  replies `timeout_established` (nf_conntrack_udp_timeout_stream, which conntrack applies once the
  flow is 2 s old); both default to `udp_timeout`.
- Port allocation other than "preserve", and CGNAT port blocks: `natkit.lab.portalloc`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from natkit.lab import portalloc
from natkit.lab.topology import Nat

__all__ = [
    "UPNP_CHAINS",
    "RouterRules",
    "impairment_rules",
    "port_blocks",
    "router_rules",
    "wrap_table",
]

TABLE = "natkit"
ADM_PORTS = 1024
ADM_BASE = 20000
UPNP_CHAINS = {
    "forward": "upnp_forward",
    "nat": "upnp_prerouting",
    "postrouting": "upnp_postrouting",
}
"""miniupnpd's chains in this table (its upnp_forward_chain, upnp_nat_chain, ...)."""


@dataclass(frozen=True)
class RouterRules:
    """What a NAT router's ruleset depends on."""

    nat: Nat
    wan_if: str
    lan_if: str
    wan_ip: ipaddress.IPv4Address
    lan: ipaddress.IPv4Network
    clients: tuple[ipaddress.IPv4Address, ...]
    """LAN addresses of the hosts (and NATs) behind this router, in order: port block owners."""
    loss: float = 0.0


def port_blocks(count: int, *, preserve: bool) -> list[tuple[int, int]]:
    """`count` aligned (base, size) blocks. With `preserve` they tile 32768-65535, where Linux picks
    ephemeral ports, so a port inside the host's block is kept; without, they tile 1024-32767, so an
    ephemeral inside port is never kept."""
    count = max(count, 1)
    size = 32768 if preserve else 8192
    while (32768 // size - (0 if preserve else 1)) < count:
        size //= 2
        if size < 64:
            raise ValueError(f"{count} hosts do not fit in port blocks")
    first = 32768 if preserve else size
    return [(first + i * size, size) for i in range(count)]


def _mapping_rules(r: RouterRules) -> list[str]:
    nat, out = r.nat, f'oifname "{r.wan_if}" ip saddr {r.lan}'
    l4 = "meta l4proto { tcp, udp }"
    if portalloc.allocates(nat):  # sequential / random / per-subscriber blocks
        return portalloc.srcnat_rules(nat, r.wan_if, r.wan_ip, r.lan, r.clients)
    if nat.mapping == "address-and-port-dependent":
        return [f"{out} masquerade fully-random"]
    if nat.mapping == "address-dependent":
        elems = ", ".join(f"{i} : {ADM_BASE + i}" for i in range(ADM_PORTS))
        return [
            f"{out} {l4} snat ip to {r.wan_ip} : "
            f"jhash ip saddr . th sport . ip daddr mod {ADM_PORTS} seed 0x4e4b map {{ {elems} }}",
            f"{out} snat ip to {r.wan_ip}",
        ]
    rules = []
    if nat.port_preservation != "on":
        blocks = port_blocks(len(r.clients), preserve=nat.port_preservation == "blocks")
        for client, (base, size) in zip(r.clients, blocks, strict=True):
            rules.append(
                f'oifname "{r.wan_if}" ip saddr {client} {l4} '
                f"snat ip to {r.wan_ip} : th sport and {size - 1:#x} or {base:#x}"
            )
    rules.append(f"{out} snat ip to {r.wan_ip}")
    return rules


def _by_state(match: str, update: str, nat: Nat) -> list[str]:
    """`update` (with a %s where an element timeout goes) for an outbound packet: one rule, or,
    when the per-state timeouts differ, one per state (has the flow seen a reply yet?)."""
    out, est = nat.timeout_outbound, nat.timeout_established
    if out == est:
        return [f"{match} {update % ''}"]
    return [
        f"{match} ct status & seen-reply == 0 {update % f' timeout {out}s'}",
        f"{match} ct status seen-reply {update % f' timeout {est}s'}",
    ]


def _loss_chains(iface: str, loss: float) -> list[str]:
    if not loss:
        return []
    threshold = round(loss * 100)
    drop = "drop" if threshold >= 10000 else f"numgen random mod 10000 < {threshold} drop"
    return [
        "  chain impair_in {",
        "    type filter hook prerouting priority -300; policy accept;",
        f'    iifname "{iface}" {drop}',
        "  }",
        "  chain impair_out {",
        "    type filter hook postrouting priority 300; policy accept;",
        f'    oifname "{iface}" {drop}',
        "  }",
    ]


def wrap_table(body: list[str], table: str = TABLE) -> str:
    """`body` as the inet table `table`, replacing whatever of that name is loaded."""
    # Declaring then deleting the table first makes the whole file one atomic replace.
    return "\n".join(
        [
            f"table inet {table}",
            f"delete table inet {table}",
            f"table inet {table} {{",
            *body,
            "}",
            "",
        ]
    )


def impairment_rules(iface: str, loss: float) -> str:
    """Packet loss on a host's uplink, both directions."""
    return wrap_table(_loss_chains(iface, loss))


def _port_control_filter(lan: str, natpmp: bool, pcp: bool) -> list[str]:
    """Drop the 5351 protocol that is off (first payload byte: 0 NAT-PMP, 2 PCP)."""
    if natpmp == pcp:
        return []  # both on (miniupnpd serves both), or both off (nothing listens)
    version = 2 if natpmp else 0
    return [f"    {lan} udp dport 5351 @th,64,8 {version} drop"]


def router_rules(r: RouterRules) -> str:
    """The complete ruleset of one NAT router."""
    nat, wan, lan = r.nat, f'iifname "{r.wan_if}"', f'iifname "{r.lan_if}"'
    eif = nat.filtering == "endpoint-independent"
    adf = nat.filtering == "address-dependent"
    keep_map = eif or adf or nat.hairpinning
    t = f"{max(nat.timeout_outbound, nat.timeout_established)}s"
    body: list[str] = portalloc.declarations(nat)
    if keep_map:
        body += [
            "  # mapped UDP port -> inside endpoint, for EIF/ADF and hairpinning",
            "  map mappings {",
            "    type inet_service : ipv4_addr . inet_service; flags dynamic,timeout;",
            f"    timeout {t};",
            "  }",
        ]
    if adf:
        body += [
            "  # (mapped port, remote ip) the inside endpoint has sent to: ADF admits these",
            "  set permits {",
            f"    type inet_service . ipv4_addr; flags dynamic,timeout; timeout {t};",
            "  }",
        ]
    body += _loss_chains(r.wan_if, r.loss)
    body += portalloc.chains(nat, r.wan_if)
    pm = nat.port_mapping
    jump = {c: [f"    jump {name}"] if pm.enabled else [] for c, name in UPNP_CHAINS.items()}
    for name in UPNP_CHAINS.values() if pm.enabled else ():
        body += [f"  chain {name} {{", "  }"]
    if keep_map:
        mark_in = [
            f"    {wan} meta l4proto udp ct state established ct direction reply "
            "update @mappings { udp dport : ct original ip saddr . ct original proto-src }",
            f"    {wan} meta l4proto udp ct state established ct direction original "
            "update @mappings { udp dport : ct reply ip saddr . ct reply proto-src }",
        ]
        if adf:
            mark_in.append(
                f"    {wan} meta l4proto udp ct state established "
                "update @permits { udp dport . ip saddr }"
            )
        body += [
            "  chain refresh_in {",
            "    type filter hook prerouting priority -150; policy accept;",
            *mark_in,
            "  }",
        ]
        mark_out = [
            *_by_state(
                f'    oifname "{r.wan_if}" meta l4proto udp ct direction original',
                "update @mappings { udp sport%s : ct original ip saddr . ct original proto-src }",
                nat,
            ),
            f'    oifname "{r.wan_if}" meta l4proto udp ct direction reply '
            "update @mappings { udp sport : ct reply ip saddr . ct reply proto-src }",
        ]
        if adf:
            mark_out.append(
                f'    oifname "{r.wan_if}" meta l4proto udp '
                "update @permits { udp sport . ip daddr }"
            )
        body += [
            "  chain refresh_out {",
            "    type filter hook postrouting priority 200; policy accept;",
            *mark_out,
            "  }",
        ]
    dnat = []
    if eif:
        dnat.append(f"    {wan} meta l4proto udp dnat ip to udp dport map @mappings")
    if adf:
        dnat.append(
            f"    {wan} meta l4proto udp udp dport . ip saddr @permits "
            "dnat ip to udp dport map @mappings"
        )
    if nat.hairpinning:
        dnat.append(
            f"    {lan} ip daddr {r.wan_ip} meta l4proto udp dnat ip to udp dport map @mappings"
        )
    body += [
        "  chain dstnat {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        *jump["nat"],
        *dnat,
        "  }",
    ]
    snat = _mapping_rules(r)
    if nat.hairpinning:
        snat.insert(
            0, f'oifname "{r.lan_if}" ip saddr {r.lan} ct status dnat snat ip to {r.wan_ip}'
        )
    body += [
        "  chain srcnat {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        *jump["postrouting"],
        *(f"    {rule}" for rule in snat),
        "  }",
    ]
    # With IPv6 on the LAN, natkit.lab.ipv6's table filters IPv6: the trap rule drops IPv4 only.
    unsolicited = f"{wan} drop" if nat.ipv6 == "none" else f"{wan} meta nfproto ipv4 drop"
    policy = portalloc.limit_rules(nat, r.lan_if, r.wan_if)
    if not nat.firewall.udp:
        policy.append(f'    {lan} oifname "{r.wan_if}" meta l4proto udp drop')
    if nat.firewall.tcp_ports is not None:
        ports = ", ".join(str(p) for p in nat.firewall.tcp_ports) or "0"
        policy.append(f'    {lan} oifname "{r.wan_if}" tcp dport != {{ {ports} }} drop')
    body += [
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        *policy,
        "    ct state established,related accept",
        *jump["forward"],
        f"    {wan} ct status dnat accept",
        "    # unsolicited: drop before conntrack confirms it (the conntrack trap)",
        f"    {unsolicited}",
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        *_port_control_filter(lan, pm.natpmp, pm.pcp),
        "    ct state established,related accept",
        f"    {unsolicited}",
        "  }",
    ]
    return wrap_table(body)
