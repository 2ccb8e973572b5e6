"""natkit check's "test with a friend" in the lab: headless Chromium in alice and in bob, each
behind its own NAT, pair through the page served in node `server`; the data channel connects
directly exactly where the NAT matrix says (`natkit.p2p.matrix.predict_direct`), and through
TURN always. Needs root and Debian's chromium."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.check.headless import launch, run_friends
from natkit.lab import Lab
from natkit.p2p.matrix import predict_direct
from tests.netns.test_check_lab import PAGE, MakeLab, serve_check

pytestmark = pytest.mark.netns

# preset → (alice's NAT type, bob's), as natkit diagnose measures them (test_diagnose_lab.py).
# pair-full-cone and pair-restricted-cone are left out to keep the suite fast: they punch like
# pair-port-restricted-cone (and tests/netns/test_p2p_matrix.py runs every pair with natkit p2p).
PAIRS = {
    "pair-port-restricted-cone": ("port-restricted-cone", "port-restricted-cone"),
    "pair-symmetric": ("symmetric", "symmetric"),
    "pair-cgnat": ("symmetric", "port-restricted-cone"),
}


@pytest.fixture
def pair_lab(nat_lab: MakeLab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = nat_lab(request.param, name=f"h15fr{list(PAIRS).index(request.param)}")
    with serve_check(lab, tmp_path):
        yield lab


@pytest.mark.parametrize("pair_lab", list(PAIRS), indirect=True)
def test_friends_connect_where_the_matrix_says(pair_lab: Lab) -> None:
    lab = pair_lab
    predicted = predict_direct(*PAIRS[lab.state.topology])
    flags = ("--ignore-certificate-errors",)
    with (
        launch(functools.partial(lab.spawn, "alice"), extra_flags=flags) as alice,
        launch(functools.partial(lab.spawn, "bob"), extra_flags=flags) as bob,
    ):
        host, friend = run_friends(alice, bob, PAGE, timeout=40)
    for side in (host, friend):
        # The page's own prediction, from both sides' measured NAT types, is the matrix's.
        assert side["predicted_direct"] is predicted and side["held"] is True, side
        assert side["direct"]["connected"] is predicted, side
        assert side["relay"]["connected"] is True, side
        assert side["relay"]["pair"]["local"] == "relay", side
    if predicted:
        assert "relay" not in (host["direct"]["pair"]["local"], host["direct"]["pair"]["remote"])
