"""IPv6 in the lab: addressing, router rules and the NAT64/DNS64 daemons of a NAT's `ipv6` mode.

Pure (text and data), like `natkit.lab.plan`, which calls `address` and `commands`. The modes of a
NAT's home LAN (`ipv6:` in the topology):

    none      no IPv6 on the LAN (the default, the IPv4-only home network)
    open      global 2001:db8:N::/64, routed, no filtering
    firewall  global 2001:db8:N::/64 behind an RFC 6092 CPE firewall: stateful, outbound flows
              admit their replies (address-and-port-dependent filtering), unsolicited inbound
              is dropped before conntrack confirms it (the conntrack trap), no translation
    nptv6     ULA fd00:0:N::/64 inside, RFC 6296 prefix translation of fd00:0:N::/48 to
              2001:db8:N::/48 (xtables SNPT/DNPT: stateless, checksum-neutral; with a /48 the
              adjustment lands in the subnet id, so interface id and port pass unchanged)
    nat66     ULA fd00:0:N::/64 inside, masqueraded to the router's WAN address (EIM, APDF)

`ipv6_only: true` gives the LAN's hosts no IPv4 at all; `nat64: true` adds stateful NAT64
(RFC 6146: Debian tayga on a TUN device in the router, its IPv4 pool NATed to the WAN address)
with the network-specific prefix 2001:db8:ff64::/96 (RFC 6052 §3.1 keeps the well-known
64:ff9b::/96 from carrying non-global IPv4 such as 203.0.113.0/24), and a DNS64 resolver
(RFC 6147: Debian unbound on the router's LAN address) answering only from the lab's zones:
`<server>.lab` (each server's first address, e.g. server.lab → 203.0.113.10) and ipv4only.arpa
(RFC 7050 §8.2: 192.0.0.170/171, synthesized to reveal the prefix). Unbound has no upstream
and may query no address: no packet leaves the lab.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from natkit.lab.nft import wrap_table
from natkit.lab.topology import INTERNET, Nat, Topology

if TYPE_CHECKING:
    from natkit.lab.plan import NodePlan, Plan

__all__ = [
    "NAT64_POOL",
    "NAT64_PREFIX",
    "Daemon",
    "address",
    "commands",
    "ip6tables_rules",
    "router_table",
    "tayga_conf",
    "unbound_conf",
]

IPv6 = ipaddress.IPv6Address
# RFC 6052 §3.1: the well-known 64:ff9b::/96 must not carry non-global IPv4 addresses such as
# the lab's 203.0.113.0/24 (tayga drops them), so the lab uses a network-specific prefix.
NAT64_PREFIX = ipaddress.IPv6Network("2001:db8:ff64::/96")
NAT64_POOL = ipaddress.IPv4Network("192.168.255.0/24")
"""Tayga's dynamic pool: one IPv4 address per IPv6 host, then NATed to the WAN address."""
TABLE = "natkit6"
DNS_PORT = 53


@dataclass(frozen=True)
class Daemon:
    """A process the lab starts in a node after the rules are loaded; `Lab.down()` kills it with
    the namespace. `files` are written to the lab's run directory first; ``{run}`` in `argv` and
    in file texts is that directory."""

    node: str
    name: str
    argv: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)
    setup: tuple[tuple[str, ...], ...] = ()
    """Commands run in the node before the daemon (e.g. `tayga --mktun`)."""
    ready_udp: tuple[str, int] | None = None
    """A UDP DNS port that answers once the daemon is up."""


def _global_prefix(number: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(f"2001:db8:{number:x}::/48")


def _inside_prefix(number: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(f"fd00:0:{number:x}::/48")


def _lan(nat: Nat, number: int) -> ipaddress.IPv6Network:
    """The /64 of the LAN: global for open/firewall, ULA behind a translator."""
    base = _inside_prefix(number) if nat.ipv6 in ("nptv6", "nat66") else _global_prefix(number)
    return ipaddress.IPv6Network(f"{base.network_address}/64")


def address(topo: Topology, nodes: dict[str, NodePlan]) -> None:
    """Add IPv6 to the plan's nodes (after IPv4 addressing): LAN prefix and router address,
    host addresses from ::10 up, the router's WAN address 2001:db8::<WAN octet>; IPv6-only LANs
    lose their IPv4 host addresses and routes."""
    for number, nat in enumerate(topo.nats, start=1):
        if nat.ipv6 == "none":
            continue
        router = nodes[nat.name]
        lan = _lan(nat, number)
        router.lan6 = lan
        router.lan6_ip = lan.network_address + 1
        router.addresses6 = [IPv6(f"2001:db8::{int(router.addresses[0]) & 0xFF}")]
        kids = [n for n in nodes.values() if n.parent == nat.name and n.kind == "host"]
        for index, kid in enumerate(kids):
            kid.addresses6 = [lan.network_address + 0x10 + index]
            kid.gateway6 = router.lan6_ip
            if nat.nat64:
                kid.dns = str(router.lan6_ip)
            if nat.ipv6_only:
                kid.addresses, kid.gateway = [], None


def _routed(nat: Nat, number: int) -> ipaddress.IPv6Network | None:
    """What the internet must route to the router: the LAN's global /48 (none behind NAT66)."""
    return None if nat.ipv6 in ("none", "nat66") else _global_prefix(number)


def commands(topo: Topology, plan: Plan) -> None:
    """IPv6 lines, sysctls, rules and daemons for every NAT with an `ipv6` mode."""
    internet = [n for n in plan.nodes.values() if n.parent == INTERNET]
    for number, nat in enumerate(topo.nats, start=1):
        if nat.ipv6 == "none":
            continue
        router = plan.nodes[nat.name]
        assert router.lan6 is not None and router.lan6_ip is not None and router.addresses6
        ns = router.netns
        plan.sysctls[ns]["net/ipv6/conf/all/forwarding"] = "1"
        lines = plan.ns_batch.setdefault(ns, [])
        lines.append(f"addr add {router.lan6_ip}/64 dev {plan.prefix}-lan nodad")
        routed = _routed(nat, number)
        if routed is not None:
            # Reverse path inside the router: the whole /48 lives on the LAN.
            if nat.ipv6 == "nptv6":
                lines.append(f"route add {_inside_prefix(number)} dev {plan.prefix}-lan")
            for other in internet:
                if other.name != nat.name and other.addresses6:
                    plan.ns_batch.setdefault(other.netns, []).append(
                        f"route add {routed} via {router.addresses6[0]}"
                    )
        for kid in plan.nodes.values():
            if kid.parent == nat.name and kid.kind == "host" and kid.gateway6 is not None:
                plan.ns_batch.setdefault(kid.netns, []).append(
                    f"route add default via {kid.gateway6} dev {kid.uplink}"
                )
        plan.nft[ns] = plan.nft.get(ns, "") + router_table(nat, router, plan.prefix)
        if nat.ipv6 == "nptv6":
            plan.ip6tables[ns] = ip6tables_rules(router, number)
        if nat.nat64:
            plan.daemons += _nat64_daemons(topo, nat, router, plan.prefix)


def router_table(nat: Nat, router: NodePlan, prefix: str) -> str:
    """The router's IPv6 table (and NAT64's IPv4 leg); the IPv4 table leaves IPv6 alone."""
    assert router.uplink and router.lan6
    wan = f'iifname "{router.uplink}"'
    forward = []
    if nat.ipv6 in ("firewall", "nat66"):
        forward += [
            f"    {wan} meta nfproto ipv6 ct state established,related accept",
            "    # RFC 6092 REC-11/13: unsolicited inbound dropped before conntrack confirms it",
            f"    {wan} meta nfproto ipv6 drop",
        ]
    srcnat = []
    if nat.ipv6 == "nat66":
        srcnat.append(f'    oifname "{router.uplink}" ip6 saddr {router.lan6} masquerade')
    if nat.nat64:
        wan_ip = router.addresses[0]
        srcnat.append(f'    oifname "{router.uplink}" ip saddr {NAT64_POOL} snat ip to {wan_ip}')
    body = [
        "  chain forward {",
        "    type filter hook forward priority filter - 1; policy accept;",
        *forward,
        "  }",
        "  chain input {",
        "    type filter hook input priority filter - 1; policy accept;",
        *([f"    {wan} meta nfproto ipv6 ct state new meta l4proto udp drop"] if forward else []),
        "  }",
    ]
    if srcnat:
        body += [
            "  chain srcnat {",
            "    type nat hook postrouting priority srcnat - 1; policy accept;",
            *srcnat,
            "  }",
        ]
    return wrap_table(body, TABLE)


def ip6tables_rules(router: NodePlan, number: int) -> str:
    """RFC 6296 NPTv6 as `ip6tables-restore` input: SNPT out, DNPT in, stateless (NOTRACK)."""
    assert router.uplink
    inside, outside, wan = _inside_prefix(number), _global_prefix(number), router.uplink
    return "\n".join(
        [
            "*mangle",
            f"-A PREROUTING -i {wan} -d {outside} -j DNPT --src-pfx {outside} --dst-pfx {inside}",
            f"-A POSTROUTING -o {wan} -s {inside} -j SNPT --src-pfx {inside} --dst-pfx {outside}",
            "COMMIT",
            "",
        ]
    )


def tayga_conf(tun: str, router_ipv6: IPv6) -> str:
    return "\n".join(
        [
            f"tun-device {tun}",
            f"ipv4-addr {NAT64_POOL.network_address + 1}",
            f"ipv6-addr {router_ipv6}",
            f"prefix {NAT64_PREFIX}",
            f"dynamic-pool {NAT64_POOL}",
            "data-dir {run}/tayga",
            "",
        ]
    )


def unbound_conf(listen: IPv6) -> str:
    """DNS64 over authoritative lab zones; `do-not-query-address` keeps unbound off the wire."""
    return "\n".join(
        [
            "server:",
            f"  interface: {listen}",
            f"  port: {DNS_PORT}",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            '  directory: "{run}"',
            '  pidfile: ""',
            "  use-syslog: no",
            '  logfile: ""',
            "  verbosity: 0",
            "  num-threads: 1",
            "  outgoing-range: 16",
            "  so-reuseport: no",
            "  do-ip4: no",
            "  access-control: ::/0 allow",
            '  module-config: "dns64 iterator"',
            f"  dns64-prefix: {NAT64_PREFIX}",
            "  do-not-query-localhost: yes",
            "  do-not-query-address: 0.0.0.0/0",
            "  do-not-query-address: ::/0",
            "auth-zone:",
            '  name: "lab."',
            '  zonefile: "{run}/lab.zone"',
            "  for-downstream: no",
            "  for-upstream: yes",
            "  fallback-enabled: no",
            "auth-zone:",
            '  name: "ipv4only.arpa."',
            '  zonefile: "{run}/ipv4only.zone"',
            "  for-downstream: no",
            "  for-upstream: yes",
            "  fallback-enabled: no",
            "",
        ]
    )


def _zone(origin: str, records: list[str]) -> str:
    return "\n".join(
        [
            f"$ORIGIN {origin}",
            "$TTL 60",
            f"@ IN SOA ns.{origin} lab. 1 3600 600 86400 60",
            f"@ IN NS ns.{origin}",
            "ns IN A 192.0.2.53",
            *records,
            "",
        ]
    )


def _nat64_daemons(topo: Topology, nat: Nat, router: NodePlan, prefix: str) -> list[Daemon]:
    assert router.lan6_ip is not None
    ns_dir = "{run}/" + nat.name
    tun = f"{prefix}-nat64"
    names = {s.name: s.addresses[0] for s in topo.servers}
    zone = _zone("lab.", [f"{n} IN A {a}" for n, a in names.items()])
    # RFC 7050 §8.2: the well-known IPv4-only name has exactly these two A records.
    v4only = _zone("ipv4only.arpa.", ["@ IN A 192.0.0.170", "@ IN A 192.0.0.171"])
    tayga_ip6 = router.lan6_ip + 0xFF64
    tayga = Daemon(
        node=nat.name,
        name="tayga",
        argv=("tayga", "-n", "-c", f"{ns_dir}/tayga.conf"),
        files={
            "tayga.conf": tayga_conf(tun, tayga_ip6).replace("{run}", ns_dir),
        },
        setup=(
            ("mkdir", "-p", f"{ns_dir}/tayga"),
            ("tayga", "-c", f"{ns_dir}/tayga.conf", "--mktun"),
            ("ip", "link", "set", tun, "up"),
            ("ip", "addr", "add", str(router.addresses[0]), "dev", tun),
            ("ip", "route", "add", str(NAT64_POOL), "dev", tun),
            ("ip", "route", "add", str(NAT64_PREFIX), "dev", tun),
        ),
    )
    unbound = Daemon(
        node=nat.name,
        name="unbound",
        argv=("unbound", "-d", "-c", f"{ns_dir}/unbound.conf"),
        files={
            "unbound.conf": unbound_conf(router.lan6_ip).replace("{run}", ns_dir),
            "lab.zone": zone,
            "ipv4only.zone": v4only,
        },
        ready_udp=(str(router.lan6_ip), DNS_PORT),
    )
    return [tayga, unbound]
