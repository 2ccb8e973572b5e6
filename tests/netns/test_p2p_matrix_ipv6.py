"""The IPv6 matrix (`matrix-ipv6` preset) with real WebRTC peers: predictions hold for every pair.

Expected: the two peers behind symmetric IPv4 NATs with RFC 6092-firewalled global IPv6 connect
directly (over IPv6) although IPv4 alone would need TURN; the IPv6-only peer connects directly
over IPv6 to every peer with untranslated IPv6; the NPTv6 peer's translated IPv6 is no ICE
candidate, so it connects directly only where IPv4 allows (the open peer).
"""

from __future__ import annotations

import time

import pytest

from natkit.p2p.matrix import PairRecord, render_table, run_matrix

pytestmark = [pytest.mark.netns, pytest.mark.slow]

# peer → (diagnose nat_type, verdict.ipv6_direct)
PEERS = {
    "peer-fw-a": ("symmetric", True),
    "peer-fw-b": ("symmetric", True),
    "peer-nptv6": ("port-restricted-cone", False),
    "peer-v6only": ("port-restricted-cone", True),  # its IPv6 firewall is its only family
    "peer-open": ("open", True),
}
NO_DIRECT = {
    frozenset({"peer-fw-a", "peer-nptv6"}),
    frozenset({"peer-fw-b", "peer-nptv6"}),
    frozenset({"peer-nptv6", "peer-v6only"}),
}


@pytest.fixture(scope="module")
def matrix() -> list[PairRecord]:
    from natkit.lab.netlink import check_privileges

    check_privileges()
    started = time.monotonic()
    records = run_matrix("matrix-ipv6", concurrency=6, timeout=10.0)
    print(render_table(records))
    assert time.monotonic() - started < 120, "the IPv6 matrix must stay under 2 minutes"
    return records


def test_diagnose_measured_both_families(matrix: list[PairRecord]) -> None:
    assert len(matrix) == 10
    for r in matrix:
        assert (r.a_type, r.a_ipv6_direct) == PEERS[r.a], r
        assert (r.b_type, r.b_ipv6_direct) == PEERS[r.b], r


def test_direct_outcomes_and_predictions_hold_for_every_pair(matrix: list[PairRecord]) -> None:
    got = {frozenset({r.a, r.b}): r.direct for r in matrix}
    assert {pair for pair, ok in got.items() if not ok} == NO_DIRECT
    assert [(r.a, r.b, r.direct_error) for r in matrix if r.held is not True] == []


def test_ipv6_carries_the_pair_whose_ipv4_needs_turn(matrix: list[PairRecord]) -> None:
    (r,) = [r for r in matrix if {r.a, r.b} == {"peer-fw-a", "peer-fw-b"}]
    assert r.direct and r.selected is not None and "2001:db8:" in r.selected, r.selected


def test_relay_works_for_every_pair_with_ipv4(matrix: list[PairRecord]) -> None:
    v4 = [r for r in matrix if "peer-v6only" not in (r.a, r.b)]
    assert [(r.a, r.b, r.relay_error) for r in v4 if not r.relay] == []
    skipped = [r for r in matrix if "peer-v6only" in (r.a, r.b)]
    assert all(r.relay_error and r.relay_error.startswith("relay not run") for r in skipped)
