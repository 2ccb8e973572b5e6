"""natkit.diag.verdict: the FIELD-NOTES pair table, direct/relay, exit status, advice (pure)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from natkit.diag.evidence import Cgnat, UdpFinding
from natkit.diag.verdict import (
    COMPATIBLE,
    PEER_TYPES,
    RelayStatus,
    StreamStatus,
    decide,
)

FULL, RESTRICTED, PORT, SYM = "full-cone", "restricted-cone", "port-restricted-cone", "symmetric"

# FIELD-NOTES: which pairs punch (both directions must agree).
PUNCHES = (
    {("open", t) for t in PEER_TYPES}
    | {(FULL, t) for t in PEER_TYPES}
    | {(RESTRICTED, t) for t in PEER_TYPES}
    | {
        (PORT, PORT),
    }
)


def punches(a: str, b: str) -> bool:
    return (a, b) in PUNCHES or (b, a) in PUNCHES


@pytest.mark.parametrize(("a", "b"), list(itertools.product(PEER_TYPES, repeat=2)))
def test_pair_table_is_field_notes_and_symmetric(a: str, b: str) -> None:
    assert (b in COMPATIBLE[a]) is punches(a, b)  # type: ignore[index]
    assert (b in COMPATIBLE[a]) is (a in COMPATIBLE[b])  # type: ignore[index]


OK_UDP = RelayStatus("turn:198.51.100.1:3478", "udp", True)
OK_TLS = RelayStatus("turns:198.51.100.1:443", "tls", True)
BAD = RelayStatus("turn:198.51.100.1:3478", "udp", False, "allocate: server answered 401")


# own type → (direct_p2p, relay_required, outcome without a relay, outcome with a working one)
TABLE = {
    "open": ("likely", False, "direct", "direct"),
    FULL: ("likely", False, "direct", "direct"),
    RESTRICTED: ("likely", False, "direct", "direct"),
    PORT: ("peer-dependent", False, "direct", "direct"),
    SYM: ("peer-dependent", False, "no-path", "relay"),
    "unknown": ("peer-dependent", False, "no-path", "relay"),
    "udp-blocked": ("unlikely", True, "no-path", "relay"),
}
EXIT = {"direct": 0, "relay": 1, "no-path": 3, "not-measured": 2}
SAYS = {
    "direct": "Most calls can connect directly.",
    "relay": "Most calls need a relay, and a configured relay works.",
    "no-path": "no working relay is configured: they will fail.",
}
CASES = [(k, r) for k in TABLE for r in ("none", "working", "broken")]


@pytest.mark.parametrize(("kind", "relay"), CASES, ids=[f"{k}-{r}" for k, r in CASES])
def test_exit_status_is_the_outcome_for_every_nat_type(kind: str, relay: str) -> None:
    """The exit status, the JSON verdict (outcome) and the text say the same thing: e.g. a
    symmetric NAT without a working relay exits 3, never 0 ("direct possible")."""
    direct, required, alone, relayed = TABLE[kind]
    udp = kind != "udp-blocked"
    good = OK_UDP if udp else OK_TLS
    relays = {"none": [], "working": [good], "broken": [BAD]}[relay]
    v = decide(kind, udp=udp, relays=relays)  # type: ignore[arg-type]
    expected = relayed if relay == "working" else alone
    assert (v.direct_p2p, v.relay_required, v.outcome) == (direct, required, expected)
    assert v.exit_status == EXIT[expected]
    assert SAYS[expected] in v.explanation
    assert v.actions or expected == "direct"  # something to do unless most calls just work


def test_no_server_is_not_measured_exit_2_and_not_udp_blocked() -> None:
    finding = UdpFinding("no-server", "no STUN server is running at 127.0.0.1:3999 (ICMP)")
    for relays in ([], [OK_TLS]):
        v = decide("unknown", udp=False, relays=relays, finding=finding)
        assert (v.outcome, v.exit_status, v.compatible_peer_types) == ("not-measured", 2, ())
        assert v.explanation.startswith("Nothing could be measured: no STUN server is running")
        assert "blocked" not in v.explanation and "impossible" not in v.explanation
        assert "--stun HOST:PORT" in v.actions[0] and "natkit serve" in v.actions[0]


def test_no_answer_says_blocked_or_down_and_assumes_the_worst() -> None:
    finding = UdpFinding("no-answer", "nothing at all answers from 203.0.113.10:3478")
    v = decide("unknown", udp=False, finding=finding)
    assert (v.outcome, v.exit_status) == ("no-path", 3)
    assert "server is down" in v.explanation and "blocks UDP" in v.explanation
    assert "NAT type is unknown" in v.explanation
    assert decide("unknown", udp=False, finding=finding, relays=[OK_TLS]).exit_status == 1


def test_blocked_names_its_evidence() -> None:
    finding = UdpFinding("blocked", "TCP to 203.0.113.10:3478 reaches a STUN server")
    v = decide("udp-blocked", udp=False, finding=finding)
    assert v.explanation.startswith("UDP is blocked (TCP to 203.0.113.10:3478 reaches")


def test_cgnat_is_said_and_changes_the_advice() -> None:
    carrier = Cgnat(True, "the router at hop 2 answers from 100.64.1.1, in 100.64.0.0/10")
    v = decide(SYM, udp=True, cgnat=carrier)
    assert "carrier-grade NAT: the router at hop 2 answers from 100.64.1.1" in v.explanation
    assert any("ISP" in a for a in v.actions)
    assert not any("If you control the router" in a for a in v.actions)
    assert "carrier-grade" not in decide(SYM, udp=True, cgnat=Cgnat(False)).explanation


def test_symmetric_compatible_types_and_advice() -> None:
    v = decide(SYM, udp=True)
    assert v.compatible_peer_types == ("open", FULL, RESTRICTED)
    assert any("endpoint-independent mapping" in a for a in v.actions)
    assert any("TURN" in a for a in v.actions)


def test_unknown_with_eim_assumes_port_restricted() -> None:
    assert decide("unknown", udp=True, eim_known=True).compatible_peer_types == (
        "open",
        FULL,
        RESTRICTED,
        PORT,
    )


def test_udp_blocked_says_what_to_do_about_443() -> None:
    refused = StreamStatus("tls", "203.0.113.10", 443, connected=False, refused=True)
    v = decide("udp-blocked", udp=False, streams=[refused])
    assert "offer TURN over TLS on 443" in v.actions[0]
    assert "does not listen there" in v.actions[0]
    tls = StreamStatus("tls", "203.0.113.10", 443, connected=True)
    assert "accepts TLS" in decide("udp-blocked", udp=False, streams=[tls]).actions[0]
    v = decide("udp-blocked", udp=False, relays=[OK_TLS])
    assert OK_TLS.url in v.actions[0] and v.relay_working is True


def test_failed_relay_is_named_with_its_error() -> None:
    v = decide(PORT, udp=True, relays=[BAD])
    assert v.relay_working is False
    assert any("401" in a for a in v.actions)


def test_no_hairpin_and_inconsistent_mapping_are_explained() -> None:
    v = decide(PORT, udp=True, hairpinning=False, consistent=False)
    assert any("hairpin" in a for a in v.actions)
    assert any("uplink" in a for a in v.actions)


def test_an_exhausted_port_block_leaves_no_direct_path() -> None:
    from natkit.diag.verdict import with_exhausted_ports

    cone = decide("full-cone", udp=True)  # no TURN configured
    out = with_exhausted_ports(cone)
    assert (out.direct_p2p, out.compatible_peer_types, out.outcome) == ("unlikely", (), "no-path")
    assert out.exit_status == 3 and out.actions[0].startswith("Your NAT refuses new mappings")
    assert "no new UDP mappings" in out.explanation and cone.explanation in out.explanation
    relayed = with_exhausted_ports(replace(cone, relay_working=True))
    assert (relayed.outcome, relayed.exit_status) == ("relay", 1)
