"""Regenerate docs/check-port-restricted-cone.png: the natkit check page as headless Chromium in
node `peer` of a port-restricted-cone lab sees it (root; run from the repository root):

    sudo .venv/bin/python docs/check_screenshot.py
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from pathlib import Path

from natkit.check.headless import launch
from natkit.lab import Lab
from natkit.testing import self_signed_certificate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.netns.stunserver import wait_udp  # noqa: E402
from tests.netns.test_check_lab import CONFIG, PAGE, _wait_http  # noqa: E402

OUT = Path(__file__).parent / "check-port-restricted-cone.png"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, Lab.up("port-restricted-cone") as lab:
        cert, key = self_signed_certificate(Path(tmp), "natkit-lab")
        config = Path(tmp) / "natkit.yaml"
        config.write_text(CONFIG.replace("CERT", str(cert)).replace("KEY", str(key)))
        argv = [sys.executable, "-m", "natkit", "serve", "-c", str(config)]
        lab.spawn("server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_udp(lab)
        _wait_http(lab)
        flags = ("--ignore-certificate-errors", "--hide-scrollbars")
        with launch(functools.partial(lab.spawn, "peer"), extra_flags=flags) as browser:
            session = browser.open(PAGE)
            browser.wait_for(session, "document.title.endsWith('— done')", 30)
            OUT.write_bytes(browser.screenshot(session, width=860, height=980))
    print(OUT)


if __name__ == "__main__":
    main()
