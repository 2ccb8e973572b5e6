"""`natkit diagnose --json` reports each lab NAT's port allocation (needs root): the pattern from
its burst of fresh sockets, the stride, and whether port prediction could help."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from natkit.lab import Lab
from tests.netns.children import reaped
from tests.netns.stunserver import wait_udp
from tests.netns.test_diagnose_lab import _start_natkit, diagnose

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]

# preset → (nat_type, pattern, stride, predictable, prediction_helps)
EXPECTED: dict[str, tuple[str, str, int | None, bool, bool]] = {
    "sequential": ("symmetric", "sequential", 2, True, True),
    "random-ports": ("port-restricted-cone", "random", None, False, False),
    "symmetric": ("symmetric", "random", None, False, False),
    "port-restricted-cone": ("port-restricted-cone", "preserving", None, True, False),
}


def _report(nat_lab: MakeLab, tmp_path: Path, preset: str) -> dict[str, object]:
    lab = nat_lab(preset)
    with reaped(_start_natkit(lab, tmp_path)):
        wait_udp(lab)
        report, _ = diagnose(lab)
    return report


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_diagnose_reports_the_port_allocation(
    nat_lab: MakeLab, tmp_path: Path, preset: str
) -> None:
    report = _report(nat_lab, tmp_path, preset)
    kind, pattern, stride, predictable, helps = EXPECTED[preset]
    ports = report["port_allocation"]
    assert isinstance(ports, dict), report
    assert report["version"] == 2 and report["nat_type"] == kind, json.dumps(report, indent=1)
    got = (ports["pattern"], ports["stride"], ports["predictable"], ports["prediction_helps"])
    assert got == (pattern, stride, predictable, helps), ports
    assert ports["refused"] == 0 and ports["exhausted"] is False
    samples = ports["samples"]
    assert len(samples) == 5 and all(s["mapped_port"] for s in samples), samples
    if pattern == "sequential":
        mapped = [s["mapped_port"] for s in samples]
        assert [b - a for a, b in itertools.pairwise(mapped)] == [2] * 4, mapped
        assert ports["next_port"] == mapped[-1] + 2


def test_diagnose_sees_an_exhausted_port_block(nat_lab: MakeLab, tmp_path: Path) -> None:
    """8 ports per subscriber: diagnose's own probes take them all, then every fresh socket of
    the burst is refused, and diagnose says so."""
    report = _report(nat_lab, tmp_path, "cgnat-port-block")
    ports = report["port_allocation"]
    assert isinstance(ports, dict), report
    assert ports["exhausted"] is True and ports["refused"] == 5, ports
    assert ports["pattern"] is None and "port block exhausted" in ports["explanation"]
    assert any("new mappings were refused" in p for p in report["problems"]), report["problems"]
    assert "refuses new mappings" in report["verdict"]["actions"][0]
    verdict = report["verdict"]  # the type is what got through; new calls get no mapping
    assert (verdict["direct_p2p"], verdict["compatible_peer_types"]) == ("unlikely", [])
    assert verdict["outcome"] == "no-path" and report["exit_status"] == 3  # no TURN given
    assert "no new UDP mappings" in verdict["explanation"]
