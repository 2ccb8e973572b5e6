"""The README's pytest example for CI users, run as written: a P2P outcome behind symmetric NAT."""

from __future__ import annotations

import pytest

from natkit.p2p.matrix import run_matrix

pytestmark = pytest.mark.netns


def test_symmetric_nats_need_the_relay() -> None:
    # Builds the pair-symmetric lab, runs natkit serve (STUN + TURN + signal) in node `server`,
    # then a real WebRTC data channel between alice and bob, direct and through TURN.
    (pair,) = run_matrix("pair-symmetric")
    assert not pair.direct  # two symmetric NATs: hole punching cannot work
    assert pair.relay  # the TURN relay carries the data channel
    assert pair.predicted_direct is False  # and natkit diagnose predicted it
