"""What one `natkit p2p` run found, as data, as JSON (version 1) and as text for people.

JSON fields (a contract, like diagnose's): `version`, `role` (offer|answer), `code`, `connected`,
`ice_s` (seconds from ICE start to connected), `selected` ({`kind`: host|srflx|relay, `local`,
`remote`} or null), `rtt_ms`, `rtt_min_ms`, `throughput_mbps`, `bytes`, `duration_s`,
`ice_states` ([{`t`, `state`}]), `tried_pairs` ([{`local`, `remote`, `state`}]), `candidates`
({`local`: [...], `remote`: [...]}), `error` (text or null), `advice` (text or null).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from natkit.addr import Candidate

__all__ = ["Candidate", "P2PResult", "candidate_json", "pair_kind", "render_text", "to_json"]


def candidate_json(c: Candidate) -> dict[str, Any]:
    """A candidate in p2p's JSON (version 1): type, protocol, address, port."""
    return {"type": c.type, "protocol": c.protocol, "address": c.address, "port": c.port}


def pair_kind(local: Candidate, remote: Candidate) -> str:
    """The path a pair takes: relay if either end is relayed, srflx if either is NAT-mapped."""
    types = {local.type, remote.type}
    if "relay" in types:
        return "relay"
    if types & {"srflx", "prflx"}:
        return "srflx"
    return "host"


@dataclass(slots=True)
class P2PResult:
    """Everything one side measured; filled in as the run goes, so a failure keeps what it had."""

    role: str
    code: str | None = None
    connected: bool = False
    ice_s: float | None = None
    selected: tuple[Candidate, Candidate] | None = None
    rtt_ms: float | None = None
    rtt_min_ms: float | None = None
    throughput_mbps: float | None = None
    bytes: int = 0
    duration_s: float = 0.0
    ice_states: list[tuple[float, str]] = field(default_factory=list)
    tried_pairs: list[tuple[Candidate, Candidate, str]] = field(default_factory=list)
    local_candidates: list[Candidate] = field(default_factory=list)
    remote_candidates: list[Candidate] = field(default_factory=list)
    error: str | None = None
    advice: str | None = None
    diagnosis: dict[str, Any] | None = None
    """On failure: what `natkit diagnose` says of this side's NAT (nat_type, mapping, filtering,
    direct_p2p, compatible_peer_types), so the report says why, not only that it failed."""
    port_mappings: list[dict[str, Any]] = field(default_factory=list)
    """With --map-port: the mappings made for the ICE sockets (diagnose's `mapped` fields)."""

    @property
    def kind(self) -> str | None:
        return pair_kind(*self.selected) if self.selected else None


def to_json(result: P2PResult) -> dict[str, Any]:
    selected = None
    if result.selected:
        local, remote = result.selected
        selected = {
            "kind": result.kind,
            "local": candidate_json(local),
            "remote": candidate_json(remote),
        }
    return {
        "version": 1,
        "role": result.role,
        "code": result.code,
        "connected": result.connected,
        "ice_s": _round(result.ice_s, 3),
        "selected": selected,
        "rtt_ms": _round(result.rtt_ms, 2),
        "rtt_min_ms": _round(result.rtt_min_ms, 2),
        "throughput_mbps": _round(result.throughput_mbps, 2),
        "bytes": result.bytes,
        "duration_s": round(result.duration_s, 3),
        "ice_states": [{"t": round(t, 3), "state": s} for t, s in result.ice_states],
        "tried_pairs": [
            {"local": candidate_json(lc), "remote": candidate_json(rc), "state": s}
            for lc, rc, s in result.tried_pairs
        ],
        "candidates": {
            "local": [candidate_json(c) for c in result.local_candidates],
            "remote": [candidate_json(c) for c in result.remote_candidates],
        },
        "error": result.error,
        "advice": result.advice,
        "diagnosis": result.diagnosis,
        "port_mappings": result.port_mappings,
    }


def render_text(result: P2PResult) -> str:
    lines = []
    if result.connected:
        lines.append(f"connected ({result.role}) in {result.duration_s:.2f} s")
        lines.append(f"  ICE          {_fmt(result.ice_s, 's', 3)}")
        if result.selected:
            local, remote = result.selected
            lines.append(f"  selected     {result.kind}: {local} <-> {remote}")
        rtt = _fmt(result.rtt_ms, "ms", 2)
        if result.rtt_min_ms is not None:
            rtt += f" (min {result.rtt_min_ms:.2f} ms)"
        lines.append(f"  RTT          {rtt}")
        thr = _fmt(result.throughput_mbps, "Mbit/s", 2)
        lines.append(f"  throughput   {thr} ({result.bytes} bytes)")
    else:
        lines.append(f"NOT connected ({result.role}): {result.error or 'unknown reason'}")
        if result.ice_states:
            states = " -> ".join(f"{s}@{t:.1f}s" for t, s in result.ice_states)
            lines.append(f"  ICE states   {states}")
        lines.append(f"  local        {_cands(result.local_candidates)}")
        lines.append(f"  remote       {_cands(result.remote_candidates)}")
        for local, remote, state in result.tried_pairs:
            lines.append(f"  tried        {local} -> {remote}: {state}")
    if result.diagnosis and "error" in result.diagnosis:
        lines.append(f"  this side    no diagnosis: {result.diagnosis['error']}")
    elif result.diagnosis:
        d = result.diagnosis
        peers = ", ".join(d["compatible_peer_types"]) or "none"
        lines.append(
            f"  this side    {d['nat_type']} NAT (mapping {d['mapping']}, filtering "
            f"{d['filtering']}): direct P2P {d['direct_p2p']}; works directly with: {peers}"
        )
    if result.advice:
        lines.append(f"  advice       {result.advice}")
    return "\n".join(lines)


def _cands(candidates: list[Candidate]) -> str:
    return ", ".join(str(c) for c in candidates) or "(none)"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None, unit: str, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"
