"""The NAT matrix with port allocators, an exhausted CGNAT port block, and same-type pairs (root).

`matrix-ports`: a symmetric NAT with a sequential allocator still behaves as symmetric for WebRTC
(natkit p2p does no port prediction: diagnose says prediction could help, the matrix shows it is
not used); random ports behind an endpoint-independent NAT do not matter; a peer whose CGNAT port
block is used up connects directly with no one and only through TURN over TCP.
`matrix-same-type`: symmetric with symmetric fails direct, port-restricted with port-restricted
works. Diagnose's prediction holds for every pair. Its four peers are in `matrix-extended` under
other names, defined alike (checked here): these tests read them from the session's one
extended run (tests/netns/conftest.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from natkit.p2p.matrix import PairRecord
from tests.netns.conftest import preset_yaml, timed_matrix

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PORT_TYPES = {
    "peer-sequential": "symmetric",
    "peer-random-ports": "port-restricted-cone",
    "peer-full-cone": "full-cone",
}
PORT_DIRECT = {
    frozenset({"peer-sequential", "peer-full-cone"}),
    frozenset({"peer-random-ports", "peer-full-cone"}),
}
# matrix-same-type's peers → the same nodes in matrix-extended, and their diagnosed type.
SAME_TYPE = {
    "peer-symmetric-a": ("peer-symmetric", "symmetric"),
    "peer-symmetric-b": ("peer-symmetric-b", "symmetric"),
    "peer-port-restricted-a": ("peer-port-restricted-cone", "port-restricted-cone"),
    "peer-port-restricted-b": ("peer-port-restricted-cone-b", "port-restricted-cone"),
}
SAME_DIRECT = {frozenset({"peer-port-restricted-cone", "peer-port-restricted-cone-b"})}


@pytest.fixture(scope="module")
def ports() -> list[PairRecord]:
    return timed_matrix("matrix-ports", 120)


@pytest.fixture(scope="module")
def same_type(extended_matrix: list[PairRecord]) -> list[PairRecord]:
    names = {extended for extended, _ in SAME_TYPE.values()}
    return [r for r in extended_matrix if {r.a, r.b} <= names]


def test_port_matrix_types_and_exhaustion(ports: list[PairRecord]) -> None:
    assert len(ports) == 6
    for r in ports:
        for name, kind in ((r.a, r.a_type), (r.b, r.b_type)):
            assert (name in r.exhausted) is (name == "peer-cgnat-exhausted"), r
            if name in PORT_TYPES:
                assert kind == PORT_TYPES[name], r


def test_port_matrix_outcomes(ports: list[PairRecord]) -> None:
    wrong = [
        (r.a, r.b, r.direct, r.relay, r.direct_error, r.relay_error)
        for r in ports
        if r.direct != (frozenset({r.a, r.b}) in PORT_DIRECT) or not r.relay
    ]
    assert not wrong
    for r in ports:
        if "peer-cgnat-exhausted" in (r.a, r.b):
            assert r.selected is not None and r.selected.startswith("relay: relay "), r


def test_port_matrix_predictions_hold(ports: list[PairRecord]) -> None:
    assert [(r.a, r.b) for r in ports if r.held is not True] == []


def test_the_same_type_peers_are_in_the_extended_matrix() -> None:
    def nodes(name: str) -> dict[str, Any]:
        preset = preset_yaml(name)
        return {host: preset["nats"].get(h["behind"]) for host, h in preset["hosts"].items()}

    same, extended = nodes("matrix-same-type"), nodes("matrix-extended")
    assert {extended_name for extended_name, _ in SAME_TYPE.values()} <= set(extended)
    assert {h: extended[SAME_TYPE[h][0]] for h in same} == same


def test_same_type_pairs(same_type: list[PairRecord]) -> None:
    assert len(same_type) == 6
    wrong = [
        (r.a, r.b, r.direct, r.relay, r.direct_error)
        for r in same_type
        if r.direct != (frozenset({r.a, r.b}) in SAME_DIRECT) or not r.relay
    ]
    assert not wrong
    kinds = dict(SAME_TYPE.values())
    for r in same_type:
        assert (r.a_type, r.b_type) == (kinds[r.a], kinds[r.b]), r
    assert [(r.a, r.b) for r in same_type if r.held is not True] == []
