"""The lab's topology model: typed, frozen data read from YAML, validated with one-line errors.

A topology is an "internet" segment (one bridge: 203.0.113.0/24 and 2001:db8::/64) with servers
on it, NAT routers (each attached to the internet or to the LAN of another NAT, so a home NAT can
sit behind a carrier-grade NAT) and hosts (behind a NAT, or on the internet with a public
address). Each NAT declares its RFC 4787 behaviour; the classic names are aliases:

    full-cone            mapping endpoint-independent,      filtering endpoint-independent
    restricted-cone      mapping endpoint-independent,      filtering address-dependent
    port-restricted-cone mapping endpoint-independent,      filtering address-and-port-dependent
    symmetric            mapping address-and-port-dependent, filtering address-and-port-dependent

YAML (version 1)::

    version: 1
    name: pair-symmetric                       # default: the file name without .yaml
    servers:                                   # default: server with 203.0.113.10 and .11
      server: {addresses: [203.0.113.10, 203.0.113.11]}
    nats:
      nat-a:
        type: symmetric                        # an alias, or mapping/filtering explicitly
        port_preservation: on                  # on | off | blocks (per-host port blocks)
        hairpinning: false
        udp_timeout: 120                       # seconds, mapping lifetime (both clocks)
        udp_timeout_outbound: 30               # a mapping that has seen only outbound packets
                                               # (default: udp_timeout; conntrack's
                                               # nf_conntrack_udp_timeout)
        udp_timeout_established: 180           # one that has seen replies, > 2 s old (default:
                                               # udp_timeout; nf_conntrack_udp_timeout_stream)
        port_allocation: sequential            # preserve (default) | sequential | random: how a
                                               # new mapping's external port is chosen
        port_stride: 2                         # sequential only: consecutive new mappings get
                                               # p, p+2, p+4... (default 1)
        port_block: 8                          # per-subscriber (per LAN address) block of 8
                                               # ports; the 9th concurrent UDP flow of a
                                               # subscriber is dropped (a CGNAT's exhausted block)
                                               # (with preserve or random allocation only)
        firewall: {udp: true, tcp_ports: [80, 443]}   # tcp_ports omitted: all TCP allowed
        upstream: internet                     # or the name of another NAT (nesting)
        lan: 10.0.1.0/24                       # default 10.0.N.0/24 (100.64.N.0/24 for a NAT
                                               # that has NATs behind it)
        link: {loss: 2, rate: 10mbit}          # impairments of the NAT's uplink (below)
        ipv6: firewall                         # none | open | firewall | nptv6 | nat66
                                               # (natkit.lab.ipv6; the NAT must sit on the
                                               # internet)
        ipv6_only: false                       # true: the LAN's hosts have no IPv4
        nat64: false                           # true: NAT64 (tayga) + DNS64 (unbound) in the
                                               # router; needs an ipv6 mode
        port_mapping: {upnp: true, natpmp: true, pcp: false}   # protocols the router offers
                                               # its LAN (miniupnpd); true = all three
    hosts:
      alice: {behind: nat-a, link: {loss: 1}}  # behind: a NAT name, or internet

Port allocation (natkit.lab.portalloc): a symmetric NAT allocates a port per new flow (so with
`sequential` each new destination gets the next port), an endpoint-independent one per new inside
socket (every later flow of the socket reuses its port). `port_allocation` other than preserve
replaces `port_preservation` (giving both is an error); `port_stride` needs sequential.

Link impairments (``link:`` of a server, NAT or host: its uplink, each direction)::

    link:
      delay: 300ms        # one-way, each direction (us, ms, s; at most 10s)
      jitter: 30ms        # uniform in delay ± jitter (<= delay); FIFO: jitter alone never reorders
      loss: 3             # percent of IP packets dropped, each direction (ARP is never dropped)
      reorder: 1          # percent of packets overtaken by the next one (needs delay)
      rate: 10mbit        # tc TBF rate limit
      limit: 10000        # packets held per direction; more are dropped and counted

Delay, jitter and reorder run in a user-space forwarder between two veths in a namespace of the
link's own (no tc netem needed; `natkit.lab.impair` documents the model, `Lab.link_stats` its
counters). Presets ``satellite`` (300 ms each way: 600 ms RTT) and ``lossy-mobile`` (80 ms ±
30 ms, 3% loss each way) put these on a port-restricted NAT's uplink.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from natkit.errors import TopologyError
from natkit.yamlsource import closest, compose, line_of

__all__ = [
    "BEHAVIOURS",
    "IPV6_MODES",
    "NAT_TYPES",
    "PORT_ALLOCATIONS",
    "Firewall",
    "Host",
    "Link",
    "Nat",
    "PortMapping",
    "Server",
    "Topology",
    "seconds",
]

Behaviour = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]
PortPreservation = Literal["on", "off", "blocks"]
Ipv6Mode = Literal["none", "open", "firewall", "nptv6", "nat66"]
IPV6_MODES: tuple[str, ...] = ("none", "open", "firewall", "nptv6", "nat66")
PortAllocation = Literal["preserve", "sequential", "random"]
PORT_ALLOCATIONS: tuple[str, ...] = ("preserve", "sequential", "random")

BEHAVIOURS: tuple[str, ...] = (
    "endpoint-independent",
    "address-dependent",
    "address-and-port-dependent",
)
# Classic (RFC 3489) names → (mapping, filtering).
NAT_TYPES: dict[str, tuple[str, str]] = {
    "full-cone": ("endpoint-independent", "endpoint-independent"),
    "restricted-cone": ("endpoint-independent", "address-dependent"),
    "port-restricted-cone": ("endpoint-independent", "address-and-port-dependent"),
    "symmetric": ("address-and-port-dependent", "address-and-port-dependent"),
}
INTERNET = "internet"
INTERNET_V4 = ipaddress.IPv4Network("203.0.113.0/24")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_RATE = re.compile(r"^\d+(\.\d+)?([kmg]?bit|[kmg]?bps)$")
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$")


@dataclass(frozen=True)
class Link:
    """Impairments of a node's uplink, each applied in both directions.

    Delay, jitter and reordering run through a user-space forwarder on the link (this kernel has
    no netem; `natkit.lab.impair` documents the model): jitter is uniform in ±jitter and does not
    reorder; `reorder` is the share of packets overtaken by the next one. Loss is nftables
    `numgen` on a plain link and the forwarder's on a delayed one; ARP is never delayed or lost.
    """

    loss: float = 0.0
    """Packet loss in percent, 0-100, each direction."""
    rate: str | None = None
    """Rate limit, tc syntax (e.g. "10mbit"), via TBF."""
    delay: str | None = None
    """One-way delay (e.g. "20ms"), each direction."""
    jitter: str | None = None
    """Delay variation (e.g. "5ms"): uniform in [delay - jitter, delay + jitter]."""
    reorder: float = 0.0
    """Percent of packets overtaken by the packet after them (needs a delay)."""
    limit: int = 10000
    """Packets the forwarder holds per direction; more are dropped and counted."""

    @property
    def impaired(self) -> bool:
        return bool(self.loss or self.rate or self.delay or self.jitter or self.reorder)

    @property
    def forwarded(self) -> bool:
        """Whether the link needs the user-space forwarder (anything netem would do)."""
        return bool(self.delay or self.jitter or self.reorder)

    @property
    def delay_s(self) -> float:
        return seconds(self.delay)

    @property
    def jitter_s(self) -> float:
        return seconds(self.jitter)


def seconds(text: str | None) -> float:
    """A validated time ("20ms", "1.5s", "300us") in seconds; None is 0."""
    if text is None:
        return 0.0
    match = _TIME.match(text)
    if match is None:
        raise ValueError(f"not a time: {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[match.group(2)]
    return float(match.group(1)) * scale


@dataclass(frozen=True)
class Firewall:
    """What the NAT lets out (RFC 4787 leaves this to policy; corporate networks restrict it)."""

    udp: bool = True
    """False blocks all outbound UDP (the "udp-blocked" network)."""
    tcp_ports: tuple[int, ...] | None = None
    """Outbound TCP destination ports allowed; None allows every port."""


@dataclass(frozen=True)
class PortMapping:
    """Port-mapping protocols the NAT router offers its LAN (served by miniupnpd)."""

    upnp: bool = False
    """UPnP-IGD: SSDP on 239.255.255.250:1900 and SOAP over HTTP."""
    natpmp: bool = False
    """NAT-PMP (RFC 6886) on UDP 5351."""
    pcp: bool = False
    """PCP (RFC 6887) on UDP 5351."""

    @property
    def enabled(self) -> bool:
        return self.upnp or self.natpmp or self.pcp


@dataclass(frozen=True)
class Nat:
    """A NAT router: its RFC 4787 behaviour and where it is attached."""

    name: str
    mapping: Behaviour = "endpoint-independent"
    filtering: Behaviour = "address-and-port-dependent"
    port_preservation: PortPreservation = "on"
    hairpinning: bool = False
    udp_timeout: int = 120
    firewall: Firewall = field(default_factory=Firewall)
    upstream: str = INTERNET
    lan: ipaddress.IPv4Network | None = None
    link: Link = field(default_factory=Link)
    ipv6: Ipv6Mode = "none"
    """The LAN's IPv6 (natkit.lab.ipv6): none, open, firewall (RFC 6092), nptv6, nat66."""
    ipv6_only: bool = False
    """The LAN's hosts get no IPv4 address (an IPv6-only network)."""
    nat64: bool = False
    """NAT64 (RFC 6146) + DNS64 (RFC 6147) in the router."""
    port_allocation: PortAllocation = "preserve"
    """How a new mapping's external port is chosen (natkit.lab.portalloc)."""
    port_stride: int = 1
    """Sequential allocation: the step between consecutive new mappings' ports."""
    port_block: int | None = None
    """Ports (and concurrent UDP flows) per subscriber; None: no per-subscriber limit."""
    udp_timeout_outbound: int | None = None
    """Lifetime of a mapping that has seen only outbound packets (None: `udp_timeout`)."""
    udp_timeout_established: int | None = None
    """Lifetime of a mapping that has seen replies (None: `udp_timeout`)."""

    @property
    def timeout_outbound(self) -> int:
        return self.udp_timeout if self.udp_timeout_outbound is None else self.udp_timeout_outbound

    @property
    def timeout_established(self) -> int:
        if self.udp_timeout_established is None:
            return self.udp_timeout
        return self.udp_timeout_established

    port_mapping: PortMapping = field(default_factory=PortMapping)


@dataclass(frozen=True)
class Server:
    """A host on the internet segment with one or more public addresses."""

    name: str
    addresses: tuple[ipaddress.IPv4Address, ...]
    link: Link = field(default_factory=Link)


@dataclass(frozen=True)
class Host:
    """A client host behind a NAT (or on the internet when `behind` is "internet")."""

    name: str
    behind: str = INTERNET
    link: Link = field(default_factory=Link)


@dataclass(frozen=True)
class Topology:
    """A whole lab: servers, NATs, hosts. Build it with `natkit.lab.Lab.up`."""

    name: str
    servers: tuple[Server, ...]
    nats: tuple[Nat, ...] = ()
    hosts: tuple[Host, ...] = ()
    description: str = ""

    @classmethod
    def from_yaml(cls, path: str | Path, *, text: str | None = None) -> Topology:
        """Load and validate a topology file; errors are one-line TopologyErrors naming file,
        line and key path (``my.yaml:7: nats.home.type: ...``)."""
        path = Path(path)
        if text is None:
            try:
                text = path.read_text(encoding="utf-8-sig")
            except OSError as err:
                problem = f"cannot read topology: {err.strerror}"
                raise TopologyError(problem, file=str(path)) from err
            except UnicodeDecodeError:
                raise TopologyError("not UTF-8 text", file=str(path)) from None
        root = compose(text, str(path), TopologyError)
        lines = _lines(root, str(path)) if root is not None else {}
        raw = None if root is None else yaml.constructor.SafeConstructor().construct_document(root)
        default_name = path.name.removesuffix(".yaml").removesuffix(".yml")
        return cls.from_dict(raw, source=str(path), default_name=default_name, lines=lines)

    @classmethod
    def from_dict(
        cls,
        raw: Any,
        *,
        source: str = "<topology>",
        default_name: str = "lab",
        lines: dict[str, int] | None = None,
    ) -> Topology:
        """Validate parsed YAML; `lines` maps key paths to their lines (`from_yaml` has them)."""
        return _Reader(source, lines or {}).topology(raw, default_name)

    def node_names(self) -> list[str]:
        return (
            [s.name for s in self.servers]
            + [n.name for n in self.nats]
            + [h.name for h in self.hosts]
        )

    def nat(self, name: str) -> Nat:
        for nat in self.nats:
            if nat.name == name:
                return nat
        raise KeyError(name)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _lines(node: yaml.Node, source: str, path: str = "") -> dict[str, int]:
    """Key path ("nats.home.type", "servers.s.addresses[1]") → the line it is written on."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue  # merged keys (<<: *anchor) are blamed on their mapping's line
            key = _join(path, key_node.value)
            if key in lines:  # PyYAML would silently keep the last one
                problem = f"duplicate key (first given on line {lines[key]})"
                raise TopologyError(problem, file=source, line=line_of(key_node), path=key)
            lines[key] = line_of(key_node)
            lines |= _lines(value_node, source, key)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[f"{path}[{index}]"] = line_of(item)
            lines |= _lines(item, source, f"{path}[{index}]")
    return lines


def _got(value: object) -> str:
    """How an error shows a value the user wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "a mapping"
    return f"a {type(value).__name__}"  # dates, binary: YAML types a topology never takes


class _Reader:
    """Turns parsed YAML into a Topology; every problem is a TopologyError at the line of the key
    it names (the nearest enclosing key's line when that key is not written, e.g. a default)."""

    def __init__(self, source: str, lines: dict[str, int]) -> None:
        self.source = source
        self.lines = lines

    def fail(self, key: str, problem: str) -> TopologyError:
        where = key
        while where and where not in self.lines:
            where = where[: max(where.rfind("."), where.rfind("["), 0)]
        line = self.lines.get(where)
        return TopologyError(problem, file=self.source, line=line, path=key or None)

    def mapping(self, raw: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(key, f"expected a mapping, got {_got(raw)}")
        for k in raw:
            if k not in allowed:
                close = closest(k, allowed)
                hint = f'did you mean "{close}"?' if close else "known keys: " + ", ".join(allowed)
                raise self.fail(_join(key, k), f"unknown key; {hint}")
        return raw

    def topology(self, raw: Any, default_name: str) -> Topology:
        top = self.mapping(raw, "", ("version", "name", "description", "servers", "nats", "hosts"))
        version = top.get("version", 1)
        if version != 1 or isinstance(version, bool):
            raise self.fail("version", f"must be 1, got {_got(version)}")
        name = str(top.get("name", default_name))
        servers_raw = top.get("servers")
        if servers_raw is None:
            servers_raw = {"server": {"addresses": ["203.0.113.10", "203.0.113.11"]}}
        servers = tuple(self.server(n, v) for n, v in self.named(servers_raw, "servers"))
        nats = tuple(self.nat(n, v) for n, v in self.named(top.get("nats"), "nats"))
        hosts = tuple(self.host(n, v) for n, v in self.named(top.get("hosts"), "hosts"))
        topo = Topology(name, servers, nats, hosts, str(top.get("description", "")))
        self.check_graph(topo)
        return topo

    def named(self, raw: Any, key: str) -> list[tuple[str, Any]]:
        items = self.mapping(raw, key, tuple(str(k) for k in (raw or {})))
        out = []
        for name, value in items.items():
            if not isinstance(name, str) or not _NAME.match(name) or name == INTERNET:
                raise self.fail(
                    f"{key}.{name}", "node names are 1-31 of a-z 0-9 - and not 'internet'"
                )
            out.append((name, value))
        return out

    def server(self, name: str, raw: Any) -> Server:
        key = f"servers.{name}"
        d = self.mapping(raw, key, ("addresses", "link"))
        if "addresses" not in d:
            raise self.fail(key, 'missing required key "addresses"')
        addrs_raw = d["addresses"]
        if not isinstance(addrs_raw, list) or not addrs_raw:
            raise self.fail(
                f"{key}.addresses",
                f"expected a list of one or more addresses in {INTERNET_V4}, got {_got(addrs_raw)}",
            )
        addrs = tuple(self.public_ip(a, f"{key}.addresses[{i}]") for i, a in enumerate(addrs_raw))
        return Server(name, addrs, self.link(d.get("link"), f"{key}.link"))

    def public_ip(self, raw: Any, key: str) -> ipaddress.IPv4Address:
        try:
            ip = ipaddress.IPv4Address(str(raw))
        except ValueError as err:
            raise self.fail(key, f"expected an IPv4 address, got {_got(raw)}") from err
        if ip not in INTERNET_V4 or int(ip) & 0xFF in (0, 255):
            raise self.fail(key, f"{ip} is not a host address in {INTERNET_V4}")
        return ip

    def nat(self, name: str, raw: Any) -> Nat:
        key = f"nats.{name}"
        d = self.mapping(
            raw,
            key,
            (
                "type",
                "mapping",
                "filtering",
                "port_preservation",
                "hairpinning",
                "udp_timeout",
                "udp_timeout_outbound",
                "udp_timeout_established",
                "port_allocation",
                "port_stride",
                "port_block",
                "firewall",
                "upstream",
                "lan",
                "link",
                "ipv6",
                "ipv6_only",
                "nat64",
                "port_mapping",
            ),
        )
        mapping, filtering = "endpoint-independent", "address-and-port-dependent"
        if "type" in d:
            mapping, filtering = NAT_TYPES[self.choice(d["type"], tuple(NAT_TYPES), f"{key}.type")]
        # "mapping: symmetric" is a NAT type written where a behaviour belongs.
        types = {t: f'"type: {t}", which sets both mapping and filtering' for t in NAT_TYPES}
        mapping = self.choice(d.get("mapping", mapping), BEHAVIOURS, f"{key}.mapping", types)
        filtering = self.choice(
            d.get("filtering", filtering), BEHAVIOURS, f"{key}.filtering", types
        )
        pp = d.get("port_preservation", "on")
        pp = {True: "on", False: "off"}.get(pp, pp) if isinstance(pp, bool) else pp
        pp = self.choice(pp, ("on", "off", "blocks"), f"{key}.port_preservation")
        hairpin = self.flag(d.get("hairpinning", False), f"{key}.hairpinning")
        timeout = self.whole(d.get("udp_timeout", 120), f"{key}.udp_timeout", 1, 86400, "seconds")
        timeouts = {
            k: None if d.get(k) is None else self.whole(d[k], f"{key}.{k}", 1, 86400, "seconds")
            for k in ("udp_timeout_outbound", "udp_timeout_established")
        }
        alloc = self.choice(
            d.get("port_allocation", "preserve"), PORT_ALLOCATIONS, f"{key}.port_allocation"
        )
        if alloc != "preserve" and pp != "on":
            raise self.fail(
                f"{key}.port_allocation",
                f'port_allocation "{alloc}" replaces port_preservation; remove '
                f'"port_preservation: {pp}"',
            )
        stride = self.whole(d.get("port_stride", 1), f"{key}.port_stride", 1, 1000, "ports")
        if "port_stride" in d and alloc != "sequential":
            problem = 'only with "port_allocation: sequential"'
            raise self.fail(f"{key}.port_stride", problem)
        block = d.get("port_block")
        if block is not None:
            block = self.whole(block, f"{key}.port_block", 1, 4096, "ports")
            if alloc == "sequential" or pp != "on":
                other = (
                    "port_allocation: sequential"
                    if alloc == "sequential"
                    else (f"port_preservation: {pp}")
                )
                problem = f'cannot be combined with "{other}" (a block allocates its own ports)'
                raise self.fail(f"{key}.port_block", problem)
        lan = None
        if d.get("lan") is not None:
            try:
                lan = ipaddress.IPv4Network(str(d["lan"]))
            except ValueError as err:
                problem = f"expected an IPv4 network such as 10.0.1.0/24, got {_got(d['lan'])}"
                raise self.fail(f"{key}.lan", problem) from err
            if lan.num_addresses < 8:
                raise self.fail(f"{key}.lan", "too small (at least a /29)")
        return Nat(
            name,
            cast(Behaviour, mapping),
            cast(Behaviour, filtering),
            cast(PortPreservation, pp),
            hairpin,
            timeout,
            self.firewall(d.get("firewall"), f"{key}.firewall"),
            str(d.get("upstream", INTERNET)),
            lan,
            self.link(d.get("link"), f"{key}.link"),
            *self.ipv6(d, key),
            cast(PortAllocation, alloc),
            stride,
            block,
            timeouts["udp_timeout_outbound"],
            timeouts["udp_timeout_established"],
            self.port_mapping(d.get("port_mapping"), f"{key}.port_mapping"),
        )

    def port_mapping(self, raw: Any, key: str) -> PortMapping:
        if isinstance(raw, bool):  # `port_mapping: true` offers all three
            return PortMapping(raw, raw, raw)
        if raw is not None and not isinstance(raw, dict):
            problem = f"expected true, false or a mapping of upnp/natpmp/pcp, got {_got(raw)}"
            raise self.fail(key, problem)
        d = self.mapping(raw, key, ("upnp", "natpmp", "pcp"))
        return PortMapping(
            *(self.flag(d.get(k, False), f"{key}.{k}") for k in ("upnp", "natpmp", "pcp"))
        )

    def ipv6(self, d: dict[str, Any], key: str) -> tuple[Ipv6Mode, bool, bool]:
        mode = self.choice(d.get("ipv6", "none"), IPV6_MODES, f"{key}.ipv6")
        only = self.flag(d.get("ipv6_only", False), f"{key}.ipv6_only")
        nat64 = self.flag(d.get("nat64", False), f"{key}.nat64")
        for name, on in (("ipv6_only", only), ("nat64", nat64)):
            if on and mode == "none":
                raise self.fail(
                    f"{key}.{name}",
                    "needs IPv6 on the LAN: set ipv6 to open, firewall, nptv6 or nat66",
                )
        if mode != "none" and d.get("upstream", INTERNET) != INTERNET:
            raise self.fail(f"{key}.ipv6", "IPv6 needs a NAT attached to the internet (upstream)")
        return cast(Ipv6Mode, mode), only, nat64

    def whole(self, raw: Any, key: str, low: int, high: int, unit: str) -> int:
        """A whole number in [low, high]; else a one-line error naming the unit."""
        if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
            raise self.fail(key, f"expected whole {unit} {low}-{high}, got {_got(raw)}")
        return raw

    def choice(
        self, raw: Any, allowed: tuple[str, ...], key: str, elsewhere: dict[str, str] | None = None
    ) -> str:
        """`raw` if it is one of `allowed`; else an error with the closest option, or the closest
        key of `elsewhere` (a word that belongs to another key) and its hint."""
        if not isinstance(raw, str) or raw not in allowed:
            close = closest(raw, allowed)
            other = closest(raw, elsewhere or {})
            hint = f' (did you mean "{close}"?)' if close else ""
            if not close and other and elsewhere:
                hint = f" (did you mean {elsewhere[other]}?)"
            options = ", ".join(json.dumps(a) for a in allowed)
            raise self.fail(key, f"expected one of {options}, got {_got(raw)}{hint}")
        return raw

    def flag(self, raw: Any, key: str) -> bool:
        if not isinstance(raw, bool):
            raise self.fail(key, f"expected true or false, got {_got(raw)}")
        return raw

    def firewall(self, raw: Any, key: str) -> Firewall:
        d = self.mapping(raw, key, ("udp", "tcp_ports"))
        udp = self.flag(d.get("udp", True), f"{key}.udp")
        ports = d.get("tcp_ports")
        if ports is not None:
            if not isinstance(ports, list) or not all(
                isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
            ):
                problem = f"expected a list of ports 1-65535, got {_got(ports)}"
                raise self.fail(f"{key}.tcp_ports", problem)
            ports = tuple(ports)
        return Firewall(udp, ports)

    def link(self, raw: Any, key: str) -> Link:
        d = self.mapping(raw, key, ("loss", "rate", "delay", "jitter", "reorder", "limit"))
        loss = self.percent(d.get("loss", 0), f"{key}.loss")
        rate = d.get("rate")
        if rate is not None and not _RATE.match(str(rate)):
            raise self.fail(f"{key}.rate", f"expected a tc rate like 10mbit, got {_got(rate)}")
        for k in ("delay", "jitter"):
            if d.get(k) is not None and not _TIME.match(str(d[k])):
                raise self.fail(f"{key}.{k}", f"expected a time like 20ms, got {_got(d[k])}")
            if d.get(k) is not None and seconds(str(d[k])) > 10:
                raise self.fail(f"{key}.{k}", f"at most 10s, got {_got(d[k])}")
        delay = None if d.get("delay") is None else str(d["delay"])
        jitter = None if d.get("jitter") is None else str(d["jitter"])
        if jitter is not None and seconds(jitter) > seconds(delay):
            problem = f"jitter {jitter} exceeds the delay ({delay or 'none'}): set delay >= jitter"
            raise self.fail(f"{key}.jitter", problem)
        reorder = self.percent(d.get("reorder", 0), f"{key}.reorder")
        if reorder and not seconds(delay):
            problem = "reordering needs a delay (packets overtake while they wait): set delay"
            raise self.fail(f"{key}.reorder", problem)
        limit = d.get("limit", 10000)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1_000_000:
            raise self.fail(f"{key}.limit", f"expected packets 1-1000000, got {_got(limit)}")
        return Link(float(loss), None if rate is None else str(rate), delay, jitter, reorder, limit)

    def percent(self, raw: Any, key: str) -> float:
        if not isinstance(raw, int | float) or isinstance(raw, bool) or not 0 <= raw <= 100:
            raise self.fail(key, f"expected a percentage 0-100, got {_got(raw)}")
        return float(raw)

    def host(self, name: str, raw: Any) -> Host:
        key = f"hosts.{name}"
        d = self.mapping(raw, key, ("behind", "link"))
        return Host(name, str(d.get("behind", INTERNET)), self.link(d.get("link"), f"{key}.link"))

    def check_graph(self, topo: Topology) -> None:
        first: dict[str, str] = {}
        for kind, items in (("servers", topo.servers), ("nats", topo.nats), ("hosts", topo.hosts)):
            for item in items:
                if item.name in first:
                    raise self.fail(
                        f"{kind}.{item.name}", f"name already used by {first[item.name]}"
                    )
                first[item.name] = f"{kind}.{item.name}"
        if not topo.servers:
            raise self.fail("servers", "at least one server is needed")
        for nat in topo.nats:
            self.check_nat(topo, f"nats.{nat.name}.upstream", nat.upstream)
            seen, cur = {nat.name}, nat.upstream
            while cur != INTERNET:
                if cur in seen:
                    raise self.fail(f"nats.{nat.name}.upstream", "NATs are nested in a loop")
                seen.add(cur)
                cur = topo.nat(cur).upstream
        for host in topo.hosts:
            self.check_nat(topo, f"hosts.{host.name}.behind", host.behind)
        used: dict[ipaddress.IPv4Address, str] = {}
        for server in topo.servers:
            for index, addr in enumerate(server.addresses):
                key = f"servers.{server.name}.addresses[{index}]"
                if addr in used:
                    raise self.fail(key, f"{addr} is already used by {used[addr]}")
                used[addr] = key
                if int(addr) & 0xFF >= 50:
                    raise self.fail(
                        key,
                        f"{addr}: server addresses must be below .50 "
                        "(.50-.99 are public hosts, .100+ NAT routers)",
                    )

    def check_nat(self, topo: Topology, key: str, name: str) -> None:
        """`name` (an upstream or a host's `behind`) is "internet" or one of the NATs."""
        nats = [n.name for n in topo.nats]
        if name != INTERNET and name not in nats:
            close = closest(name, [*nats, INTERNET])
            hint = f'did you mean "{close}"?' if close else f"NATs: {', '.join(nats) or 'none'}"
            raise self.fail(key, f'no NAT named "{name}" ({hint}, or "internet")')
