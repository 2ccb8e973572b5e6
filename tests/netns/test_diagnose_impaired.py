"""`natkit diagnose` over impaired uplinks (the satellite and lossy-mobile presets' links) still
names the NAT right: its timers adapt to the measured RTT (needs root).

The presets put their link on a port-restricted-cone NAT, whose filtering answers never come, so
a diagnosis that gives up too early would still look right there. The same links on a full cone
and a restricted cone make late answers matter: a LAN-tuned quiet period calls those NATs
port-restricted (that is what diagnose did before it adapted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from natkit.lab import Lab, Topology, load_topology
from tests.netns.stunserver import PRIMARY, natkit_stun, wait_udp

pytestmark = pytest.mark.netns
MakeLab = Callable[..., Lab]
EIM, ADF, APDF = "endpoint-independent", "address-dependent", "address-and-port-dependent"

CASES = {
    # preset, NAT type put behind its link → (filtering, nat_type, direct_p2p)
    ("satellite", None): (APDF, "port-restricted-cone", "peer-dependent"),
    ("satellite", "full-cone"): (EIM, "full-cone", "likely"),
    ("lossy-mobile", None): (APDF, "port-restricted-cone", "peer-dependent"),
    ("lossy-mobile", "restricted-cone"): (ADF, "restricted-cone", "likely"),
}


def impaired(preset: str, nat_type: str | None) -> Topology:
    topo = load_topology(preset)
    if nat_type is None:
        return topo
    raw = {
        "nats": {"nat": {"type": nat_type, "link": {}}},
        "hosts": {"peer": {"behind": "nat"}},
    }
    other = Topology.from_dict(raw, default_name=f"{preset}-{nat_type}")
    nat = replace(other.nats[0], link=topo.nats[0].link)
    return replace(other, nats=(nat,))


# A 1 s budget (--timeout 1) matters where the RTT is 600 ms.
RUNS = [(p, t, None) for p, t in CASES] + [("satellite", "full-cone", "1")]


@pytest.mark.parametrize(
    ("preset", "nat_type", "budget"), RUNS, ids=[f"{p}-{t}-{b or 'default'}" for p, t, b in RUNS]
)
def test_diagnose_names_the_nat_behind_an_impaired_link(
    nat_lab: MakeLab, tmp_path: Path, preset: str, nat_type: str | None, budget: str | None
) -> None:
    lab = nat_lab(impaired(preset, nat_type))
    filtering, nat_name, direct = CASES[(preset, nat_type)]
    argv = [sys.executable, "-m", "natkit", "diagnose", "--json", "--stun", f"{PRIMARY}:3478"]
    argv += ["--timeout", budget] if budget else []
    with natkit_stun(lab, tmp_path):
        done = lab.exec("peer", argv, timeout=30)
    report = json.loads(done.stdout)
    got = (report["mapping"], report["filtering"], report["nat_type"])
    assert got == (EIM, filtering, nat_name), json.dumps(report, indent=1)
    assert report["verdict"]["direct_p2p"] == direct
    assert report["udp"]["reachable"] is True and done.returncode == 0
    # Stretched for a 600 ms RTT (two round trips plus a quiet period), not left open-ended.
    assert report["duration_s"] <= 3.5, report["duration_s"]


def test_turn_check_over_a_satellite_link_stretches_its_budget(nat_lab: MakeLab) -> None:
    """Allocate, a second allocation, permission, channel and the relayed echo: ~10 round trips
    of 600 ms. The check stretches its budget once allocate has shown how slow the path is."""
    lab = nat_lab("satellite")
    config = Path(__file__).parents[2] / "configs" / "examples" / "lab-server.yaml"
    argv = [sys.executable, "-m", "natkit", "serve", "-c", str(config)]
    server = lab.spawn("server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_udp(lab)
        for budget in ([], ["--timeout", "1"]):
            argv = [sys.executable, "-m", "natkit", "diagnose", "--json"]
            argv += ["--stun", f"{PRIMARY}:3478", "--turn", f"turn:{PRIMARY}:3478?transport=udp"]
            argv += ["--secret", "natkit-lab-only-secret", *budget]
            done = lab.exec("peer", argv, timeout=30)
            report = json.loads(done.stdout)
            (turn,) = report["turn"]
            assert turn["ok"], (budget, turn)
            assert turn["rtt_ms"] >= 1200  # the relayed echo crosses the satellite hop twice
            assert report["nat_type"] == "port-restricted-cone" and done.returncode == 0
    finally:
        server.terminate()
        server.wait(10)
