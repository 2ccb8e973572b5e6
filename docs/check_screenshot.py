"""Regenerate docs/check-port-restricted-cone.png: the natkit check page as headless Chromium in
node `peer` of a port-restricted-cone lab sees it (root; run from the repository root):

    sudo .venv/bin/python docs/check_screenshot.py
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

from natkit.check.headless import launch
from natkit.lab import Lab

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.netns.test_check_lab import PAGE, serve_check

OUT = Path(__file__).parent / "check-port-restricted-cone.png"


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        Lab.up("port-restricted-cone") as lab,
        serve_check(lab, Path(tmp)),
    ):
        flags = ("--ignore-certificate-errors", "--hide-scrollbars")
        with launch(functools.partial(lab.spawn, "peer"), extra_flags=flags) as browser:
            session = browser.open(PAGE)
            browser.wait_for(session, "document.title.endsWith('— done')", 30)
            OUT.write_bytes(browser.screenshot(session, width=860, height=980))
    print(OUT)


if __name__ == "__main__":
    main()
