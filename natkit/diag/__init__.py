"""natkit.diag: why P2P fails, in about a second, with a verdict a person can act on.

    import asyncio
    from natkit.diag import DiagnoseOptions, StunSpec, diagnose, to_json
    result = asyncio.run(diagnose(DiagnoseOptions(stun=(StunSpec.parse("127.0.0.1:3478"),))))
    print(result.verdict.direct_p2p, to_json(result)["nat_type"])

Modules: `probes` (RFC 5780 UDP tests, RTT-adaptive), `path` (what ICMP says: unreachables,
TTL-limited hops), `classify`, `evidence` (no server vs UDP blocked, CGNAT) and `verdict` (pure),
`streams` (TCP/TLS reachability), `gather` (aioice candidates, interfaces), `lifetime`,
`turncheck` (the TURN check shared with ``natkit turn check``), `runner` (all of it in parallel
within a budget), `report` (JSON v1, docs/diagnose-json.md, and text). Names below load lazily,
so ``natkit turn check`` does not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Classification",
    "DiagnoseOptions",
    "Diagnosis",
    "FamilyProbe",
    "StunSpec",
    "TurnSpec",
    "Verdict",
    "classify",
    "decide",
    "diagnose",
    "to_json",
    "to_text",
]

_HOME = {
    "Classification": "classify",
    "FamilyProbe": "classify",
    "classify": "classify",
    "Verdict": "verdict",
    "decide": "verdict",
    "DiagnoseOptions": "runner",
    "Diagnosis": "runner",
    "StunSpec": "runner",
    "TurnSpec": "runner",
    "diagnose": "runner",
    "to_json": "report",
    "to_text": "report",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'natkit.diag' has no attribute {name!r}")
    return getattr(importlib.import_module(f"natkit.diag.{module}"), name)
