"""The NAT matrix measured with real WebRTC peers in a lab matches the RFC expectation (root).

One peer per NAT type; every pair runs `natkit p2p` direct (STUN only) and relay-only (TURN; over
TCP 443 for the udp-blocked peer). Expected (issue 7, RFC 4787 behaviours): open and full cone
connect directly to every type with UDP; symmetric (and CGNAT, a cone behind a symmetric carrier)
fails direct with symmetric and port-restricted; udp-blocked connects only through TURN; every
pair connects through TURN; diagnose's prediction holds for every pair.

The `matrix` preset's nodes are those of `matrix-extended`, defined alike (checked below), so
these tests read the classic pairs of the session's one extended run (tests/netns/conftest.py)
rather than build the lab again.
"""

from __future__ import annotations

import pytest

from natkit.p2p.matrix import LAB_PEER_RANGES, PairRecord, serve_config
from tests.netns.conftest import preset_yaml

pytestmark = [pytest.mark.netns, pytest.mark.slow]

TYPES = {
    "peer-open": "open",
    "peer-full-cone": "full-cone",
    "peer-restricted-cone": "restricted-cone",
    "peer-port-restricted-cone": "port-restricted-cone",
    "peer-symmetric": "symmetric",
    "peer-cgnat": "symmetric",  # full cone behind a symmetric carrier: symmetric to the world
    "peer-udp-blocked": "udp-blocked",
}
NO_DIRECT = {
    frozenset({"peer-symmetric", "peer-port-restricted-cone"}),
    frozenset({"peer-cgnat", "peer-port-restricted-cone"}),
    frozenset({"peer-cgnat", "peer-symmetric"}),  # symmetric <-> symmetric
}


def expected_direct(a: str, b: str) -> bool:
    return "peer-udp-blocked" not in (a, b) and frozenset({a, b}) not in NO_DIRECT


def test_the_classic_matrix_is_part_of_the_extended_one() -> None:
    classic, extended = preset_yaml("matrix"), preset_yaml("matrix-extended")
    assert classic["servers"] == extended["servers"]
    for part in ("nats", "hosts"):
        assert classic[part].items() <= extended[part].items(), part
    assert set(classic["hosts"]) == set(TYPES)


@pytest.fixture(scope="module")
def matrix(extended_matrix: list[PairRecord]) -> list[PairRecord]:
    return [r for r in extended_matrix if r.a in TYPES and r.b in TYPES]


def test_one_natkit_serve_config_runs_stun_turn_and_signal() -> None:
    import yaml

    from natkit.config import loads

    config = loads(yaml.safe_dump(serve_config("pw")))
    assert config.turn.enabled and config.turn.engine == "builtin" and config.signal.enabled
    assert [str(u) for u in config.stun.listen] == [
        "udp://203.0.113.10:3478",
        "tcp://203.0.113.10:3478",
        "tcp://203.0.113.10:443",
    ]
    assert config.stun.alternate == "203.0.113.11:3479"
    assert config.signal.listen == "203.0.113.10:80"
    # The lab's ranges stay in the default deny list and are opened explicitly.
    assert set(LAB_PEER_RANGES) <= set(config.turn.peers.deny)
    assert config.turn.peers.allow == LAB_PEER_RANGES


def test_every_pair_ran_and_diagnose_named_each_type(matrix: list[PairRecord]) -> None:
    assert len(matrix) == 21
    for r in matrix:
        assert (r.a_type, r.b_type) == (TYPES[r.a], TYPES[r.b]), r


def test_direct_outcomes_are_the_rfc_expected_ones(matrix: list[PairRecord]) -> None:
    wrong = [
        (r.a, r.b, r.direct, r.direct_error)
        for r in matrix
        if r.direct != expected_direct(r.a, r.b)
    ]
    assert not wrong


def test_every_pair_connects_through_turn(matrix: list[PairRecord]) -> None:
    wrong = [(r.a, r.b, r.relay_error) for r in matrix if not r.relay]
    assert not wrong


def test_selected_path_matches_the_outcome(matrix: list[PairRecord]) -> None:
    for r in matrix:
        assert r.selected is not None and r.ice_s is not None and r.ice_s < 10
        assert r.selected.startswith("relay:") == (not r.direct), r
        if "peer-udp-blocked" in (r.a, r.b):
            assert r.selected.startswith("relay: relay ")


def test_diagnose_prediction_held_for_every_pair(matrix: list[PairRecord]) -> None:
    assert [(r.a, r.b) for r in matrix if r.held is not True] == []
    for r in matrix:
        assert r.predicted_direct == expected_direct(r.a, r.b)
