"""A lab topology from a field report: ``natkit lab up --from-report report.json``. Pure.

A user's ``natkit diagnose --json`` (or the browser check's report, ``"source": "browser"``)
says what their NAT does; this builds a single-NAT topology (server + NAT + node ``peer``) whose
NAT has those behaviours, so the broken network is reproduced in CI with one command:

    udp.reachable false / nat_type udp-blocked  → port-restricted NAT + firewall: TCP 80/443 only
    nat_type open (behind_nat false)            → peer on the internet, no NAT
    mapping, filtering                          → the NAT's RFC 4787 behaviours
    cgnat true                                  → a full-cone home NAT behind a carrier NAT that
                                                  has the measured behaviours (the cgnat preset)
    hairpinning                                 → hairpinning (null: off, Linux's default)
    port_preservation false                     → port_preservation: off
    port_allocation.pattern (version 2)         → port_allocation sequential (with the stride)
                                                  or random

What the report leaves unknown (mapping or filtering null while UDP worked) cannot be rebuilt
and is a `TopologyError` naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from natkit.errors import TopologyError
from natkit.lab.topology import BEHAVIOURS, Topology

__all__ = ["load_report", "topology_from_report"]

_SERVER = {"server": {"addresses": ["203.0.113.10", "203.0.113.11"]}}


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a diagnose/check JSON report; TopologyError (one line) if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise TopologyError(f"cannot read report: {err.strerror}", file=str(path)) from None
    except (UnicodeDecodeError, ValueError) as err:
        raise TopologyError(f"not a JSON report: {err}", file=str(path)) from None
    if not isinstance(data, dict) or data.get("version") not in (1, 2) or "nat_type" not in data:
        raise TopologyError(
            "not a natkit diagnose/check report (version 1 or 2 with nat_type)", file=str(path)
        )
    return data


def _behaviour(report: dict[str, Any], key: str, source: str) -> str:
    value = report.get(key)
    if value not in BEHAVIOURS:
        raise TopologyError(
            f"{key}: the report does not say ({value!r}), so the NAT cannot be rebuilt; "
            "diagnose against a server with stun.alternate (RFC 5780) measures it",
            file=source,
        )
    return str(value)


def topology_from_report(report: dict[str, Any], *, source: str = "<report>") -> Topology:
    """The topology that reproduces `report`'s NAT (see the module docstring)."""
    udp = report.get("udp")
    reachable = udp.get("reachable") if isinstance(udp, dict) else None
    kind = report.get("nat_type")
    name = "from-report"
    if reachable is False or kind == "udp-blocked":
        nats: dict[str, Any] = {
            "nat": {
                "type": "port-restricted-cone",
                "firewall": {"udp": False, "tcp_ports": [80, 443]},
            }
        }
        return _build(nats, "nat", "UDP blocked (from a report)", source, name)
    if kind == "open" or report.get("behind_nat") is False:
        raw = {
            "version": 1,
            "name": name,
            "servers": _SERVER,
            "hosts": {"peer": {"behind": "internet"}},
        }
        raw["description"] = "no NAT (from a report)"
        return Topology.from_dict(raw, source=source, default_name=name)
    nat: dict[str, Any] = {
        "mapping": _behaviour(report, "mapping", source),
        "filtering": _behaviour(report, "filtering", source),
        "hairpinning": report.get("hairpinning") is True,
        "port_preservation": "off" if report.get("port_preservation") is False else "on",
    }
    nat |= _allocation(report.get("port_allocation"))
    what = f"{nat['mapping']} mapping, {nat['filtering']} filtering"
    if report.get("cgnat") is True:
        nats = {"carrier": nat, "home": {"type": "full-cone", "upstream": "carrier"}}
        return _build(nats, "home", f"behind carrier-grade NAT: {what} (from a report)", source,
                      name)  # fmt: skip
    return _build({"nat": nat}, "nat", f"{what} (from a report)", source, name)


def _allocation(found: Any) -> dict[str, Any]:
    """Topology keys for the allocation pattern a version 2 report saw (none if it saw none)."""
    if not isinstance(found, dict):
        return {}
    pattern, stride = found.get("pattern"), found.get("stride")
    if pattern == "sequential" and isinstance(stride, int) and 1 <= stride <= 1000:
        return {"port_allocation": "sequential", "port_stride": stride, "port_preservation": "on"}
    if pattern == "random":
        return {"port_allocation": "random", "port_preservation": "on"}
    return {}


def _build(nats: dict[str, Any], behind: str, what: str, source: str, name: str) -> Topology:
    raw = {
        "version": 1,
        "name": name,
        "description": f"peer behind a NAT with {what}" if "UDP" not in what else what,
        "servers": _SERVER,
        "nats": nats,
        "hosts": {"peer": {"behind": behind}},
    }
    return Topology.from_dict(raw, source=source, default_name=name)
