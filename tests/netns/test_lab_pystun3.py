"""pystun3 (an RFC 3489 classifier we did not write) names each preset's NAT type, talking to
`natkit serve` in node `server` on 203.0.113.10:3478 with alternate 203.0.113.11:3479 (needs
root). pystun3's socket gets a short timeout: each unanswered test would cost it 8 s."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from natkit.lab import Lab
from tests.netns.stunserver import PRIMARY, natkit_stun

pytestmark = pytest.mark.netns
stun = pytest.importorskip("stun")

EXPECTED = {
    "open": "Open Internet",
    "full-cone": "Full Cone",
    "restricted-cone": "Restric NAT",
    "port-restricted-cone": "Restric Port NAT",
    "symmetric": "Symmetric NAT",
    "udp-blocked": "Blocked",
}


@pytest.mark.parametrize("fast_path", ["off", "kernel"])  # the same answer with the kernel's
@pytest.mark.parametrize("preset", list(EXPECTED))
def test_pystun3_classifies_preset(
    nat_lab: Callable[..., Lab], preset: str, tmp_path: Path, fast_path: str
) -> None:
    lab = nat_lab(preset)
    with natkit_stun(lab, tmp_path, fast_path):
        sock = lab.socket("peer")
        sock.settimeout(0.25)
        local_ip = lab.address("peer")
        sock.bind((local_ip, 0))
        nat_type, _ = stun.get_nat_type(
            sock, local_ip, sock.getsockname()[1], stun_host=PRIMARY, stun_port=3478
        )
        sock.close()
    assert nat_type == EXPECTED[preset]
