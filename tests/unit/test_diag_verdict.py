"""natkit.diag.verdict: the FIELD-NOTES pair table, direct/relay, exit status, advice (pure)."""

from __future__ import annotations

import itertools

import pytest

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


@pytest.mark.parametrize(
    ("kind", "udp", "relays", "direct", "required", "status"),
    [
        ("open", True, [], "likely", False, 0),
        (FULL, True, [], "likely", False, 0),
        (RESTRICTED, True, [BAD], "likely", False, 0),
        (PORT, True, [], "peer-dependent", False, 0),
        (SYM, True, [OK_UDP], "peer-dependent", False, 0),
        ("unknown", True, [], "peer-dependent", False, 0),
        ("udp-blocked", False, [OK_TLS], "unlikely", True, 1),
        ("udp-blocked", False, [BAD], "unlikely", True, 3),
        ("udp-blocked", False, [], "unlikely", True, 3),
    ],
)
def test_verdict_table(
    kind: str, udp: bool, relays: list[RelayStatus], direct: str, required: bool, status: int
) -> None:
    v = decide(kind, udp=udp, relays=relays)  # type: ignore[arg-type]
    assert (v.direct_p2p, v.relay_required, v.exit_status) == (direct, required, status)
    assert v.explanation and (v.actions or direct == "likely")


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
