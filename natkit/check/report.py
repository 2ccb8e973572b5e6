"""A browser check's report: diagnose's JSON fields (docs/diagnose-json.md) + ``"source":
"browser"``. Pure.

What natkit measured itself (the mapping and filtering sessions, `natkit.check.ice`) and what
the page measured (its gathered candidates, the TURN relay checks per transport) go through
diagnose's own classifier and verdict (`natkit.diag.classify.nat_type`,
`natkit.diag.verdict.decide`), so the page says the same words as ``natkit diagnose``.
The page's part is remote input: `page_results` keeps only bounded, typed values.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from natkit.addr import Address
from natkit.check.ice import IceSession, filtering_of, mapping_of
from natkit.check.sdp import Offer
from natkit.diag.classify import CLASSIC_NAMES, nat_type
from natkit.diag.verdict import RelayStatus, StreamStatus, decide

__all__ = ["REPORT_VERSION", "TurnResult", "build_report", "page_results"]

REPORT_VERSION = 1
_TRANSPORTS = ("udp", "tcp", "tls")

TurnResult = dict[str, Any]


def _text(value: object, limit: int = 200) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e6:
        return round(float(value), 1)
    return None


def _address(value: object) -> str | None:
    text = _text(value, 60)
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return text if port.isdigit() else None


def page_results(
    body: dict[str, Any],
) -> tuple[list[TurnResult], list[dict[str, Any]], float, bool | None]:
    """The page's TURN checks, gathered candidates, duration and hairpin test (None: not
    tried), each value bounded and typed (anything else is dropped)."""
    turn: list[TurnResult] = []
    raw_turn = body.get("turn")
    for item in raw_turn[:6] if isinstance(raw_turn, list) else []:
        if not isinstance(item, dict) or item.get("transport") not in _TRANSPORTS:
            continue
        turn.append(
            {
                "url": _text(item.get("url")) or "",
                "transport": item["transport"],
                "ok": item.get("ok") is True,
                "allocated": item.get("allocated") is True,
                "relayed_address": _address(item.get("relayed_address")),
                "rtt_ms": _number(item.get("rtt_ms")),
                "error": _text(item.get("error")),
                "method": "browser-data-channel",
            }
        )
    candidates: list[dict[str, Any]] = []
    raw = body.get("candidates")
    for c in raw[:64] if isinstance(raw, list) else []:
        if isinstance(c, dict) and c.get("type") in ("host", "srflx", "prflx", "relay"):
            candidates.append(
                {
                    "type": c["type"],
                    "protocol": "tcp" if c.get("protocol") == "tcp" else "udp",
                    "address": _text(c.get("address"), 80),
                    "port": int(c["port"]) if isinstance(c.get("port"), int) else None,
                    "url": _text(c.get("url")),
                }
            )
    duration = _number(body.get("duration_s")) or 0.0
    hair = body.get("hairpin")
    tried = isinstance(hair, dict) and hair.get("tried") is True
    hairpin = (hair.get("connected") is True) if tried and isinstance(hair, dict) else None
    return turn, candidates, duration, hairpin


def _base(offer: Offer | None, priority: int | None, public: Address) -> Address | None:
    """The browser's host candidate a check came from: the one whose local preference its
    PRIORITY carries, else the only host candidate of its family."""
    if offer is None:
        return None
    hosts = [c for c in offer.candidates if c.type == "host" and c.protocol == "udp"]
    if priority is not None:
        local_pref = (priority >> 8) & 0xFFFF
        for c in hosts:
            if (c.priority >> 8) & 0xFFFF == local_pref:
                return Address(c.address, c.port)
    family = [c for c in hosts if (":" in c.address) == (public.family == 6)]
    return Address(family[0].address, family[0].port) if len(family) == 1 else None


def build_report(
    test_id: str,
    mapping: IceSession | None,
    filtering: IceSession | None,
    mapping_offer: Offer | None,
    turn: list[TurnResult],
    candidates: list[dict[str, Any]],
    duration_s: float,
    *,
    alternate: bool,
    hairpin: bool | None = None,
    ipv6_offered: bool = False,
) -> dict[str, Any]:
    """The report for one test (see the module docstring)."""
    notes: list[str] = []
    kind_map, seen = mapping_of(mapping, alternate) if mapping else (None, {})
    kind_filter = filtering_of(filtering, alternate) if filtering else None
    public = seen.get("p1")
    # IPv6 UDP: did any browser candidate reach natkit's IPv6 socket (None: none offered).
    v6 = [g["v6"] for g in (mapping.observed.values() if mapping else ()) if "v6" in g]
    ipv6 = bool(v6) if ipv6_offered else None
    udp = bool(seen) or any(c["type"] == "srflx" for c in candidates)
    group = next((p for p, g in (mapping.observed.items() if mapping else ()) if g is seen), None)
    base = _base(mapping_offer, group, public) if public is not None else None
    behind_nat = None if public is None or base is None else public != base
    if behind_nat is False:
        kind_map = "endpoint-independent"
    if public is not None and base is None:
        notes.append(
            "the browser showed no host candidate (no default route, or its privacy settings): "
            "no NAT cannot be told from a full cone, nor port preservation measured"
        )
    if not alternate:
        notes.append("the server has no stun.alternate: mapping/filtering partly unknown")
    if filtering is not None and filtering.opener is None and udp:
        notes.append("no check reached the filtering socket: filtering unknown")
    elif filtering is not None and "p3" not in filtering.answered and filtering.opener:
        notes.append("the browser answered no probe, not even the control: filtering unknown")
        kind_filter = None
    kind = nat_type(udp, behind_nat, kind_map, kind_filter)
    relays = [RelayStatus(t["url"], t["transport"], t["ok"], t["error"]) for t in turn]
    streams = [
        StreamStatus(_stream(t["transport"]), t["url"], 0, t["allocated"], t["allocated"])
        for t in turn
        if t["transport"] != "udp"
    ]
    # A hairpin test through a NAT; without one (or without a public address) it says nothing.
    hairpinning = hairpin if behind_nat is not False and public is not None else None
    verdict = decide(
        kind,
        udp=udp,
        eim_known=kind_map == "endpoint-independent",
        relays=relays,
        streams=streams,
        hairpinning=hairpinning,
    )
    classic = CLASSIC_NAMES[kind]
    if behind_nat is False and kind_filter not in (None, "endpoint-independent"):
        classic = (
            "Symmetric UDP Firewall"
            if kind_filter.endswith("port-dependent")
            else ("Restricted UDP Firewall")
        )
    return {
        "version": REPORT_VERSION,
        "source": "browser",
        "id": test_id,
        "duration_s": duration_s,
        "udp": {
            "reachable": udp,
            "ipv4": udp if public is None or public.family == 4 else None,
            "ipv6": ipv6,
            "finding": "answered" if udp else "no-answer",
            "evidence": None if udp else "no ICE check or STUN answer over UDP",
        },
        "public_address": str(public) if public else None,
        "public_addresses": [str(a) for a in ([public] if public else []) + v6[:1]],
        "behind_nat": behind_nat,
        "mapping": kind_map,
        "filtering": kind_filter,
        "hairpinning": hairpinning,
        "port_preservation": None if public is None or base is None else public.port == base.port,
        "mapping_consistent": None if not seen else len(set(seen.values())) == 1,
        "nat_type": kind,
        "classic_type": classic,
        "cgnat": None,
        "cgnat_evidence": None,
        "browser": {
            "mapping_observed": {role: str(a) for role, a in seen.items()},
            "filtering_answered": sorted(filtering.answered) if filtering else [],
            "filtering_probes_sent": filtering.probes_sent if filtering else 0,
            "mapping_group": group,
        },
        "streams": [_stream_item(t) for t in turn if t["transport"] != "udp"],
        "turn": turn,
        "candidates": [c.to_dict() for c in (mapping_offer.candidates if mapping_offer else ())]
        + [c for c in candidates if c["type"] != "host"],
        "problems": notes,
        "verdict": {
            "direct_p2p": verdict.direct_p2p,
            "relay_required": verdict.relay_required,
            "relay_working": verdict.relay_working,
            "compatible_peer_types": list(verdict.compatible_peer_types),
            "explanation": verdict.explanation,
            "actions": list(verdict.actions),
            "outcome": verdict.outcome,
        },
        "exit_status": verdict.exit_status,
    }


def _stream_item(t: TurnResult) -> dict[str, Any]:
    """A TURN check over TCP/TLS as diagnose's `streams` item: an allocation over the stream
    means the connection was made and a STUN server answered on it."""
    hostport = t["url"].split(":", 1)[-1].split("?")[0]
    return {
        "transport": _stream(t["transport"]),
        "address": hostport,
        "connected": t["allocated"],
        "refused": None,
        "answered": t["allocated"],
        "connect_ms": None,
        "error": None if t["allocated"] else t["error"],
    }


def _stream(transport: str) -> Literal["tcp", "tls"]:
    return "tls" if transport == "tls" else "tcp"
