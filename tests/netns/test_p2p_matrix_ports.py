"""The NAT matrix with port allocators, an exhausted CGNAT port block, and same-type pairs (root).

`matrix-ports`: a symmetric NAT with a sequential allocator still behaves as symmetric for WebRTC
(natkit p2p does no port prediction: diagnose says prediction could help, the matrix shows it is
not used); random ports behind an endpoint-independent NAT do not matter; a peer whose CGNAT port
block is used up connects directly with no one and only through TURN over TCP.
`matrix-same-type`: symmetric with symmetric fails direct, port-restricted with port-restricted
works. Diagnose's prediction holds for every pair.
"""

from __future__ import annotations

import time

import pytest

from natkit.p2p.matrix import PairRecord, run_matrix

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
SAME_DIRECT = {frozenset({"peer-port-restricted-a", "peer-port-restricted-b"})}


def _run(topology: str, limit: float) -> list[PairRecord]:
    from natkit.lab.netlink import check_privileges

    check_privileges()
    started = time.monotonic()
    records = run_matrix(topology, concurrency=6, timeout=10.0)
    took = time.monotonic() - started
    print(f"{topology}: {len(records)} pairs in {took:.1f} s")
    assert took < limit, f"{topology} took {took:.0f} s"
    return records


@pytest.fixture(scope="module")
def ports() -> list[PairRecord]:
    return _run("matrix-ports", 120)


@pytest.fixture(scope="module")
def same_type() -> list[PairRecord]:
    return _run("matrix-same-type", 90)


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


def test_same_type_pairs(same_type: list[PairRecord]) -> None:
    assert len(same_type) == 6
    wrong = [
        (r.a, r.b, r.direct, r.relay, r.direct_error)
        for r in same_type
        if r.direct != (frozenset({r.a, r.b}) in SAME_DIRECT) or not r.relay
    ]
    assert not wrong
    for r in same_type:
        assert r.a_type == r.a.removeprefix("peer-").rsplit("-", 1)[0].replace(
            "port-restricted", "port-restricted-cone"
        ), r
    assert [(r.a, r.b) for r in same_type if r.held is not True] == []
