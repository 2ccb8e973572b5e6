"""The whole NAT matrix (`matrix-extended`, 15 peers, 105 pairs) with real WebRTC peers (root).

The classic NAT types side by side with the networks of issue 16: an IPv6-only LAN with NAT64,
NPTv6, global IPv6 behind an RFC 6092 firewall, a sequential allocator, a symmetric NAT whose
router offers UPnP/NAT-PMP/PCP, a CGNAT whose port block is used up, and same-type pairs.
Diagnose's prediction must hold for every pair, and every pair must connect, directly or through
TURN, except where the IPv6-only peer cannot relay (aiortc's TURN URLs take no IPv6 literal:
`natkit.p2p.ipv6.NO_RELAY`).
"""

from __future__ import annotations

import pytest

from natkit.p2p.matrix import PairRecord

pytestmark = [pytest.mark.netns, pytest.mark.slow]

V6ONLY = "peer-v6only"
# Pairs whose direct outcome shows one new type's effect: pair → direct expected.
EFFECTS = {
    # the mapped port makes a symmetric NAT reachable like a full cone
    frozenset({"peer-upnp-symmetric", "peer-symmetric"}): True,
    frozenset({"peer-symmetric", "peer-symmetric-b"}): False,
    frozenset({"peer-port-restricted-cone", "peer-port-restricted-cone-b"}): True,
    # untranslated IPv6 on both sides: direct whatever IPv4 does
    frozenset({"peer-ipv6-firewall", V6ONLY}): True,
    frozenset({"peer-open", V6ONLY}): True,
    # NPTv6 offers no IPv6 candidate; its IPv4 is a port-restricted cone
    frozenset({"peer-nptv6", V6ONLY}): False,
    frozenset({"peer-nptv6", "peer-ipv6-firewall"}): False,
    # a sequential allocator is still symmetric to ICE (no port prediction)
    frozenset({"peer-sequential", "peer-full-cone"}): True,
    frozenset({"peer-sequential", "peer-port-restricted-cone"}): False,
    frozenset({"peer-cgnat-exhausted", "peer-open"}): False,
}


@pytest.fixture(scope="module")
def matrix(extended_matrix: list[PairRecord]) -> list[PairRecord]:
    return extended_matrix  # tests/netns/conftest.py: one run serves the matrix tests


def test_every_prediction_holds(matrix: list[PairRecord]) -> None:
    assert len(matrix) == 105
    assert [(r.a, r.b, r.direct, r.direct_error) for r in matrix if r.held is not True] == []


def test_every_pair_connects_but_where_the_ipv6_only_peer_cannot_relay(
    matrix: list[PairRecord],
) -> None:
    unconnected = [r for r in matrix if not (r.direct or r.relay)]
    assert all(V6ONLY in (r.a, r.b) for r in unconnected), [(r.a, r.b) for r in unconnected]
    assert all((r.relay_error or "").startswith("relay not run") for r in unconnected)
    v4 = [r for r in matrix if V6ONLY not in (r.a, r.b)]
    assert [(r.a, r.b, r.relay_error) for r in v4 if not r.relay] == []


def test_the_new_types_show_their_effect(matrix: list[PairRecord]) -> None:
    got = {frozenset({r.a, r.b}): r for r in matrix}
    assert {p: got[p].direct for p in EFFECTS} == EFFECTS
    mapped = {n for r in matrix for n, m in ((r.a, r.a_mapped), (r.b, r.b_mapped)) if m}
    exhausted = {n for r in matrix for n in r.exhausted}
    assert (mapped, exhausted) == ({"peer-upnp-symmetric"}, {"peer-cgnat-exhausted"})
    v6 = {n for r in matrix for n, d in ((r.a, r.a_ipv6_direct), (r.b, r.b_ipv6_direct)) if d}
    assert v6 == {"peer-open", "peer-ipv6-firewall", V6ONLY}
    ipv6_pair = got[frozenset({"peer-ipv6-firewall", V6ONLY})]
    assert ipv6_pair.selected is not None and "2001:db8:" in ipv6_pair.selected
    for r in matrix:  # the used-up block: TURN over TCP only
        if "peer-cgnat-exhausted" in (r.a, r.b) and V6ONLY not in (r.a, r.b):
            assert r.selected is not None and r.selected.startswith("relay: "), r
