"""The build plan: a topology plus a name prefix in, every object and command the lab needs out.

Pure: no syscalls, so addressing and naming are unit-tested without root. `natkit.lab.netlink`
carries a plan out. Addressing (DESIGN.md "Lab addressing"):

- the internet is namespace ``<prefix>-internet`` holding bridge ``<prefix>-br``, no address;
- servers keep their declared addresses; public hosts get 203.0.113.50 upward; NATs attached to
  the internet get 203.0.113.100 upward; internet nodes also get 2001:db8::<last octet>/64;
- NAT number N (declaration order, from 1) has LAN 10.0.N.0/24, or 100.64.N.0/24 when other NATs
  sit behind it (carrier-grade NAT space), router at .1, NATs behind it at .2 upward, hosts at .10
  upward;
- IPv6 on a NAT's LAN (`ipv6:` other than none) is laid out by `natkit.lab.ipv6`;
- interfaces: a node's uplink is ``<prefix>-wan`` (NAT) or ``<prefix>-eth0``; a parent's side
  of child i is ``<prefix>-u<i>`` (internet) or ``<prefix>-d<i>`` (NAT LAN, on bridge
  ``<prefix>-lan``);
- an uplink with delay, jitter or reorder runs through namespace ``<prefix>-<node>_link`` (``_``
  is in no node name): the node's uplink meets ``<prefix>-dn`` there, the parent's port meets
  ``<prefix>-up``, and a forwarder process (`natkit.lab.forwarder`) bridges the two.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from natkit.errors import LabError
from natkit.lab import ipv6
from natkit.lab.impair import LinkModel
from natkit.lab.nft import RouterRules, impairment_rules, router_rules
from natkit.lab.topology import INTERNET, Link, Nat, Topology

__all__ = ["ForwarderPlan", "NodePlan", "Plan", "build_plan"]

Kind = Literal["internet", "server", "nat", "host"]
IPv4 = ipaddress.IPv4Address
BLOCK_TCP_TIME_WAIT = 10
"""Seconds a NAT with a `port_block` keeps a closed TCP connection's port (Linux: 120)."""


@dataclass
class NodePlan:
    """One node as built: its namespace, uplink interface and addresses."""

    name: str
    kind: Kind
    netns: str
    uplink: str | None = None
    parent: str | None = None
    """The node whose bridge the uplink plugs into (internet or a NAT)."""
    parent_port: str | None = None
    """The parent's side of the uplink veth."""
    addresses: list[IPv4] = field(default_factory=list)
    addresses6: list[ipaddress.IPv6Address] = field(default_factory=list)
    prefixlen: int = 24
    gateway: IPv4 | None = None
    lan: ipaddress.IPv4Network | None = None
    lan_ip: IPv4 | None = None
    link: Link = field(default_factory=Link)
    lan6: ipaddress.IPv6Network | None = None
    lan6_ip: ipaddress.IPv6Address | None = None
    gateway6: ipaddress.IPv6Address | None = None
    dns: str | None = None
    """The lab resolver this host should ask (DNS64 on an IPv6-only LAN)."""
    link_netns: str | None = None
    """The namespace of the uplink's forwarder, when the link is delayed."""


@dataclass(frozen=True)
class ForwarderPlan:
    """One link forwarder: where it runs, the two interfaces it bridges, what it does."""

    node: str
    netns: str
    node_side: str
    parent_side: str
    model: LinkModel


def link_model(link: Link) -> LinkModel:
    """The forwarder's model of `link` (seconds and fractions)."""
    return LinkModel(
        delay=link.delay_s,
        jitter=link.jitter_s,
        loss=link.loss / 100,
        reorder=link.reorder / 100,
        limit=link.limit,
    )


@dataclass
class Plan:
    """Everything to create, as data: batch lines for ip/tc, sysctls, one nft ruleset per node."""

    prefix: str
    nodes: dict[str, NodePlan]
    link_batch: list[str]
    """`ip -batch` lines run from the host namespace: bridges and veths created directly in
    their target namespaces (never in the host's)."""
    ns_batch: dict[str, list[str]]
    """Per namespace `ip -n NS -batch` lines: enslave, address, up, routes."""
    sysctls: dict[str, dict[str, str]]
    """Per namespace, /proc/sys paths → values, set before any interface exists."""
    late_sysctls: dict[str, dict[str, str]]
    """Per namespace, set after the nft rules (conntrack's sysctls exist once it is in use)."""
    nft: dict[str, str]
    tc_batch: dict[str, list[str]]
    needs_netem: bool = False
    ip6tables: dict[str, str] = field(default_factory=dict)
    """Per namespace `ip6tables-restore` input (NPTv6, which nftables cannot express)."""
    daemons: list[ipv6.Daemon] = field(default_factory=list)
    """Processes started in nodes once the rules are loaded (NAT64, DNS64)."""
    forwarders: list[ForwarderPlan] = field(default_factory=list)

    @property
    def namespaces(self) -> list[str]:
        nodes = [n.netns for n in self.nodes.values()]
        return nodes + [n.link_netns for n in self.nodes.values() if n.link_netns]


def build_plan(topo: Topology, prefix: str) -> Plan:
    """Lay out `topo` under `prefix` (e.g. "nk1a2b"): names, addresses, commands."""
    nodes: dict[str, NodePlan] = {
        INTERNET: NodePlan(INTERNET, "internet", f"{prefix}-internet"),
    }
    for name, kind in (
        [(s.name, "server") for s in topo.servers]
        + [(n.name, "nat") for n in topo.nats]
        + [(h.name, "host") for h in topo.hosts]
    ):
        nodes[name] = NodePlan(name, kind, f"{prefix}-{name}")  # type: ignore[arg-type]
    _address(topo, nodes, prefix)
    ipv6.address(topo, nodes)
    for node in nodes.values():
        if node.link.forwarded:
            node.link_netns = f"{node.netns}_link"
    plan = Plan(prefix, nodes, [], {}, {}, {}, {}, {})
    plan.link_batch.append(f"link add {prefix}-br netns {nodes[INTERNET].netns} type bridge")
    for nat in topo.nats:
        plan.link_batch.append(f"link add {prefix}-lan netns {nodes[nat.name].netns} type bridge")
    for node in nodes.values():
        _node_commands(plan, node)
    for nat in topo.nats:
        node = nodes[nat.name]
        plan.nft[node.netns] = router_rules(_router_spec(nat, node, nodes, plan.prefix))
        late = plan.late_sysctls[node.netns] = {
            "net/netfilter/nf_conntrack_udp_timeout": str(nat.timeout_outbound),
            "net/netfilter/nf_conntrack_udp_timeout_stream": str(nat.timeout_established),
        }
        if nat.port_block is not None:
            # A block's TCP ports are the same few: Linux keeps each closed one in TIME_WAIT
            # for 120 s, so back-to-back lab sessions (signalling, TURN/TCP) ran out of them
            # and SYNs waited seconds. Freed after 10 s, the block's limit is the UDP one.
            late["net/netfilter/nf_conntrack_tcp_timeout_time_wait"] = str(BLOCK_TCP_TIME_WAIT)
    for node in nodes.values():
        if node.kind != "nat" and node.uplink and node.link.loss and not node.link_netns:
            plan.nft[node.netns] = impairment_rules(node.uplink, node.link.loss)
    ipv6.commands(topo, plan)
    return plan


def _address(topo: Topology, nodes: dict[str, NodePlan], prefix: str) -> None:
    children: dict[str, list[NodePlan]] = {INTERNET: []}
    for server in topo.servers:
        node = nodes[server.name]
        node.addresses = list(server.addresses)
        node.link = server.link
        children[INTERNET].append(node)
    carriers = {n.upstream for n in topo.nats}
    for number, nat in enumerate(topo.nats, start=1):
        node = nodes[nat.name]
        node.link = nat.link
        if number > 250:
            raise LabError(f"topology {topo.name}: at most 250 NATs")
        default = f"100.64.{number}.0/24" if nat.name in carriers else f"10.0.{number}.0/24"
        node.lan = nat.lan or ipaddress.IPv4Network(default)
        node.lan_ip = node.lan.network_address + 1
        children.setdefault(nat.upstream, []).append(node)
        children.setdefault(nat.name, [])
    for host in topo.hosts:
        nodes[host.name].link = host.link
        children[host.behind].append(nodes[host.name])
    public_host = IPv4("203.0.113.50")
    public_nat = IPv4("203.0.113.100")
    for parent, kids in children.items():
        pnode = nodes[parent]
        next_nat = (pnode.lan_ip + 1) if pnode.lan_ip else public_nat
        next_host = (pnode.lan.network_address + 10) if pnode.lan else public_host
        for index, kid in enumerate(kids):
            kid.parent = parent
            kid.parent_port = f"{prefix}-{'u' if parent == INTERNET else 'd'}{index}"
            kid.uplink = f"{prefix}-wan" if kid.kind == "nat" else f"{prefix}-eth0"
            if pnode.lan is not None:
                kid.prefixlen = pnode.lan.prefixlen
                kid.gateway = pnode.lan_ip
            if kid.kind == "server":
                continue
            if kid.kind == "nat":
                kid.addresses = [next_nat]
                next_nat += 1
            else:
                kid.addresses = [next_host]
                next_host += 1
            limit = pnode.lan.broadcast_address if pnode.lan else IPv4("203.0.113.254")
            if kid.addresses[0] >= limit or (
                parent == INTERNET and kid.kind == "host" and kid.addresses[0] >= public_nat
            ):
                raise LabError(f"topology {topo.name}: no address left for {kid.name}")
        if pnode.lan and next_nat > pnode.lan.network_address + 10:
            raise LabError(f"topology {topo.name}: at most 8 NATs behind {parent}")
    for node in nodes.values():
        if node.parent == INTERNET and node.kind != "nat":  # NATs route IPv4 only
            node.addresses6 = [
                ipaddress.IPv6Address(f"2001:db8::{int(a) & 0xFF}") for a in node.addresses
            ]


def _node_commands(plan: Plan, node: NodePlan) -> None:
    p, ns = plan.prefix, node.netns
    lines = ["link set lo up"]
    sysctl = {
        "net/ipv4/ip_forward": "1" if node.kind == "nat" else "0",
        "net/ipv4/conf/all/rp_filter": "0",
        "net/ipv4/conf/default/rp_filter": "0",
        "net/ipv6/conf/all/forwarding": "0",
        "net/ipv6/conf/all/accept_dad": "0",
        "net/ipv6/conf/default/accept_dad": "0",
        "net/ipv6/conf/default/accept_ra": "0",
    }
    if node.kind in ("internet", "nat"):
        bridge = f"{p}-br" if node.kind == "internet" else f"{p}-lan"
        for key in ("iptables", "ip6tables", "arptables"):
            sysctl[f"net/bridge/bridge-nf-call-{key}"] = "0"
        lines.append(f"link set {bridge} up")
        if node.lan_ip is not None and node.lan is not None:
            lines.append(f"addr add {node.lan_ip}/{node.lan.prefixlen} dev {bridge}")
    plan.sysctls[ns] = sysctl
    if node.uplink and node.parent and node.parent_port:
        parent = plan.nodes[node.parent]
        if node.link_netns:
            _forwarded_link(plan, node, parent)
        else:
            plan.link_batch.append(
                f"link add {node.uplink} netns {ns} type veth "
                f"peer name {node.parent_port} netns {parent.netns}"
            )
        bridge = f"{p}-br" if parent.kind == "internet" else f"{p}-lan"
        plan.ns_batch.setdefault(parent.netns, []).extend(
            [f"link set {node.parent_port} master {bridge}", f"link set {node.parent_port} up"]
        )
        for addr in node.addresses:
            lines.append(f"addr add {addr}/{node.prefixlen} dev {node.uplink}")
        for addr6 in node.addresses6:
            lines.append(f"addr add {addr6}/64 dev {node.uplink} nodad")
        lines.append(f"link set {node.uplink} up")
        if node.gateway is not None:
            lines.append(f"route add default via {node.gateway} dev {node.uplink}")
        _impair_tc(plan, node, parent)
    plan.ns_batch.setdefault(ns, [])[:0] = lines


def _forwarded_link(plan: Plan, node: NodePlan, parent: NodePlan) -> None:
    """node uplink <-> dn [forwarder] up <-> parent port, the middle in the link namespace."""
    assert node.link_netns and node.uplink and node.parent_port
    p, ln = plan.prefix, node.link_netns
    plan.link_batch += [
        f"link add {node.uplink} netns {node.netns} type veth peer name {p}-dn netns {ln}",
        f"link add {p}-up netns {ln} type veth peer name {node.parent_port} netns {parent.netns}",
    ]
    # No addresses and no IPv6 in the link namespace: its stack never answers or originates.
    plan.sysctls[ln] = {
        "net/ipv4/ip_forward": "0",
        "net/ipv6/conf/all/disable_ipv6": "1",
        "net/ipv6/conf/default/disable_ipv6": "1",
    }
    plan.ns_batch[ln] = [f"link set {p}-dn up promisc on", f"link set {p}-up up promisc on"]
    plan.forwarders.append(
        ForwarderPlan(node.name, ln, f"{p}-dn", f"{p}-up", link_model(node.link))
    )


def _impair_tc(plan: Plan, node: NodePlan, parent: NodePlan) -> None:
    if node.link.rate:
        for ns, dev in ((node.netns, node.uplink), (parent.netns, node.parent_port)):
            plan.tc_batch.setdefault(ns, []).append(
                f"qdisc add dev {dev} root tbf rate {node.link.rate} burst 32kbit latency 100ms"
            )


def _router_spec(nat: Nat, node: NodePlan, nodes: dict[str, NodePlan], prefix: str) -> RouterRules:
    assert node.uplink and node.lan and node.lan_ip
    clients = [n.addresses[0] for n in nodes.values() if n.parent == nat.name and n.addresses]
    return RouterRules(
        nat=nat,
        wan_if=node.uplink,
        lan_if=f"{prefix}-lan",
        wan_ip=node.addresses[0],
        lan=node.lan,
        clients=tuple(clients),
        loss=0.0 if node.link_netns else node.link.loss,  # a forwarded link drops its own
    )
