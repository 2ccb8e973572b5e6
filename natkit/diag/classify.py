"""Probe results → NAT behaviour: mapping, filtering, classic type. Pure; no sockets, no clock.

RFC 5780 §4.3 (mapping), run on one socket:
  test I   Binding to the primary address P                → mapped M1, OTHER-ADDRESS A
  test II  Binding to (A.ip, P.port)                        → M2; M2 == M1: endpoint-independent
  test III Binding to A (other IP and port)                 → M3; M3 == M2: address-dependent,
                                                              else address-and-port-dependent
RFC 5780 §4.4 (filtering), on a second socket that only ever talked to P:
  test II  CHANGE-REQUEST change-ip + change-port answered  → endpoint-independent
  test III CHANGE-REQUEST change-port answered              → address-dependent, else
                                                              address-and-port-dependent
An answer counts only if it came from the address the change asked for: a server that ignores
CHANGE-REQUEST and answers from P would otherwise fake an open NAT. Anything the tests cannot
establish (no OTHER-ADDRESS, the alternate address silent, a 420) stays None: never guessed.

Classic (RFC 3489) names are derived from the two behaviours: any non endpoint-independent mapping
is "symmetric"; EIM is a cone named after its filtering. Without a NAT (mapped == local) the
filtering decides between "open" and a firewall, which peers experience like the cone with the
same filtering, so nat_type reports that cone and `classic_type` says "UDP firewall".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from natkit.addr import Address

__all__ = [
    "CLASSIC_NAMES",
    "NAT_TYPES",
    "Behaviour",
    "Binding",
    "Classification",
    "FamilyProbe",
    "NatType",
    "classify",
    "filtering_behaviour",
    "mapping_behaviour",
    "mapping_consistent",
    "nat_type",
]

Behaviour = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]
NatType = Literal[
    "open",
    "full-cone",
    "restricted-cone",
    "port-restricted-cone",
    "symmetric",
    "udp-blocked",
    "unknown",
]
NAT_TYPES: tuple[NatType, ...] = get_args(NatType)
EIM: Behaviour = "endpoint-independent"
ADM: Behaviour = "address-dependent"
APDM: Behaviour = "address-and-port-dependent"

_CONE_BY_FILTERING: dict[Behaviour, NatType] = {
    EIM: "full-cone",
    ADM: "restricted-cone",
    APDM: "port-restricted-cone",
}
CLASSIC_NAMES: dict[NatType, str] = {
    "open": "Open Internet",
    "full-cone": "Full Cone",
    "restricted-cone": "Restricted Cone",
    "port-restricted-cone": "Port Restricted Cone",
    "symmetric": "Symmetric NAT",
    "udp-blocked": "UDP Blocked",
    "unknown": "Unknown",
}


@dataclass(frozen=True, slots=True)
class Binding:
    """The outcome of one Binding transaction (answered, silent, or refused with an error)."""

    target: Address
    """Where the request was sent."""
    status: Literal["ok", "timeout", "error"]
    mapped: Address | None = None
    """(XOR-)MAPPED-ADDRESS: this socket as the server saw it."""
    other: Address | None = None
    """OTHER-ADDRESS (RFC 5780) or CHANGED-ADDRESS (RFC 3489): the server's alternate."""
    origin: Address | None = None
    """The UDP source the answer actually came from."""
    rtt_ms: float | None = None
    sends: int = 0
    """Requests sent (1 + retransmissions)."""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True, slots=True)
class FamilyProbe:
    """Everything the UDP probes saw for one address family (4 or 6)."""

    family: int
    local: Address | None = None
    """The mapping socket's own address (a concrete IP)."""
    servers: tuple[Binding, ...] = ()
    """Test I from the mapping socket to every configured server of this family, in order."""
    rfc5780_index: int | None = None
    """Which of `servers` the RFC 5780 tests used (the first answering with OTHER-ADDRESS)."""
    alt_ip: Binding | None = None
    alt_ip_port: Binding | None = None
    filter_primary: Binding | None = None
    change_ip_port: Binding | None = None
    change_port: Binding | None = None
    hairpin: bool | None = None
    """Did a request to our own mapped address come back to us (None: not tested)."""
    error: str | None = None
    """Why the family could not be probed at all (no address or route)."""

    @property
    def primary(self) -> Binding | None:
        if self.rfc5780_index is not None:
            return self.servers[self.rfc5780_index]
        return next((b for b in self.servers if b.ok), None)

    @property
    def reachable(self) -> bool:
        return any(b.ok for b in self.servers)


@dataclass(frozen=True, slots=True)
class Classification:
    """What one family's probes say about the NAT."""

    udp: bool
    behind_nat: bool | None
    mapping: Behaviour | None
    filtering: Behaviour | None
    nat_type: NatType
    classic_type: str
    hairpinning: bool | None
    port_preservation: bool | None
    mapping_consistent: bool | None
    public_address: Address | None
    notes: tuple[str, ...] = ()


def mapping_behaviour(p: FamilyProbe) -> Behaviour | None:
    """RFC 5780 §4.3 from tests I-III; None when a test needed could not be completed."""
    first = p.primary
    if first is None or first.mapped is None or p.alt_ip is None or p.alt_ip.mapped is None:
        return None
    if p.alt_ip.mapped == first.mapped:
        return EIM
    if p.alt_ip_port is None or p.alt_ip_port.mapped is None:
        return None
    return ADM if p.alt_ip_port.mapped == p.alt_ip.mapped else APDM


def _answered_from(b: Binding | None, expected: Address) -> bool | None:
    """True: answered from `expected`; False: silent; None: refused, or from the wrong place."""
    if b is None or b.status == "error":
        return None
    if b.status == "timeout":
        return False
    return True if b.origin == expected else None


def filtering_behaviour(p: FamilyProbe) -> Behaviour | None:
    """RFC 5780 §4.4 from the filtering socket's tests; None when the server cannot say."""
    first = p.filter_primary
    if first is None or not first.ok or first.other is None:
        return None
    primary, other = first.target, first.other
    both = _answered_from(p.change_ip_port, other)
    if both:
        return EIM
    port_only = _answered_from(p.change_port, Address(primary.host, other.port))
    if both is None or port_only is None:
        return None
    return ADM if port_only else APDM


def mapping_consistent(servers: Sequence[Binding]) -> bool | None:
    """Did every server see the same mapped address (None: fewer than two answers)?"""
    mapped = {b.mapped for b in servers if b.ok and b.mapped is not None}
    answered = sum(1 for b in servers if b.ok and b.mapped is not None)
    return None if answered < 2 else len(mapped) == 1


def _varies_by_address(servers: Sequence[Binding]) -> bool:
    """Servers on different IPs saw different mappings: the mapping is not endpoint-independent."""
    seen: dict[str, Address] = {}
    for b in servers:
        if b.ok and b.mapped is not None:
            seen.setdefault(b.target.host, b.mapped)
    return len(seen) >= 2 and len(set(seen.values())) > 1


def nat_type(
    udp: bool,
    behind_nat: bool | None,
    mapping: Behaviour | None,
    filtering: Behaviour | None,
    varies_by_address: bool = False,
) -> NatType:
    """The classic type from the behaviours (see the module docstring)."""
    if not udp:
        return "udp-blocked"
    if behind_nat is False:
        if filtering is None:
            return "unknown"
        return "open" if filtering == EIM else _CONE_BY_FILTERING[filtering]
    if mapping in (ADM, APDM) or (mapping is None and varies_by_address):
        return "symmetric"
    if mapping == EIM and filtering is not None:
        return _CONE_BY_FILTERING[filtering]
    return "unknown"


def _classic_name(kind: NatType, behind_nat: bool | None, filtering: Behaviour | None) -> str:
    if behind_nat is False and filtering is not None and filtering != EIM:
        return "Symmetric UDP Firewall" if filtering == APDM else "Restricted UDP Firewall"
    return CLASSIC_NAMES[kind]


def classify(p: FamilyProbe) -> Classification:
    """Everything `FamilyProbe` establishes, with a note for each thing it could not."""
    notes: list[str] = []
    first = p.primary
    udp = p.reachable
    local, mapped = p.local, first.mapped if first is not None else None
    behind_nat = None if mapped is None or local is None else mapped != local
    mapping = mapping_behaviour(p)
    filtering = filtering_behaviour(p)
    varies = _varies_by_address(p.servers)
    consistent = mapping_consistent(p.servers)
    if udp and first is not None and first.other is None:
        notes.append(
            f"{first.target} gives no OTHER-ADDRESS (no RFC 5780 support): mapping and filtering "
            "behaviour cannot be measured with it"
        )
    elif udp and mapping is None and behind_nat:
        notes.append("the server's alternate address did not answer: mapping behaviour unknown")
    if udp and filtering is None and first is not None and first.other is not None:
        notes.append(_filtering_note(p))
    if mapping == EIM and varies:
        notes.append(
            "RFC 5780 says endpoint-independent, but servers on different IPs saw different "
            "mappings (several uplinks or a NAT pool?)"
        )
    kind = nat_type(udp, behind_nat, mapping, filtering, varies)
    preserved = None if mapped is None or local is None else mapped.port == local.port
    return Classification(
        udp=udp,
        behind_nat=behind_nat,
        mapping=EIM if behind_nat is False else mapping,
        filtering=filtering,
        nat_type=kind,
        classic_type=_classic_name(kind, behind_nat, filtering),
        hairpinning=p.hairpin if behind_nat else None,
        port_preservation=preserved,
        mapping_consistent=consistent,
        public_address=mapped,
        notes=tuple(notes),
    )


def _filtering_note(p: FamilyProbe) -> str:
    for b in (p.change_ip_port, p.change_port):
        if b is not None and b.status == "error":
            return f"the server refused CHANGE-REQUEST ({b.error}): filtering unknown"
        if b is not None and b.ok:
            return (
                f"the server answered a CHANGE-REQUEST from {b.origin}, not from the address "
                "asked for: it ignores CHANGE-REQUEST, filtering unknown"
            )
    return "filtering tests could not run: filtering unknown"
