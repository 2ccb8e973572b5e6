"""`diagnose()`: every probe at once, within one time budget, with progress events.

Time plan (budget B = --timeout, default 3 s):

    0          resolve every STUN/TURN name (bounded by 1 s)
    then, all in parallel:
      UDP probes per family (probes.py): test I must be answered by min(1.5 s, max(B/2, 1 s)),
        else no server answered; the rest is RTT-adaptive and ends ~2 RTTs + one quiet period
        later — past B when the measured RTT needs it (a 600 ms satellite path: ~2.5 s)
      ICMP evidence per family (path.py), bounded like test I: why no server answered (port
        unreachable, prohibited, silence) and the routers on the way (TTL-limited: CGNAT)
      TCP/TLS reachability (streams.py) and ICE gathering (gather.py): each bounded by
        min(2 s, what is left of B)
      TURN checks (turncheck.py): what is left of B, uncapped — a check is several round
        trips to the server, and a high-RTT link (satellite, mobile) must not fail for a cap
      port-mapping protocols offered by the gateway (portmap.py; when asked for): bounded by
        min(0.25 s, what is left of B); with map_port a mapping is made, tested and deleted after
        the rest
    local interfaces: read, not probed

So a reachable setup is done in a few RTTs plus ~0.25 s, and a UDP-blocked one in ~2 s. Whether
"no answer" means "UDP is blocked", "no server there" or "nothing answers at all" is decided at
the end from all the evidence (evidence.py), never from the UDP silence alone. Every
failure becomes a line in `problems` (or in its probe's result); nothing here raises for what
the network or the user's input does, except `ValueError` from `StunSpec.parse` for bad syntax.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from natkit.addr import Address
from natkit.diag.allocation import BURST, Allocation, classify_allocation, probe_allocation
from natkit.diag.classify import CLASSIC_NAMES as _CLASSIC_NAMES
from natkit.diag.classify import Classification, FamilyProbe, classify
from natkit.diag.evidence import Cgnat, UdpFinding, cgnat, udp_finding
from natkit.diag.gather import GatherResult, Interface, gather, interfaces
from natkit.diag.ipv6 import ipv4_less, ipv6_direct, translation
from natkit.diag.lifetime import LifetimeResult, measure_lifetime
from natkit.diag.nat64 import Nat64Result, discover, through
from natkit.diag.path import PathProbe, probe_path
from natkit.diag.portmap import (
    DETECT_TIMEOUT,
    PROTOCOL_NAMES,
    PortMappingProbe,
    detect,
    map_port,
)
from natkit.diag.probes import probe_family
from natkit.diag.streams import StreamProbe, probe_stream
from natkit.diag.turncheck import TurnCheckReport, check_turn
from natkit.diag.verdict import (
    RelayStatus,
    StreamStatus,
    Verdict,
    decide,
    with_exhausted_ports,
    with_port_mapping,
)
from natkit.turn.credentials import mint
from natkit.turn.uri import TurnURI
from natkit.uri import StunURI

__all__ = ["DiagnoseOptions", "Diagnosis", "Progress", "StunSpec", "TurnSpec", "diagnose"]

T = TypeVar("T")
Progress = Callable[[str, str, str], None]
"""progress(step, status, text): status is "start", "ok", "warn" or "fail"."""

STUN_PORT = 3478
RESOLVE_TIMEOUT = 1.0
REACH_WAIT = 1.5
MIN_REACH_WAIT = 1.0
"""Even a 1 s budget waits this long for test I: a satellite round trip (600 ms) must fit."""
MIN_TURN_WAIT = 2.0
"""Even a 1 s budget gives a TURN check and ICE gathering this long: a TURN allocation is two
round trips (1.2 s over a satellite hop); the TURN check stretches itself after that."""
SIDE_WAIT = 2.0
PORT_WAIT = 1.0
MAX_STREAM_PROBES = 16


StunSpec = StunURI
"""A STUN server as given (``stun:HOST[:PORT]`` or ``HOST[:PORT]``); parsed by `natkit.uri`,
the parser the config loader uses too. The name stays for compatibility."""


@dataclass(frozen=True, slots=True)
class TurnSpec:
    uri: TurnURI
    username: str | None = None
    password: str | None = None
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class DiagnoseOptions:
    stun: tuple[StunSpec, ...]
    turn: tuple[TurnSpec, ...] = ()
    timeout: float = 3.0
    """Overall budget in seconds (the lifetime test, when asked for, comes on top)."""
    lifetime: bool = False
    lifetime_max: float = 120.0
    """Longest binding lifetime the --lifetime test looks for, seconds."""
    gather: bool = True
    """Gather ICE candidates with aioice."""
    dns64: str | None = None
    """DNS64 server (IP) to ask for ipv4only.arpa (RFC 7050); None: the system resolver, asked
    only when this host has no IPv4 address (an IPv6-only host, where NAT64 is)."""
    port_burst: int = BURST
    """Fresh sockets for the port allocation test (natkit.diag.allocation); 0: skip it."""
    port_mapping: bool = False
    """Ask the default gateway which of UPnP-IGD, NAT-PMP and PCP it offers (maps nothing)."""
    map_port: bool = False
    """Also map a UDP port through the best offered protocol, test it from the STUN server and
    delete it (implies port_mapping)."""


@dataclass
class Diagnosis:
    """Everything `diagnose` found; `natkit.diag.report` renders it."""

    options: DiagnoseOptions
    duration_s: float = 0.0
    resolved: dict[str, list[Address]] = field(default_factory=dict)
    families: dict[int, FamilyProbe] = field(default_factory=dict)
    classes: dict[int, Classification] = field(default_factory=dict)
    streams: list[StreamProbe] = field(default_factory=list)
    turn: list[TurnCheckReport] = field(default_factory=list)
    gathered: GatherResult | None = None
    interfaces: list[Interface] = field(default_factory=list)
    lifetime: LifetimeResult | None = None
    paths: dict[int, PathProbe] = field(default_factory=dict)
    """What ICMP said (unreachables, TTL-limited hops) per family."""
    finding: UdpFinding | None = None
    """Why no STUN server answered over UDP (None: not decided yet)."""
    cgnat: Cgnat | None = None
    nat64: Nat64Result | None = None
    """RFC 7050 discovery (None: not attempted)."""
    problems: list[str] = field(default_factory=list)
    bad_input: bool = False
    verdict: Verdict | None = None
    allocation: Allocation | None = None
    """How the NAT picks ports (the burst after the RFC 5780 tests); None: not measured."""
    port_mapping: PortMappingProbe | None = None
    """What the gateway offers (None: not asked, or only loopback servers were given)."""

    @property
    def main(self) -> Classification | None:
        """IPv4's classification when IPv4 answered, else IPv6's, else whatever there is."""
        for family in (4, 6):
            c = self.classes.get(family)
            if c is not None and c.udp:
                return c
        return self.classes.get(4) or self.classes.get(6)

    @property
    def exit_status(self) -> int:
        if self.bad_input:
            return 2
        return self.verdict.exit_status if self.verdict else 3


def _quiet(_: str, __: str, ___: str) -> None:
    return None


async def _resolve(spec: StunSpec, kind: int, timeout: float) -> list[Address]:
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(spec.host, spec.port, type=kind), timeout)
    out: list[Address] = []
    for family in (socket.AF_INET, socket.AF_INET6):  # the first address of each family
        first = next((i for i in infos if i[0] == family), None)
        if first is not None:
            out.append(Address(str(first[4][0]), int(first[4][1])))
    return out


class _Run:
    def __init__(self, options: DiagnoseOptions, progress: Progress) -> None:
        self.o, self.progress = options, progress
        self.d = Diagnosis(options)
        self.start = time.monotonic()
        self.deadline = self.start + options.timeout

    def left(self, cap: float = SIDE_WAIT) -> float:
        return max(0.05, min(cap, self.deadline - time.monotonic()))

    async def guarded(self, step: str, aw: Awaitable[T]) -> T | None:
        """Await one probe; an unexpected exception becomes a problem line, not a traceback."""
        try:
            return await aw
        except Exception as err:
            self.d.problems.append(f"{step}: internal error: {type(err).__name__}: {err}")
            self.progress(step, "fail", f"{type(err).__name__}: {err}")
            return None

    async def resolve_all(self) -> None:
        async def one(spec: StunSpec) -> None:
            try:
                found = await _resolve(spec, socket.SOCK_DGRAM, RESOLVE_TIMEOUT)
            except (OSError, TimeoutError) as err:
                reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or err)
                self.d.problems.append(f"{spec}: cannot resolve {spec.host!r}: {reason}")
                self.progress("resolve", "fail", f"{spec}: cannot resolve {spec.host!r}")
                return
            self.d.resolved[str(spec)] = found

        await asyncio.gather(*(one(s) for s in self.o.stun))
        if self.o.stun and not self.d.resolved:
            self.d.bad_input = True

    def servers(self, family: int) -> list[Address]:
        out = []
        for spec in self.o.stun:
            out += [a for a in self.d.resolved.get(str(spec), []) if a.family == family]
        return list(dict.fromkeys(out))

    async def udp(self, family: int) -> None:
        servers = self.servers(family)
        if not servers:
            return
        self.progress(f"udp{family}", "start", f"IPv{family}: RFC 5780 tests via {servers[0]}")
        reach = self.start + min(REACH_WAIT, max(self.o.timeout / 2, MIN_REACH_WAIT))
        probe, self.d.paths[family] = await asyncio.gather(
            probe_family(family, servers, reach_deadline=reach, deadline=self.deadline),
            probe_path(family, servers, reach),
        )
        self.d.families[family] = probe
        c = classify(probe)
        self.d.classes[family] = c
        if probe.error:
            self.progress(f"udp{family}", "warn", f"IPv{family}: {probe.error}")
        elif c.udp:
            text = f"IPv{family}: public {c.public_address}, {c.nat_type}"
            carrier = cgnat(probe.local, c.public_address, self.d.paths[family])
            if family == 4 and carrier.behind:
                text += f"; behind carrier-grade NAT ({carrier.evidence})"
            self.progress(f"udp{family}", "ok", text)
        else:
            icmp = [e.icmp for e in self.d.paths[family].echoes if e.icmp is not None]
            why = f"ICMP {icmp[0].kind} from {icmp[0].origin}" if icmp else "no ICMP error either"
            self.progress(f"udp{family}", "fail", f"IPv{family}: no STUN server answered ({why})")

    def stream_targets(self) -> list[tuple[Literal["tcp", "tls"], Address]]:
        targets: list[tuple[Literal["tcp", "tls"], Address]] = []
        hosts: list[str] = []
        for addrs in self.d.resolved.values():
            for a in addrs:
                targets.append(("tcp", a))
                hosts.append(a.host)
        for spec in self.o.turn:
            uri = spec.uri
            try:
                ip = ipaddress.ip_address(uri.host)
            except ValueError:
                continue  # a name: turncheck resolves and reports it
            hosts.append(str(ip))
            if uri.transport == "tcp":
                targets.append(("tls" if uri.secure else "tcp", Address(str(ip), uri.port)))
        for host in dict.fromkeys(hosts):
            targets += [("tcp", Address(host, 443)), ("tls", Address(host, 443))]
        return list(dict.fromkeys(targets))[:MAX_STREAM_PROBES]

    async def streams(self) -> None:
        targets = self.stream_targets()
        if not targets:
            return
        self.progress("tcp", "start", f"TCP/TLS reachability of {len(targets)} endpoints")
        results = await asyncio.gather(
            *(probe_stream(kind, addr, self.left(1.5)) for kind, addr in targets)
        )
        self.d.streams = list(results)
        ok = sum(1 for r in results if r.answered)
        self.progress(
            "tcp", "ok" if ok else "warn", f"{ok}/{len(results)} TCP/TLS endpoints answer STUN"
        )

    async def turn_one(self, spec: TurnSpec) -> TurnCheckReport:
        self.progress("turn", "start", f"TURN check {spec.uri}")
        report = await check_turn(
            spec.uri,
            username=spec.username,
            password=spec.password,
            secret=spec.secret,
            timeout=max(self.left(cap=self.o.timeout), MIN_TURN_WAIT),
            insecure=True,
        )
        status = "ok" if report.ok else "fail"
        self.progress(
            "turn", status, f"{spec.uri}: " + (report.error or f"relay {report.relayed_address}")
        )
        return report

    async def ice(self) -> None:
        v4 = self.servers(4)
        turn = self.o.turn[0] if self.o.turn else None
        kwargs: dict[str, Any] = {}
        if turn is not None:
            user, password = turn.username, turn.password
            if turn.secret is not None:
                cred = mint(turn.secret, user or "natkit-check", 600, time.time())
                user, password = cred.username, cred.password
            kwargs = dict(
                turn=(turn.uri.host, turn.uri.port),
                turn_username=user,
                turn_password=password,
                turn_transport=turn.uri.transport,
                turn_ssl=turn.uri.secure,
            )
        self.progress("ice", "start", "gathering ICE candidates (aioice)")
        stun = (v4[0].host, v4[0].port) if v4 else None
        wait = max(self.left(), MIN_TURN_WAIT) if turn is not None else self.left()
        self.d.gathered = result = await gather(wait, stun=stun, **kwargs)
        kinds = sorted({c.type for c in result.candidates})
        self.progress(
            "ice",
            "warn" if result.error else "ok",
            f"{len(result.candidates)} candidates ({', '.join(kinds) or 'none'})"
            + (f"; {result.error}" if result.error else ""),
        )

    async def nat64(self) -> None:
        self.progress("nat64", "start", "NAT64 prefix (RFC 7050: ipv4only.arpa AAAA)")
        found = await discover(self.o.dns64, self.left(1.5))
        v4 = self.servers(4)
        if found.prefixes and v4:  # reachable through NAT64? (an IPv6-only host has no other way)
            via = await through(found.prefixes[0], v4[0], time.monotonic() + self.left())
            found = replace(found, ipv4=via)
        self.d.nat64 = found
        if found.error:
            self.progress("nat64", "warn", found.error)
        else:
            shown = ", ".join(str(p) for p in found.prefixes) or "none (no DNS64)"
            self.progress("nat64", "ok", f"NAT64 prefix: {shown}")

    async def run(self) -> Diagnosis:
        self.d.interfaces = interfaces()
        await self.resolve_all()
        jobs: list[Awaitable[Any]] = [
            self.guarded("udp", self.udp(4)),
            self.guarded("udp", self.udp(6)),
            self.guarded("tcp", self.streams()),
        ]
        if self.o.gather:
            jobs.append(self.guarded("ice", self.ice()))
        addresses = [a for i in self.d.interfaces for a in i.addresses]
        if self.o.dns64 is not None or ipv4_less(addresses):
            jobs.append(self.guarded("nat64", self.nat64()))
        if self.o.port_mapping or self.o.map_port:
            jobs.append(self.guarded("portmap", self.port_mapping()))
        turns = [self.guarded("turn", self.turn_one(t)) for t in self.o.turn]
        results = await asyncio.gather(*jobs, *turns)
        self.d.turn = [r for r in results[len(jobs) :] if isinstance(r, TurnCheckReport)]
        if self.o.map_port and self.d.port_mapping is not None:
            await self.guarded("portmap", self.map_port(self.d.port_mapping))
        self.finish()
        if self.o.port_burst:
            await self.guarded("ports", self.port_allocation())
        if self.o.lifetime:
            await self.measure_lifetime()
        self.d.duration_s = round(time.monotonic() - self.start, 3)
        return self.d

    async def port_allocation(self) -> None:
        """The port allocation burst, after everything else so that no other probe takes ports
        in between (allocation.py); bounded by the budget, but at least PORT_WAIT and 4 RTTs."""
        main = self.d.main
        probe = next((p for p in self.d.families.values() if p.reachable), None)
        if main is None or probe is None or probe.primary is None or probe.local is None:
            return
        self.progress("ports", "start", f"port allocation ({self.o.port_burst} fresh sockets)")
        # A long-RTT link (satellite) must not read as refusals: at least a few RTTs.
        rtt = (probe.primary.rtt_ms or 0.0) / 1000
        wait = max(PORT_WAIT, 4 * rtt + 0.25, self.deadline - time.monotonic())
        deadline = time.monotonic() + wait
        samples = await probe_allocation(
            probe.primary.target, probe.local.host, deadline, self.o.port_burst
        )
        self.d.allocation = found = classify_allocation(samples, main.mapping)
        if found.exhausted:
            self.d.problems.append(f"port allocation: {found.explanation}")
            if self.d.verdict is not None:  # the verdict's type is what the probes that got
                # through saw; new calls need new mappings, which this NAT refuses now
                self.d.verdict = with_exhausted_ports(self.d.verdict)
        self.progress("ports", "ok" if found.pattern else "warn", found.explanation)

    async def port_mapping(self) -> None:
        servers = [a for addrs in self.d.resolved.values() for a in addrs]
        if all(a.ip.is_loopback for a in servers):
            # Nothing resolved (bad input) or a loopback test: the machine's real gateway is
            # none of its business.
            return
        self.progress("portmap", "start", "port-mapping protocols of the gateway")
        self.d.port_mapping = probe = await detect(self.left(DETECT_TIMEOUT))
        offered = ", ".join(PROTOCOL_NAMES[p] for p in probe.offered) or "none"
        self.progress("portmap", "ok", f"gateway {probe.gateway or '-'}: port mapping {offered}")

    async def map_port(self, probe: PortMappingProbe) -> None:
        if not probe.offered:
            return
        v4 = self.servers(4)
        self.progress(
            "portmap", "start", f"mapping a UDP port with {PROTOCOL_NAMES[probe.offered[0]]}"
        )
        probe.mapped = m = await map_port(probe, v4[0] if v4 else None)
        if m is not None:
            state = "ok" if m.reachable else "warn"
            self.progress("portmap", state, f"{m.internal} -> {m.external}: {m.evidence}")

    async def measure_lifetime(self) -> None:
        main = self.d.main
        probe = next((p for p in self.d.families.values() if p.reachable), None)
        if main is None or probe is None or probe.primary is None:
            return
        self.progress("lifetime", "start", f"binding lifetime (up to {self.o.lifetime_max:g} s)")
        self.d.lifetime = result = await measure_lifetime(
            probe.primary.target,
            probe.local.host if probe.local else "0.0.0.0",
            self.o.lifetime_max,
        )
        self.progress("lifetime", "ok" if result.error is None else "warn", result.summary())

    def finish(self) -> None:
        main = self.d.main
        for c in self.d.classes.values():
            self.d.problems += [n for n in c.notes if n not in self.d.problems]
        udp_any = any(c.udp for c in self.d.classes.values())
        for f, c in self.d.classes.items():
            if udp_any and not c.udp:
                self.d.problems.append(f"IPv{f}: no STUN server answered over UDP")
        relays = [self.relay_status(r, udp_any) for r in self.d.turn]
        streams = [
            StreamStatus(
                s.transport, s.address.host, s.address.port, s.connected, s.answered, s.refused
            )
            for s in self.d.streams
        ]
        udp = main.udp if main else False
        self.d.finding = self.udp_finding(udp)
        kind = main.nat_type if main and udp else (self.d.finding.nat_type or "unknown")
        if not udp:  # classify() alone would say udp-blocked: the evidence decides (evidence.py)
            for f, c in self.d.classes.items():
                self.d.classes[f] = replace(c, nat_type=kind, classic_type=_CLASSIC_NAMES[kind])
            main = self.d.main
        self.d.cgnat = self.carrier_nat()
        self.d.verdict = decide(
            kind,
            udp=udp,
            eim_known=bool(main and main.mapping == "endpoint-independent"),
            relays=relays,
            streams=streams,
            hairpinning=main.hairpinning if main else None,
            consistent=main.mapping_consistent if main else None,
            finding=self.d.finding,
            cgnat=self.d.cgnat,
            ipv6_direct=self.ipv6_direct(),
            nat64=bool(self.d.nat64 and self.d.nat64.detected),
        )
        pm = self.d.port_mapping
        if pm is not None:
            reachable = pm.mapped.reachable if pm.mapped else None
            self.d.verdict = with_port_mapping(self.d.verdict, pm.offered, reachable, udp=udp)

    def ipv6_direct(self) -> bool | None:
        c6, p6 = self.d.classes.get(6), self.d.families.get(6)
        if c6 is None or p6 is None:
            return None
        return ipv6_direct(c6.udp, translation(p6.local, c6.public_address))

    def carrier_nat(self) -> Cgnat:
        v4, c4 = self.d.families.get(4), self.d.classes.get(4)
        return cgnat(
            v4.local if v4 else None, c4.public_address if c4 else None, self.d.paths.get(4)
        )

    def udp_finding(self, udp: bool) -> UdpFinding:
        """Why no server answered over UDP, from ICMP and TCP evidence (evidence.py)."""
        if udp:
            return UdpFinding("answered", "a STUN server answered over UDP")
        if self.d.bad_input or not self.d.resolved:
            why = "; ".join(self.d.problems) or "no STUN server is configured"
            return UdpFinding("no-server", why)
        echoes = [e for p in self.d.paths.values() for e in p.echoes]
        return udp_finding(echoes, self.d.streams)

    def relay_status(self, r: TurnCheckReport, udp: bool) -> RelayStatus:
        """A relay counts as working after a full round trip. The check's two-allocations method
        tests that over TCP/TLS even where UDP is blocked; only when it had to fall back to a
        peer socket (the server refuses relay-to-relay) can the round trip not be tested from a
        UDP-blocked network, and a TCP/TLS allocation is then the best evidence there is."""
        transport = _turn_transport(r.url)
        allocated = any(s.name == "allocate" and s.ok for s in r.steps)
        fell_back = r.method != "two-allocations"
        if not r.ok and allocated and fell_back and not udp and transport != "udp":
            self.d.problems.append(
                f"{r.url}: allocation over {transport.upper()} works; the relay round trip "
                "cannot be tested from a network that blocks UDP"
            )
            return RelayStatus(str(r.url), transport, True)
        return RelayStatus(str(r.url), transport, r.ok, r.error)


def _turn_transport(url: str) -> Literal["udp", "tcp", "tls"]:
    uri = TurnURI.parse(url)
    return "tls" if uri.secure else uri.transport


async def diagnose(options: DiagnoseOptions, progress: Progress | None = None) -> Diagnosis:
    """Run the whole diagnosis; see the module docstring for the time plan."""
    return await _Run(options, progress or _quiet).run()
