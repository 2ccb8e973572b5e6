"""The verdict: can this machine connect directly, with whom, is a relay needed, what to do. Pure.

Which classic types punch a hole to each other (FIELD-NOTES; research and namespace experiments
agree): full cone and restricted cone connect with every type; port-restricted cone with all but
symmetric; symmetric only with full and restricted cone. "open" (no NAT, no filtering) behaves as
a full cone. UDP blocked on either side: only a relay over TCP/TLS works.

direct_p2p is "likely" when every peer type is compatible, "peer-dependent" when some are,
"unlikely" when none is. The outcome says what most calls will do, and the exit status (the CLI
contract) is the outcome, so the text, the JSON and the exit status cannot disagree:

    direct        0  UDP works and every cone type (the common home routers, up to port-restricted)
                     is compatible: most calls connect directly; only peers behind symmetric NAT
                     need a relay
    relay         1  most calls need a relay (symmetric NAT, an unmeasured NAT assumed at its
                     worst, or UDP blocked), and a configured relay works
    no-path       3  most calls need a relay, and none works (or none is configured)
    not-measured  2  no STUN server is running at the address given (or none resolved): nothing
                     to measure against, so no verdict (direct_p2p then is the worst case,
                     "unlikely", with no compatible type)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from natkit.diag.classify import NatType
from natkit.diag.evidence import Cgnat, UdpFinding

__all__ = [
    "COMPATIBLE",
    "EXIT_STATUS",
    "PEER_TYPES",
    "Outcome",
    "RelayStatus",
    "StreamStatus",
    "Verdict",
    "compatible_peer_types",
    "decide",
    "outcome",
    "with_exhausted_ports",
    "with_port_mapping",
]

Direct = Literal["likely", "peer-dependent", "unlikely"]
Outcome = Literal["direct", "relay", "no-path", "not-measured"]
EXIT_STATUS: dict[Outcome, int] = {"direct": 0, "relay": 1, "no-path": 3, "not-measured": 2}

PEER_TYPES: tuple[NatType, ...] = (
    "open",
    "full-cone",
    "restricted-cone",
    "port-restricted-cone",
    "symmetric",
)
_NOT_SYMMETRIC = PEER_TYPES[:4]
_CONES = PEER_TYPES[:3]
MOST_PEERS: NatType = "port-restricted-cone"
"""Compatible with this type means compatible with most peers: most home routers are
port-restricted cones; only symmetric NATs (mobile, carrier-grade NAT) are worse."""

COMPATIBLE: dict[NatType, tuple[NatType, ...]] = {
    "open": PEER_TYPES,
    "full-cone": PEER_TYPES,
    "restricted-cone": PEER_TYPES,
    "port-restricted-cone": _NOT_SYMMETRIC,
    "symmetric": _CONES,
    "udp-blocked": (),
}
"""Peer NAT types a direct UDP path can be punched to, per own type (peers with UDP)."""


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """One TURN check, as the verdict needs it."""

    url: str
    transport: Literal["udp", "tcp", "tls"]
    ok: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One TCP/TLS reachability probe of a STUN/TURN server."""

    transport: Literal["tcp", "tls"]
    address: str
    port: int
    connected: bool
    answered: bool = False
    """It answered a STUN Binding request over the connection."""
    refused: bool = False
    """Connection refused: the host is reachable but nothing listens there."""


@dataclass(frozen=True, slots=True)
class Verdict:
    direct_p2p: Direct
    relay_required: bool
    relay_working: bool | None
    """Some configured TURN server completed a relay round trip (None: none configured)."""
    compatible_peer_types: tuple[NatType, ...]
    explanation: str
    actions: tuple[str, ...] = field(default=())
    """What to do, in plain words, most important first."""
    exit_status: int = 0
    outcome: Outcome = "direct"
    """What most calls will do; `exit_status` is EXIT_STATUS[outcome]."""
    ipv6_direct: bool | None = None
    """Direct over IPv6 works with peers whose IPv6 is untranslated too (None: no IPv6)."""
    port_mapping_peer_types: tuple[NatType, ...] = ()
    """Peer types an application that maps its port through the gateway (PCP, NAT-PMP, UPnP)
    connects to directly; empty when the gateway offers none (see `with_port_mapping`)."""


def compatible_peer_types(kind: NatType, *, eim_known: bool = False) -> tuple[NatType, ...]:
    """Peer types reachable directly. For "unknown" assume the worst the evidence allows: with an
    endpoint-independent mapping at least a port-restricted cone, otherwise possibly symmetric."""
    if kind == "unknown":
        return _NOT_SYMMETRIC if eim_known else _CONES
    return COMPATIBLE[kind]


def _direct(compatible: Sequence[NatType]) -> Direct:
    if len(compatible) == len(PEER_TYPES):
        return "likely"
    return "peer-dependent" if compatible else "unlikely"


def _relay_line(relays: Sequence[RelayStatus]) -> tuple[bool | None, str]:
    if not relays:
        return None, "No TURN server is configured."
    good = [r for r in relays if r.ok]
    if good:
        return True, f"The relay {good[0].url} works."
    return False, f"No configured relay works ({relays[0].url}: {relays[0].error or 'failed'})."


def _blocked_actions(relays: Sequence[RelayStatus], streams: Sequence[StreamStatus]) -> list[str]:
    good = [r for r in relays if r.ok and r.transport != "udp"]
    if good:
        return [f"Use TURN over {good[0].transport.upper()}: {good[0].url} works from here."]
    actions = []
    on443 = [s for s in streams if s.port == 443]
    if any(s.connected and s.transport == "tls" for s in on443):
        s = next(s for s in on443 if s.connected and s.transport == "tls")
        actions.append(
            f"{s.address}:443 accepts TLS: configure TURN over TLS there (turns:HOST:443) and "
            "give clients that URL."
        )
    elif any(s.refused for s in on443):
        s = next(s for s in on443 if s.refused)
        actions.append(
            f"UDP is blocked: offer TURN over TLS on 443 — your server {s.address} does not "
            "listen there (connection refused)."
        )
    elif on443:
        actions.append(
            "UDP is blocked and port 443 of your servers is filtered too: ask the network admin "
            "to allow UDP (or TCP 443 to the TURN server)."
        )
    else:
        actions.append("UDP is blocked: offer TURN over TLS on port 443 (turns:HOST:443).")
    actions.append("Or ask the network admin to allow outbound UDP (3478 and 49152-65535).")
    return actions


def outcome(
    compatible: Sequence[NatType], *, udp: bool, relay_ok: bool | None, measured: bool = True
) -> Outcome:
    """What most calls will do (module docstring): the exit status follows from it."""
    if not measured:
        return "not-measured"
    if udp and MOST_PEERS in compatible:
        return "direct"
    return "relay" if relay_ok else "no-path"


_OUTCOME_TEXT: dict[Outcome, str] = {
    "direct": "Most calls can connect directly.",
    "relay": "Most calls need a relay, and a configured relay works.",
    "no-path": "Most calls need a relay, and no working relay is configured: they will fail.",
    "not-measured": "There is no verdict until diagnose can probe a STUN server.",
}


def _not_measured(finding: UdpFinding | None) -> tuple[str, list[str]]:
    evidence = finding.evidence if finding else "no STUN server could be probed"
    text = f"Nothing could be measured: {evidence}."
    return text, [
        "Point diagnose at a running STUN server: natkit diagnose --stun HOST:PORT (or start "
        "one on a host with a public address: natkit serve).",
    ]


def _no_udp(
    finding: UdpFinding | None, relays: Sequence[RelayStatus], streams: Sequence[StreamStatus]
) -> tuple[str, list[str]]:
    if finding is not None and finding.finding == "no-answer":
        text = (
            f"No STUN server answered: {finding.evidence}. Either the server is down or "
            "unreachable, or your network blocks UDP: the NAT type is unknown. Until a server "
            "answers, assume the worst: only a TURN relay over TCP or TLS is known to work."
        )
        actions = [
            "Check that the STUN server runs (try it from another network), or point diagnose "
            "at another one: natkit diagnose --stun HOST:PORT."
        ]
        return text, actions + _blocked_actions(relays, streams)
    why = f" ({finding.evidence})" if finding is not None and finding.evidence else ""
    text = (
        f"UDP is blocked{why}: no STUN server answered over UDP, so a direct connection is "
        "impossible. Only a TURN relay over TCP or TLS can carry the call."
    )
    return text, _blocked_actions(relays, streams)


def _with_udp(
    kind: NatType, compatible: Sequence[NatType], relay_ok: bool | None, carrier: bool
) -> tuple[str, list[str]]:
    actions: list[str] = []
    names = ", ".join(compatible)
    if _direct(compatible) == "likely":
        text = f"Your NAT ({kind}) lets peers behind any NAT type connect directly."
        if relay_ok is not True:
            actions.append(
                "Keep a TURN relay as a fallback for peers whose own network blocks UDP."
            )
        return text, actions
    if kind == "symmetric":
        text = (
            "Your NAT is symmetric: it uses a new public port for every destination, so a "
            f"direct connection works only with peers behind: {names}. Most home routers "
            "are port-restricted, so most calls will need a TURN relay."
        )
        if carrier:
            actions.append(
                "Behind carrier-grade NAT your own router's settings cannot make the mapping "
                "endpoint-independent: ask your ISP for a public IPv4 address, or use IPv6."
            )
        else:
            actions.append(
                "If you control the router: enable endpoint-independent mapping (often "
                '"full-cone"/"consistent NAT" or turning off "port randomization"), or UPnP/PCP.'
            )
    elif kind == "unknown":
        text = (
            "The NAT type could not be fully measured (see the notes); assuming the worst "
            f"the evidence allows, direct connections work with peers behind: {names}."
        )
        actions.append(
            "Probe a STUN server with RFC 5780 support (OTHER-ADDRESS), e.g. "
            "natkit serve with stun.alternate set."
        )
    else:
        text = (
            f"Your NAT is a {kind}: direct connections work with peers behind: {names}; "
            "peers behind a symmetric NAT (common on mobile and carrier-grade NAT) need "
            "a relay."
        )
    if relay_ok is not True:
        actions.insert(
            0,
            "Configure a working TURN relay for the peers that cannot connect "
            "directly (--turn turn:HOST:3478 with credentials).",
        )
    return text, actions


def _cgnat_text(cgnat: Cgnat | None) -> str:
    if cgnat is None or not cgnat.behind:
        return ""
    return (
        f" You are behind carrier-grade NAT: {cgnat.evidence}. The behaviour above is that of "
        "the whole chain of NATs, and port forwarding on your own router cannot open it."
    )


def decide(
    kind: NatType,
    *,
    udp: bool,
    eim_known: bool = False,
    relays: Sequence[RelayStatus] = (),
    streams: Sequence[StreamStatus] = (),
    hairpinning: bool | None = None,
    consistent: bool | None = None,
    finding: UdpFinding | None = None,
    cgnat: Cgnat | None = None,
    ipv6_direct: bool | None = None,
    nat64: bool = False,
) -> Verdict:
    """The verdict for this machine from its NAT type, the UDP finding (why no server answered,
    when none did), carrier-grade NAT and the relay/stream checks."""
    measured = finding is None or finding.finding != "no-server"
    compatible = compatible_peer_types(kind, eim_known=eim_known) if udp and measured else ()
    direct = _direct(compatible)
    relay_ok, relay_text = _relay_line(relays)
    if not measured:
        relay_text = relay_text if relays else ""
        text, actions = _not_measured(finding)
    elif not udp:
        text, actions = _no_udp(finding, relays, streams)
    else:
        text, actions = _with_udp(kind, compatible, relay_ok, bool(cgnat and cgnat.behind))
    for r in relays:
        if not r.ok:
            actions.append(f"Fix {r.url}: {r.error or 'the check failed'}.")
    if hairpinning is False:
        actions.append(
            "Your NAT does not hairpin: two devices behind it reach each other only via their "
            "local addresses (fine on one LAN; across VLANs/guest Wi-Fi they need the relay)."
        )
    if consistent is False:
        actions.append(
            "Different servers saw different public addresses: traffic may leave through more "
            "than one uplink or NAT address; peers may see an address that does not work."
        )
    result = outcome(compatible, udp=udp, relay_ok=relay_ok, measured=measured)
    if ipv6_direct and measured:
        text += " " + _ipv6_text(compatible, nat64)
    return Verdict(
        direct_p2p=direct,
        relay_required=direct == "unlikely",
        relay_working=relay_ok,
        compatible_peer_types=compatible,
        explanation=" ".join(
            t for t in (text + _cgnat_text(cgnat), relay_text, _OUTCOME_TEXT[result]) if t
        ),
        actions=tuple(actions),
        exit_status=EXIT_STATUS[result],
        outcome=result,
        ipv6_direct=ipv6_direct if measured else None,
    )


def _ipv6_text(compatible: Sequence[NatType], nat64: bool) -> str:
    """IPv6 without translation connects directly to every peer with the same, whatever IPv4
    needs (natkit.diag.ipv6): ICE pairs the two host candidates and the outbound checks open a
    stateful firewall on both sides."""
    if MOST_PEERS not in compatible:
        lead = "Over IPv6, though, your address is not translated: "
        tail = " — even though over IPv4 most calls need a TURN relay."
    else:
        lead, tail = "Over IPv6 your address is not translated: ", "."
    via = " IPv4-only servers are reached through NAT64." if nat64 else ""
    return f"{lead}direct connections work with every peer that has untranslated IPv6{tail}{via}"


def with_exhausted_ports(verdict: Verdict) -> Verdict:
    """`verdict` for a NAT that refused every new mapping of the allocation burst (a
    carrier-grade NAT's port block used up). The NAT type is what the earlier probes saw, but a
    new call needs new UDP mappings: no direct path with anyone, so calls relay where a relay
    worked (TURN over TCP/TLS has ports of its own) and fail where none did."""
    if verdict.outcome == "not-measured":
        return verdict
    explanation = (
        "Your NAT makes no new UDP mappings right now (a carrier-grade NAT's port block is used "
        "up): new calls cannot connect directly with anyone and need a TURN relay over TCP or "
        f"TLS until other flows end. Otherwise: {verdict.explanation}"
    )
    action = (
        "Your NAT refuses new mappings (a carrier-grade NAT's port block in use by other "
        "flows?): close idle connections, or use a TURN relay over TCP/TLS"
    )
    outcome: Outcome = "relay" if verdict.relay_working else "no-path"
    return replace(
        verdict,
        direct_p2p="unlikely",
        compatible_peer_types=(),
        explanation=explanation,
        actions=(action, *verdict.actions),
        outcome=outcome,
        exit_status=EXIT_STATUS[outcome],
    )


_PM_NAMES = {"pcp": "PCP", "natpmp": "NAT-PMP", "upnp": "UPnP-IGD"}


def with_port_mapping(
    verdict: Verdict, offered: Sequence[str], reachable: bool | None, *, udp: bool
) -> Verdict:
    """`verdict` extended for a gateway that offers port mapping. A mapped port is endpoint-
    independent both ways (the gateway forwards every packet to it), so an application that maps
    its port is reachable like a full cone: every peer type with UDP connects directly. Not when
    a test mapping was shown unreachable (another NAT in front, or a firewall)."""
    if not offered or not udp or reachable is False:
        return verdict
    names = "/".join(_PM_NAMES.get(p, p) for p in offered)
    action = (
        f"Your gateway offers {names}: applications that map their port (natkit p2p --map-port, "
        "most games and WebRTC apps with UPnP/PCP support) connect directly with peers behind "
        "any NAT type."
    )
    return replace(verdict, port_mapping_peer_types=PEER_TYPES, actions=(*verdict.actions, action))
