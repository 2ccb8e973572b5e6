"""coturn's RFC 5780 client (`turnutils_natdiscovery`, code we did not write) reports each preset's
mapping and filtering behaviour, run in node `peer` against `natkit serve` in node `server`."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from natkit.lab import Lab
from tests.netns.stunserver import PRIMARY, natkit_stun

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        shutil.which("turnutils_natdiscovery") is None,
        reason="turnutils_natdiscovery is missing (apt-get install coturn)",
    ),
]

EIM, ADM, APDM = "Endpoint Independent", "Address Dependent", "Address and Port Dependent"
EXPECTED = {  # preset: (mapping, filtering) in natdiscovery's words
    "open": (EIM, EIM),
    "full-cone": (EIM, EIM),
    "restricted-cone": (EIM, ADM),
    "port-restricted-cone": (EIM, APDM),
    "symmetric": (APDM, APDM),
}


@pytest.mark.parametrize("fast_path", ["off", "kernel"])  # the same answer with the kernel's
@pytest.mark.parametrize("preset", list(EXPECTED))
def test_natdiscovery_reports_preset_behaviour(
    nat_lab: Callable[..., Lab], preset: str, tmp_path: Path, fast_path: str
) -> None:
    lab = nat_lab(preset)
    with natkit_stun(lab, tmp_path, fast_path):
        done = lab.exec("peer", ["turnutils_natdiscovery", "-m", "-f", PRIMARY], timeout=60)
    mapping = re.findall(r"NAT with (.+?) Mapping!", done.stdout)
    filtering = re.findall(r"NAT with (.+?) Filtering!", done.stdout)
    assert (mapping, filtering) == ([EXPECTED[preset][0]], [EXPECTED[preset][1]]), done.stdout
