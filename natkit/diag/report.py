"""Rendering a `Diagnosis`: the JSON document (version 2, docs/diagnose-json.md) and human text.

The JSON's top-level fields named in DESIGN.md are a contract; everything else is added freely.
The human report is plain text; `style` (click.style or a no-op) adds colour on a terminal.
Progress lines are printed by `ProgressPrinter` while the probes run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from natkit.addr import Address
from natkit.diag.allocation import Allocation
from natkit.diag.classify import Binding, Classification, FamilyProbe
from natkit.diag.path import Echo, PathProbe
from natkit.diag.portmap import PROTOCOL_NAMES
from natkit.diag.runner import Diagnosis

__all__ = ["SCHEMA_VERSION", "ProgressPrinter", "to_json", "to_text"]

SCHEMA_VERSION = 2
Style = Callable[..., str]


def _addr(a: Address | None) -> str | None:
    return None if a is None else str(a)


def _binding(b: Binding | None) -> dict[str, Any] | None:
    if b is None:
        return None
    return {
        "target": str(b.target),
        "status": b.status,
        "mapped_address": _addr(b.mapped),
        "other_address": _addr(b.other),
        "response_origin": _addr(b.origin),
        "rtt_ms": b.rtt_ms,
        "sends": b.sends,
        "error": b.error,
    }


def _echo(e: Echo) -> dict[str, Any]:
    return {
        "target": str(e.target),
        "ttl": e.ttl,
        "outcome": e.outcome,
        "icmp": _icmp(e),
        "rtt_ms": e.rtt_ms,
        "error": e.error,
    }


def _icmp(e: Echo | None) -> dict[str, Any] | None:
    if e is None or e.icmp is None:
        return None
    return {"kind": e.icmp.kind, "from": e.icmp.origin, "type": e.icmp.type, "code": e.icmp.code}


def _path(p: PathProbe | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"echoes": [_echo(e) for e in p.echoes], "hops": [_echo(e) for e in p.hops]}


def _family(p: FamilyProbe, c: Classification | None, path: PathProbe | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "reachable": p.reachable,
        "local_address": _addr(p.local),
        "public_address": _addr(c.public_address) if c else None,
        "behind_nat": c.behind_nat if c else None,
        "mapping": c.mapping if c else None,
        "filtering": c.filtering if c else None,
        "hairpinning": c.hairpinning if c else None,
        "port_preservation": c.port_preservation if c else None,
        "mapping_consistent": c.mapping_consistent if c else None,
        "nat_type": c.nat_type if c else "unknown",
        "classic_type": c.classic_type if c else "Unknown",
        "error": p.error,
        "path": _path(path),
        "rfc5780": None,
    }
    if p.rfc5780_index is not None:
        out["rfc5780"] = {
            "server": str(p.servers[p.rfc5780_index].target),
            "mapping_alt_ip": _binding(p.alt_ip),
            "mapping_alt_ip_port": _binding(p.alt_ip_port),
            "filtering_primary": _binding(p.filter_primary),
            "filtering_change_ip_port": _binding(p.change_ip_port),
            "filtering_change_port": _binding(p.change_port),
        }
    return out


def _allocation(a: Allocation | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {
        "pattern": a.pattern,
        "stride": a.stride,
        "samples": [{"local_port": s.local, "mapped_port": s.mapped} for s in a.samples],
        "refused": a.refused,
        "exhausted": a.exhausted,
        "predictable": a.predictable,
        "prediction_helps": a.prediction_helps,
        "next_port": a.next_port,
        "explanation": a.explanation,
    }


def _stun_servers(d: Diagnosis) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for spec in d.options.stun:
        addrs = d.resolved.get(str(spec))
        if addrs is None:
            out.append(
                {
                    "server": str(spec),
                    "address": None,
                    "family": None,
                    "reachable": False,
                    "error": "cannot resolve",
                }
            )
            continue
        for a in addrs:
            probe = d.families.get(a.family)
            b = next((b for b in probe.servers if b.target == a), None) if probe else None
            path = d.paths.get(a.family)
            echo = next((e for e in path.echoes if e.target == a), None) if path else None
            out.append(
                {
                    "server": str(spec),
                    "address": str(a),
                    "family": a.family,
                    "reachable": bool(b and b.ok),
                    "mapped_address": _addr(b.mapped) if b else None,
                    "other_address": _addr(b.other) if b else None,
                    "rtt_ms": b.rtt_ms if b else None,
                    "error": (b.error or ("no answer" if b.status == "timeout" else None))
                    if b
                    else (probe.error if probe else None),
                    "icmp": _icmp(echo),
                }
            )
    return out


def _nat64_ipv4(b: Binding | None) -> dict[str, Any] | None:
    if b is None:
        return None
    return {
        "server": str(b.target),
        "reachable": b.ok,
        "mapped_address": _addr(b.mapped),
        "rtt_ms": b.rtt_ms,
        "error": b.error,
    }


def _ipv6_fields(d: Diagnosis) -> dict[str, Any]:
    """`ipv6_translation` and `nat64` (docs/diagnose-json.md)."""
    from natkit.diag.ipv6 import translation

    c6, p6 = d.classes.get(6), d.families.get(6)
    kind = translation(p6.local, c6.public_address) if c6 and p6 else None
    n = d.nat64
    return {
        "ipv6_translation": kind,
        "nat64": (
            {
                "detected": n.detected,
                "prefixes": [str(p) for p in n.prefixes],
                "synthesized": list(n.synthesized),
                "resolver": n.resolver,
                "error": n.error,
                "ipv4": _nat64_ipv4(n.ipv4),
            }
            if n
            else None
        ),
    }


def to_json(d: Diagnosis) -> dict[str, Any]:
    """The diagnose JSON document, version 2."""
    main = d.main
    v = d.verdict
    public = [str(c.public_address) for c in d.classes.values() if c.public_address]
    return {
        "version": SCHEMA_VERSION,
        "duration_s": d.duration_s,
        "udp": {
            "reachable": bool(main and main.udp),
            "ipv4": d.classes[4].udp if 4 in d.classes else None,
            "ipv6": d.classes[6].udp if 6 in d.classes else None,
            "finding": d.finding.finding if d.finding else None,
            "evidence": d.finding.evidence if d.finding else None,
        },
        "public_address": _addr(main.public_address) if main else None,
        "public_addresses": public,
        "behind_nat": main.behind_nat if main else None,
        "mapping": main.mapping if main else None,
        "filtering": main.filtering if main else None,
        "hairpinning": main.hairpinning if main else None,
        "port_preservation": main.port_preservation if main else None,
        "mapping_consistent": main.mapping_consistent if main else None,
        "nat_type": main.nat_type if main else "unknown",
        "classic_type": main.classic_type if main else "Unknown",
        "cgnat": d.cgnat.behind if d.cgnat else None,
        "cgnat_evidence": d.cgnat.evidence if d.cgnat else None,
        "families": {
            f"ipv{f}": _family(p, d.classes.get(f), d.paths.get(f)) for f, p in d.families.items()
        },
        "stun": _stun_servers(d),
        "streams": [s.to_dict() for s in d.streams],
        "turn": [r.to_dict() for r in d.turn],
        "candidates": [c for c in (d.gathered.to_dict()["candidates"] if d.gathered else [])],
        "gathering": (
            {k: val for k, val in d.gathered.to_dict().items() if k != "candidates"}
            if d.gathered
            else None
        ),
        "interfaces": [
            {
                "name": i.name,
                "addresses": list(i.addresses),
                "tunnel": i.tunnel,
                "loopback": i.loopback,
                "default_route": i.default_route,
            }
            for i in d.interfaces
        ],
        "multiple_uplinks": sum(1 for i in d.interfaces if i.default_route) > 1,
        "lifetime": (
            {
                "alive_s": d.lifetime.alive_s,
                "expired_s": d.lifetime.expired_s,
                "samples": {f"{k:g}": val for k, val in d.lifetime.samples.items()},
                "error": d.lifetime.error,
            }
            if d.lifetime
            else None
        ),
        **_ipv6_fields(d),
        "port_allocation": _allocation(d.allocation),
        "port_mapping": d.port_mapping.to_dict() if d.port_mapping else None,
        "problems": list(d.problems),
        "verdict": {
            "direct_p2p": v.direct_p2p if v else "unlikely",
            "relay_required": v.relay_required if v else True,
            "relay_working": v.relay_working if v else None,
            "compatible_peer_types": list(v.compatible_peer_types) if v else [],
            "explanation": v.explanation if v else "no diagnosis",
            "actions": list(v.actions) if v else [],
            "outcome": v.outcome if v else "not-measured",
            "ipv6_direct": v.ipv6_direct if v else None,
            "port_mapping_peer_types": list(v.port_mapping_peer_types) if v else [],
        },
        "exit_status": d.exit_status,
    }


def _plain(text: str, **_: Any) -> str:
    return text


def _yn(value: bool | None, style: Style) -> str:
    if value is None:
        return style("unknown", fg="yellow")
    return style("yes", fg="green") if value else style("no", fg="red")


def _ipv6_lines(d: Diagnosis) -> list[str]:
    fields = _ipv6_fields(d)
    lines = []
    kind, c6 = fields["ipv6_translation"], d.classes.get(6)
    if kind is not None and c6 is not None:
        names = {"none": "none", "prefix": "prefix only (NPTv6)", "address": "NAT66"}
        lines.append(f"  IPv6 translation      {names[kind]}; {c6.nat_type}")
    n = d.nat64
    if n is not None:
        found = ", ".join(str(p) for p in n.prefixes) or (n.error or "none (no DNS64 seen)")
        if n.ipv4 is not None:
            found += f"; IPv4 through it: {n.ipv4.mapped if n.ipv4.ok else 'no answer'}"
        lines.append(f"  NAT64 prefix          {found}")
    return lines


def to_text(d: Diagnosis, style: Style = _plain) -> str:
    """The human report."""
    main, v = d.main, d.verdict
    lines = [style("natkit diagnose", bold=True) + f"  ({d.duration_s:.2f} s)", ""]
    reach = bool(main and main.udp)
    finding = d.finding
    why = f" — {_FINDING[finding.finding]}: {finding.evidence}" if finding and not reach else ""
    lines.append(f"  UDP to STUN servers   {_yn(reach, style)}{why}")
    for f, c in sorted(d.classes.items()):
        lines.append(
            f"  IPv{f} public address   {c.public_address or '-'}"
            + ("" if c.behind_nat is None else ("  (behind NAT)" if c.behind_nat else "  (no NAT)"))
        )
    if main is not None:
        lines += [
            f"  mapping               {main.mapping or style('unknown', fg='yellow')}",
            f"  filtering             {main.filtering or style('unknown', fg='yellow')}",
            f"  NAT type              {style(main.nat_type, bold=True)}"
            + ("" if main.classic_type.lower() == main.nat_type else f" ({main.classic_type})"),
            "  hairpinning           "
            + ("n/a (no NAT)" if main.behind_nat is False else _yn(main.hairpinning, style)),
            f"  port preservation     {_yn(main.port_preservation, style)}",
            f"  same mapping for all  {_yn(main.mapping_consistent, style)}",
        ]
    lines += _ipv6_lines(d)
    if d.cgnat is not None and d.cgnat.behind is not None:
        detail = f" — {d.cgnat.evidence}" if d.cgnat.evidence else " (every hop answered)"
        lines.append(f"  carrier-grade NAT     {_yn(d.cgnat.behind, style)}{detail}")
    if d.allocation is not None:
        a = d.allocation
        said = a.pattern or style("unknown", fg="yellow")
        said += f" (stride {a.stride})" if a.stride else ""
        if a.prediction_helps is not None:
            said += "; port prediction " + ("can help" if a.prediction_helps else "would not help")
        lines.append(f"  port allocation       {said}")
    if d.lifetime is not None:
        lines.append(f"  binding lifetime      {d.lifetime.summary()}")
    for s in d.streams:
        state = (
            style("answers STUN", fg="green")
            if s.answered
            else (style(s.error or "failed", fg="red"))
        )
        lines.append(f"  {s.transport}://{s.address}".ljust(30) + f" {state}")
    for r in d.turn:
        state = (
            style("works", fg="green") + f" (relay {r.relayed_address})"
            if r.ok
            else (style(r.error or "failed", fg="red"))
        )
        lines.append(f"  TURN {r.url}: {state}")
    if d.gathered is not None:
        kinds: dict[str, int] = {}
        for cand in d.gathered.candidates:
            kinds[cand.type] = kinds.get(cand.type, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        lines.append(
            f"  ICE candidates        {summary}"
            + (f"  ({d.gathered.error})" if d.gathered.error else "")
        )
    pm = d.port_mapping
    if pm is not None:
        offered = ", ".join(PROTOCOL_NAMES[p] for p in pm.offered) or "none"
        lines.append(f"  port mapping          {offered} (gateway {pm.gateway or '-'})")
        if pm.mapped is not None:
            m = pm.mapped
            name, outside = PROTOCOL_NAMES[m.protocol], m.external or "-"
            lines.append(
                f"  mapped port           {name} {m.internal} -> {outside}"
                f": {m.evidence or m.error or '-'}" + ("; deleted" if m.deleted else "")
            )
    tunnels = [i.name for i in d.interfaces if i.tunnel]
    if tunnels:
        lines.append(f"  VPN/tunnel interfaces {', '.join(tunnels)} (traffic may leave via them)")
    if sum(1 for i in d.interfaces if i.default_route) > 1:
        uplinks = ", ".join(i.name for i in d.interfaces if i.default_route)
        lines.append(f"  several uplinks       {uplinks}")
    if d.problems:
        lines += ["", style("Problems", bold=True)] + [f"  - {p}" for p in d.problems]
    if v is not None:
        lines += ["", *_verdict_lines(d, style)]
        if v.actions:
            lines += ["", style("What to do", bold=True)] + [f"  - {a}" for a in v.actions]
    return "\n".join(lines)


_FINDING = {
    "answered": "answered",
    "blocked": "UDP is blocked",
    "no-server": "no STUN server there",
    "no-answer": "no answer at all",
}
_OUTCOME = {
    "direct": ("most calls connect directly", "green"),
    "relay": ("most calls need the relay, which works", "yellow"),
    "no-path": ("most calls need a relay, and none works", "red"),
    "not-measured": ("nothing was measured", "red"),
}


def _verdict_lines(d: Diagnosis, style: Style) -> list[str]:
    v = d.verdict
    assert v is not None
    said, colour = _OUTCOME[v.outcome]
    outcome = f"{style(said, fg=colour, bold=True)} (exit {v.exit_status})"
    if v.outcome == "not-measured":
        return [style("Verdict", bold=True) + f": {outcome}", f"  {v.explanation}"]
    return [
        style("Verdict", bold=True)
        + f": direct P2P {v.direct_p2p}"
        + (", relay required" if v.relay_required else "")
        + f" — {outcome}",
        f"  works directly with peers behind: {', '.join(v.compatible_peer_types) or 'none'}",
        f"  {v.explanation}",
    ]


class ProgressPrinter:
    """Prints one line per step event (to stderr by default), marked and coloured by `style`."""

    MARKS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red")}

    def __init__(self, echo: Callable[[str], None] | None = None, style: Style = _plain) -> None:
        self.echo = echo or _stderr
        self.style = style

    def __call__(self, step: str, status: str, text: str) -> None:
        if status == "start":
            mark = self.style("…", fg="blue")
        else:
            symbol, colour = self.MARKS.get(status, ("·", "white"))
            mark = self.style(symbol, fg=colour)
        self.echo(f"{mark} {text}")


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
