"""natkit check: a web page served by `natkit serve` that diagnoses the visitor's NAT from the
browser, against natkit's own STUN/TURN (issue 15).

`natkit.check.server.CheckServer` serves the page and its JSON API and runs the ICE prober
(`natkit.check.ice`); `natkit.check.report` turns what was measured into diagnose's JSON;
`natkit.check.headless` drives headless Chromium to run the page from CI or a script.
"""

from __future__ import annotations

__all__: list[str] = []
