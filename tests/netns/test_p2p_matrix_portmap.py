"""The matrix with a port-mapped peer (root): a symmetric NAT whose router offers UPnP/NAT-PMP/PCP
connects directly where a plain symmetric NAT cannot, and diagnose's prediction (a mapped peer
is reachable like a full cone) holds for every pair.

Peers (netns/presets/matrix-portmap.yaml): peer-upnp-symmetric maps its ICE port (natkit p2p
--map-port) and offers the mapped address as a server-reflexive candidate; peer-port-restricted-
cone and peer-symmetric are plain. Without the mapping, symmetric <-> port-restricted and
symmetric <-> symmetric need the relay (tests/netns/test_p2p_matrix.py).
"""

from __future__ import annotations

import time

import pytest

from natkit.p2p.matrix import PairRecord, render_table, run_matrix

pytestmark = [pytest.mark.netns, pytest.mark.slow]

MAPPED = "peer-upnp-symmetric"
DIRECT = {
    frozenset({MAPPED, "peer-port-restricted-cone"}),
    frozenset({MAPPED, "peer-symmetric"}),
}


@pytest.fixture(scope="module")
def matrix() -> list[PairRecord]:
    from natkit.lab.netlink import check_privileges

    check_privileges()
    started = time.monotonic()
    records = run_matrix("matrix-portmap", concurrency=3, timeout=10.0)
    assert time.monotonic() - started < 90, "the port-mapping matrix must stay well under 2 min"
    print(render_table(records))
    return records


def test_every_pair_ran_and_diagnose_saw_the_mapping(matrix: list[PairRecord]) -> None:
    assert len(matrix) == 3
    for r in matrix:
        assert {r.a_type, r.b_type} <= {"symmetric", "port-restricted-cone"}
        assert r.a_mapped == (r.a == MAPPED) and r.b_mapped == (r.b == MAPPED)


def test_the_mapped_peer_connects_directly_where_it_otherwise_could_not(
    matrix: list[PairRecord],
) -> None:
    for r in matrix:
        expected = frozenset({r.a, r.b}) in DIRECT
        assert r.direct == expected, f"{r.a} <-> {r.b}: {r.direct_error}"
        if expected:  # through the mapped address, offered as srflx by the mapped peer
            assert r.selected and "203.0.113.100:" in r.selected, r.selected


def test_predictions_hold_for_every_pair(matrix: list[PairRecord]) -> None:
    assert all(r.held for r in matrix), render_table(matrix)


def test_every_pair_connects_through_the_relay(matrix: list[PairRecord]) -> None:
    assert all(r.relay for r in matrix), render_table(matrix)
