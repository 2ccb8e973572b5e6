"""Reading the evidence: why no STUN server answered over UDP, and is there a carrier-grade NAT.

Pure: outcomes in (`natkit.diag.path` echoes and hops, `natkit.diag.streams` probes, addresses),
a finding and one plain sentence out.

No UDP answer. "No server answered" and "UDP is blocked" are different findings, told apart by
what else came back, strongest evidence first:

    1 ICMP port unreachable from the server's own address   no-server  (UDP reaches the host,
                                                                        nothing listens there)
    2 ICMP administratively prohibited, or port unreachable
      sent by someone else than the server (a REJECT rule)  blocked    (a firewall says so)
    3 TCP/TLS to the server answers STUN, UDP does not      blocked    (the server runs; only
                                                                        UDP cannot reach it)
    4 TCP to the STUN address itself is refused             no-server
    5 ICMP host/net unreachable                             no-server  (no such host / route)
    6 silence from a host that answers TCP on another port  blocked    (a live host does not
                                                                        drop UDP by itself:
                                                                        a filter does)
    7 silence everywhere (no answer, no ICMP, no TCP)       no-answer  (server down, or your
                                                                        network blocks it)

no-server and no-answer leave the NAT type `unknown`; blocked makes it `udp-blocked`.

CGNAT. A carrier-grade NAT uses the shared address space 100.64.0.0/10 (RFC 6598) inside. It is
visible from here when this host's own address is in it (the host sits directly on the carrier's
network), when a router on the way answers a TTL-limited probe from it (the carrier's NAT behind
the home router), or when the STUN server saw a shared address (the server is inside the
carrier's network). `cgnat` is False only when every hop up to the server answered and none is
shared space; a carrier NAT that uses other private space inside is not told apart from an ISP
router.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from natkit.addr import Address
from natkit.diag.path import Echo, PathProbe
from natkit.diag.streams import StreamProbe

__all__ = ["SHARED", "Cgnat", "UdpFinding", "cgnat", "udp_finding"]

SHARED = ipaddress.ip_network("100.64.0.0/10")
Finding = Literal["answered", "blocked", "no-server", "no-answer"]


@dataclass(frozen=True, slots=True)
class UdpFinding:
    finding: Finding
    evidence: str
    """One sentence: what came back, from where."""

    @property
    def nat_type(self) -> Literal["udp-blocked", "unknown"] | None:
        """The NAT type this finding establishes (None: the UDP probes classify)."""
        if self.finding == "answered":
            return None
        return "udp-blocked" if self.finding == "blocked" else "unknown"


def _silent(echoes: Sequence[Echo]) -> list[Echo]:
    return [e for e in echoes if e.outcome != "answered"]


def udp_finding(echoes: Sequence[Echo], streams: Sequence[StreamProbe]) -> UdpFinding:
    """The finding for servers none of which answered over UDP (see the module docstring)."""
    tried = _silent(echoes)
    if len(tried) < len(echoes):
        return UdpFinding("answered", "a STUN server answered over UDP")
    icmp = [e for e in tried if e.icmp is not None]
    for e in icmp:
        if e.icmp and e.icmp.kind == "port-unreachable" and e.icmp.origin == e.target.host:
            return UdpFinding(
                "no-server",
                f"no STUN server is running at {e.target} (the host answered ICMP port "
                "unreachable: nothing listens on that UDP port)",
            )
    for e in icmp:
        if e.icmp and e.icmp.kind in ("prohibited", "port-unreachable"):
            return UdpFinding(
                "blocked",
                f"{e.icmp.origin} rejects UDP to {e.target} (ICMP {e.icmp.kind})",
            )
    for s in streams:
        for e in tried:
            if s.answered and s.address.host == e.target.host:
                return UdpFinding(
                    "blocked",
                    f"{s.transport.upper()} to {s.address} reaches a STUN server, "
                    f"UDP to {e.target} gets no answer",
                )
    for s in streams:
        if s.transport == "tcp" and s.refused and any(s.address == e.target for e in tried):
            return UdpFinding(
                "no-server",
                f"no STUN server is running at {s.address} (no answer over UDP, TCP "
                "connection refused)",
            )
    for e in icmp:
        if e.icmp and e.icmp.kind in ("host-unreachable", "net-unreachable"):
            return UdpFinding(
                "no-server",
                f"no STUN server can be reached at {e.target} ({e.icmp.origin} answered "
                f"ICMP {e.icmp.kind})",
            )
    for s in streams:
        for e in tried:
            if (s.connected or s.refused) and s.address.host == e.target.host:
                return UdpFinding(
                    "blocked",
                    f"UDP to {e.target} gets no answer and no ICMP error, while "
                    f"{s.address.host} answers TCP on port {s.address.port}: a firewall drops "
                    "UDP on the way (most likely on your network)",
                )
    where = ", ".join(str(e.target) for e in tried) or "the STUN servers"
    return UdpFinding(
        "no-answer",
        f"nothing at all answers from {where} (no UDP answer, no ICMP error, no TCP answer)",
    )


@dataclass(frozen=True, slots=True)
class Cgnat:
    behind: bool | None
    """True: a carrier-grade NAT is visible; False: the whole path answered, none seen."""
    evidence: str | None = None


def _shared(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host) in SHARED
    except ValueError:
        return False


def cgnat(local: Address | None, public: Address | None, path: PathProbe | None) -> Cgnat:
    """Is this host behind carrier-grade NAT (IPv4; see the module docstring)?"""
    if local is not None and _shared(local.host) and not (public and _shared(public.host)):
        return Cgnat(
            True,
            f"this host's own address {local.host} is in 100.64.0.0/10 (RFC 6598 shared "
            "address space): it sits directly on a carrier-grade NAT",
        )
    hops = path.hops if path is not None else ()
    for hop in hops:
        if hop.icmp is not None and hop.icmp.kind == "time-exceeded" and _shared(hop.icmp.origin):
            return Cgnat(
                True,
                f"the router at hop {hop.ttl} answers from {hop.icmp.origin}, in the "
                "carrier-grade NAT range 100.64.0.0/10 (RFC 6598)",
            )
    if public is not None and _shared(public.host):
        return Cgnat(
            True,
            f"the STUN server saw this host as {public.host}, in 100.64.0.0/10: the server is "
            "inside the carrier's network, and a carrier-grade NAT lies beyond it",
        )
    if hops and hops[-1].reached and all(h.reached or h.icmp is not None for h in hops):
        return Cgnat(False)
    return Cgnat(None)
