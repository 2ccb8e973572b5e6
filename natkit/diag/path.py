"""What ICMP says about the UDP path to a STUN server: unreachables, and the routers on the way.

A Binding request that gets no answer proves nothing by itself: the server may be down, nothing
may listen on that port, or a firewall may drop UDP. The network often says which. A *connected*
UDP socket with IP_RECVERR (ip(7); Linux, unprivileged) queues every ICMP error about its packets
together with the address of the node that sent it (SO_EE_OFFENDER), so:

    echo   one Binding request per server with the normal TTL: answered; ICMP port unreachable
           from the server itself (RFC 1122 §4.1.3.1: the host is there, nothing listens);
           host/net unreachable or administratively prohibited (RFC 1812 §5.2.7.1) from a
           router or firewall; or silence (something drops it without a word)
    hops   (IPv4, first server) the same request with TTL 1..MAX_HOPS: where the TTL runs out
           the router answers ICMP time exceeded from its own address (RFC 1812 §5.3.1). That is
           how a carrier-grade NAT's inside address (100.64.0.0/10, RFC 6598) shows from behind
           a home router; `natkit.diag.evidence` reads it.

Only the server's own address is ever sent to (the same packets diagnose sends anyway, some with
a short TTL). Nothing here classifies: it records outcomes as data, and never raises for what the
network does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Literal

from natkit.addr import Address
from natkit.stun import Message, StunDecodeError, parse_message
from natkit.stun.constants import MessageClass, Method

__all__ = ["MAX_HOPS", "Echo", "Icmp", "IcmpKind", "PathProbe", "probe_path"]

MAX_HOPS = 6
"""TTLs probed for hops: a carrier's NAT sits within a few hops of the customer."""
IP_RECVERR = 11  # <linux/in.h>; not exported by Python's socket module
IPV6_RECVERR = 25  # <linux/in6.h>
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3
FIRST_RTO = 0.1
MAX_RTO = 0.4
SETTLE = 0.25
"""After the first answer, how long the other probes may still take (at least; 3 RTTs if more)."""

IcmpKind = Literal[
    "port-unreachable",
    "host-unreachable",
    "net-unreachable",
    "prohibited",
    "time-exceeded",
    "other",
]
Outcome = Literal["answered", "icmp", "silent", "error"]

# (type, code) → kind. IPv4: RFC 792 / RFC 1812 §5.2.7.1; IPv6: RFC 4443 §3.1, §3.3.
_V4: dict[tuple[int, int], IcmpKind] = {
    (3, 0): "net-unreachable",
    (3, 1): "host-unreachable",
    (3, 3): "port-unreachable",
    (3, 6): "net-unreachable",
    (3, 7): "host-unreachable",
    (3, 9): "prohibited",
    (3, 10): "prohibited",
    (3, 13): "prohibited",
}
_V6: dict[tuple[int, int], IcmpKind] = {
    (1, 0): "net-unreachable",
    (1, 1): "prohibited",
    (1, 3): "host-unreachable",
    (1, 4): "port-unreachable",
    (1, 5): "prohibited",
    (1, 6): "prohibited",
}


@dataclass(frozen=True, slots=True)
class Icmp:
    """One ICMP error about a probe."""

    kind: IcmpKind
    origin: str
    """The address that sent it: the server itself, or a router/firewall on the way."""
    type: int
    code: int


@dataclass(frozen=True, slots=True)
class Echo:
    """One probe (a Binding request, retransmitted) on its own connected socket."""

    target: Address
    ttl: int | None
    """None: the system's default TTL (an echo); else a hop probe."""
    outcome: Outcome = "silent"
    icmp: Icmp | None = None
    rtt_ms: float | None = None
    error: str | None = None

    @property
    def reached(self) -> bool:
        """The probe got to the server's host (answered, or ICMP from the host itself)."""
        return self.outcome == "answered" or (
            self.icmp is not None and self.icmp.origin == self.target.host
        )


@dataclass(frozen=True, slots=True)
class PathProbe:
    """Everything ICMP said for one address family."""

    family: int
    echoes: tuple[Echo, ...] = ()
    """One per server, in order."""
    hops: tuple[Echo, ...] = ()
    """IPv4: TTL 1..MAX_HOPS towards the first server, up to the first that reached it."""


def _kind(family: int, icmp_type: int, code: int) -> IcmpKind:
    if (family, icmp_type) in ((4, 11), (6, 3)):
        return "time-exceeded"
    return (_V4 if family == 4 else _V6).get((icmp_type, code), "other")


def _offender(data: bytes, family: int) -> str | None:
    """The sockaddr after struct sock_extended_err (16 bytes): SO_EE_OFFENDER."""
    raw = data[16:]
    if family == 4 and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == 6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None


class _Probe:
    """A connected UDP socket with IP_RECVERR: one Binding request until an outcome."""

    def __init__(self, target: Address, ttl: int | None) -> None:
        self.target, self.ttl = target, ttl
        v6 = target.family == 6
        self.sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
            self.sock.setsockopt(level, IPV6_RECVERR if v6 else IP_RECVERR, 1)
            if ttl is not None:
                self.sock.setsockopt(level, socket.IPV6_UNICAST_HOPS if v6 else socket.IP_TTL, ttl)
            self.sock.connect((target.host, target.port))
        except OSError:
            self.sock.close()
            raise
        self.tid = os.urandom(12)
        self.request = Message(Method.BINDING, MessageClass.REQUEST, self.tid).encode()
        self.result: asyncio.Future[Echo] = asyncio.get_running_loop().create_future()
        self.first_sent: float | None = None

    def send(self) -> None:
        self.first_sent = self.first_sent or time.monotonic()
        try:
            self.sock.send(self.request)
        except BlockingIOError:
            pass
        except OSError:  # a pending ICMP error surfaces here too: the error queue says which
            self.readable()

    def readable(self) -> None:
        """Drain the error queue first (it carries the ICMP details), then the answers."""
        while not self.result.done():
            try:
                _, ancdata, _, _ = self.sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            for _, _, data in ancdata:
                self._icmp(data)
        while not self.result.done():
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # sk_err from an ICMP already read from the queue
                continue
            self._answer(data)

    def _icmp(self, data: bytes) -> None:
        if len(data) < 16:
            return
        _, origin, icmp_type, code = struct.unpack_from("=IBBB", data)
        if origin not in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
            return  # a local error (e.g. EMSGSIZE): nothing from the network
        family = self.target.family
        sender = _offender(data, family) or "?"
        icmp = Icmp(_kind(family, icmp_type, code), sender, icmp_type, code)
        self.result.set_result(Echo(self.target, self.ttl, "icmp", icmp, self._rtt()))

    def _answer(self, data: bytes) -> None:
        try:
            message = parse_message(data)
        except StunDecodeError:
            return
        if message.transaction_id == self.tid:
            self.result.set_result(Echo(self.target, self.ttl, "answered", rtt_ms=self._rtt()))

    def _rtt(self) -> float | None:
        if self.first_sent is None:
            return None
        return round((time.monotonic() - self.first_sent) * 1000, 3)

    def outcome(self) -> Echo:
        return self.result.result() if self.result.done() else Echo(self.target, self.ttl)

    def close(self) -> None:
        self.sock.close()


async def probe_path(family: int, servers: list[Address], deadline: float) -> PathProbe:
    """Echo every server and (IPv4) trace the hops to the first, until every probe has an
    outcome, or `SETTLE` after the first answer, or `deadline` (time.monotonic)."""
    if sys.platform != "linux":  # IP_RECVERR/MSG_ERRQUEUE are Linux's: no ICMP evidence here
        unread = "ICMP errors cannot be read on this system"
        return PathProbe(family, tuple(Echo(s, None, "error", error=unread) for s in servers))
    loop = asyncio.get_running_loop()
    plan: list[tuple[Address, int | None]] = [(s, None) for s in servers]
    if family == 4 and servers:
        plan += [(servers[0], ttl) for ttl in range(1, MAX_HOPS + 1)]
    probes: list[_Probe] = []
    failed: list[Echo] = []
    try:
        for target, ttl in plan:
            try:
                probe = _Probe(target, ttl)
            except OSError as err:
                failed.append(Echo(target, ttl, "error", error=err.strerror or str(err)))
                continue
            probes.append(probe)
            loop.add_reader(probe.sock.fileno(), probe.readable)
        await _drive(probes, deadline)
        done = [p.outcome() for p in probes] + failed
    finally:
        for probe in probes:
            with contextlib.suppress(Exception):
                loop.remove_reader(probe.sock.fileno())
            probe.close()
    echoes = tuple(e for e in done if e.ttl is None)
    hops = sorted((e for e in done if e.ttl is not None), key=lambda e: e.ttl or 0)
    reached = next((i for i, e in enumerate(hops) if e.reached), None)
    return PathProbe(family, echoes, tuple(hops if reached is None else hops[: reached + 1]))


async def _drive(probes: list[_Probe], deadline: float) -> None:
    """Send, retransmit (100 ms doubling to 400 ms) and wait; hop probes beyond a TTL that
    already reached the server stop, as they would only reach it too."""
    rto, end = FIRST_RTO, deadline
    for probe in probes:
        probe.send()
    next_send = time.monotonic() + rto
    while True:
        pending = [p for p in probes if not p.result.done() and not _beyond(p, probes)]
        now = time.monotonic()
        if not pending or now >= end:
            return
        if now >= next_send:
            for probe in pending:
                probe.send()
            rto = min(rto * 2, MAX_RTO)
            next_send = now + rto
        wait = max(0.0, min(next_send, end) - now)
        await asyncio.wait(
            {p.result for p in pending}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
        )
        answers = [p.outcome() for p in probes if p.result.done()]
        if answers and end == deadline:
            rtt = max((a.rtt_ms or 0) for a in answers) / 1000
            end = min(deadline, time.monotonic() + max(SETTLE, 3 * rtt))


def _beyond(probe: _Probe, probes: list[_Probe]) -> bool:
    if probe.ttl is None:
        return False
    return any(
        p.ttl is not None and p.ttl < probe.ttl and p.result.done() and p.outcome().reached
        for p in probes
    )
