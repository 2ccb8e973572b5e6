"""The matrix with impaired peers (preset matrix-impaired, needs root): a port-restricted cone on
a satellite uplink (600 ms RTT) and one on a lossy mobile uplink (80 ms ± 30 ms, 3% loss each
way), beside a classic full cone and symmetric NAT. Diagnose names each NAT through the slow
links, `natkit p2p` connects wherever the NAT types allow it (and through TURN everywhere), and
diagnose's prediction holds for every pair.
"""

from __future__ import annotations

import pytest

from natkit.p2p.matrix import PairRecord
from tests.netns.conftest import timed_matrix

pytestmark = [pytest.mark.netns, pytest.mark.slow]

TYPES = {
    "peer-satellite": "port-restricted-cone",
    "peer-lossy-mobile": "port-restricted-cone",
    "peer-full-cone": "full-cone",
    "peer-symmetric": "symmetric",
}
NO_DIRECT = {
    frozenset({"peer-satellite", "peer-symmetric"}),
    frozenset({"peer-lossy-mobile", "peer-symmetric"}),
}


@pytest.fixture(scope="module")
def matrix() -> list[PairRecord]:
    return timed_matrix("matrix-impaired", 90)  # well under 2 minutes


def test_impaired_matrix_predictions_hold_for_every_pair(matrix: list[PairRecord]) -> None:
    assert len(matrix) == 6
    for r in matrix:
        assert (r.a_type, r.b_type) == (TYPES[r.a], TYPES[r.b]), r
        expected = frozenset({r.a, r.b}) not in NO_DIRECT
        assert (r.direct, r.predicted_direct, r.held) == (expected, expected, True), r
        assert r.relay, (r.a, r.b, r.relay_error)
        assert r.selected is not None and r.selected.startswith("relay:") == (not r.direct), r
        if "peer-satellite" in (r.a, r.b):  # the link is really there: ICE takes a 600 ms RTT
            assert r.ice_s is not None and r.ice_s >= 0.55, r
