"""natkit.diag.probes.RttEstimator: quiet periods follow the slowest measured round trip, so a
satellite path's late answers are waited for and a LAN path stays fast."""

from __future__ import annotations

import pytest

from natkit.diag.probes import MIN_QUIET, RttEstimator


def test_lan_path_keeps_the_short_quiet_period() -> None:
    rtt = RttEstimator()
    for sample in (0.0008, 0.0011, 0.0009):
        rtt.sample(sample)
    assert rtt.quiet() == MIN_QUIET and rtt.rto == pytest.approx(0.015)


def test_satellite_path_waits_two_round_trips() -> None:
    rtt = RttEstimator()
    rtt.sample(0.6)
    assert rtt.quiet() == pytest.approx(1.3)
    assert rtt.rto == 1.0  # capped: retransmissions spaced by the deadline instead


def test_jitter_uses_the_slowest_sample_not_the_mean() -> None:
    rtt = RttEstimator()
    for sample in (0.11, 0.22, 0.12, 0.13):
        rtt.sample(sample)
    assert rtt.quiet() == pytest.approx(0.54)
    assert rtt.srtt is not None and rtt.srtt < 0.22
