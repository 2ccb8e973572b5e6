"""IPv6 peers in the NAT matrix: the IPv6 STUN server, the prediction rule and IPv6-only peers.

A topology with IPv6 LANs (`natkit.lab.ipv6`) gets a second `natkit serve` in node `server`:
STUN on [2001:db8::10]:3478 with the RFC 5780 alternate [2001:db8::11]:3479, so diagnose in
every peer measures IPv6 too. The prediction then has one rule more than the IPv4 table
(`natkit.diag.verdict.COMPATIBLE`): two peers whose IPv6 is untranslated (`verdict.ipv6_direct`)
connect directly whatever their IPv4 NATs do, because ICE pairs their IPv6 host candidates and
each side's outbound checks open its own stateful firewall. A translated IPv6 address (NPTv6,
NAT66) is never offered as a candidate (aioice asks STUN for server-reflexive candidates over
IPv4 only), so it adds no direct path.

An IPv6-only peer reaches the IPv4 rendezvous through NAT64 at its synthesized address and
gathers host candidates only. aiortc's STUN/TURN URLs take no IPv6 literal and the peer has no
name it could resolve without the lab's DNS64 (which the host's resolver is not), so its relay
run is skipped and said so.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from natkit.errors import LabError

__all__ = [
    "SERVER6",
    "PeerView",
    "diagnose_args",
    "has_ipv6",
    "ipv6_only",
    "only_args",
    "predict",
    "serving",
    "view",
]

SERVER6, ALTERNATE6 = "2001:db8::10", "2001:db8::11"
NO_RELAY = (
    "relay not run: the IPv6-only peer would need a TURN URL with an IPv6 literal or a name "
    "its resolver knows, and aiortc's URLs take no IPv6 literal"
)


@dataclass(frozen=True, slots=True)
class PeerView:
    """What the prediction needs from one peer's diagnose report."""

    nat_type: str | None
    ipv4: bool | None
    """udp.ipv4: IPv4 UDP worked (False: none, e.g. an IPv6-only peer)."""
    ipv6_direct: bool | None
    """verdict.ipv6_direct: IPv6 without translation."""
    exhausted: bool = False
    """port_allocation.exhausted: the NAT made no new mapping (a CGNAT port block used up)."""
    mapped: bool = False
    """port_mapping: the gateway offers PCP, NAT-PMP or UPnP (the peer runs p2p --map-port)."""


def view(report: dict[str, Any] | None) -> PeerView | None:
    if not isinstance(report, dict) or not report.get("nat_type"):
        return None
    udp, verdict = report.get("udp") or {}, report.get("verdict") or {}
    ports = report.get("port_allocation")
    exhausted = isinstance(ports, dict) and ports.get("exhausted") is True
    offered = report.get("port_mapping")
    mapped = isinstance(offered, dict) and any(offered.get(p) for p in ("pcp", "natpmp", "upnp"))
    return PeerView(
        str(report["nat_type"]), udp.get("ipv4"), verdict.get("ipv6_direct"), exhausted, mapped
    )


def predict(a: PeerView | None, b: PeerView | None) -> bool | None:
    """Direct expected: both IPv6 untranslated, else the IPv4 table on the IPv4 types (a peer
    without IPv4 UDP counts as udp-blocked there, and so does one whose NAT makes no new
    mappings)."""
    from natkit.p2p.matrix import predict_direct

    if a is None or b is None:
        return None
    if a.ipv6_direct and b.ipv6_direct:
        return True

    def v4(p: PeerView) -> str | None:
        if p.exhausted or (p.ipv4 is False and p.ipv6_direct is not None):
            return "udp-blocked"
        return p.nat_type

    return predict_direct(v4(a), v4(b), a_mapped=a.mapped, b_mapped=b.mapped)


def has_ipv6(lab: Any) -> bool:
    return any("lan6" in n for n in lab.state.nodes.values())


def ipv6_only(lab: Any, node: str) -> bool:
    addresses = lab.state.nodes[node].get("addresses", [])
    return bool(addresses) and all(ipaddress.ip_address(a).version == 6 for a in addresses)


def diagnose_args(lab: Any, node: str) -> list[str]:
    """The IPv6 STUN server, and the node's DNS64 (RFC 7050 discovery) when its LAN has one."""
    if not has_ipv6(lab):
        return []
    dns = lab.state.nodes[node].get("dns")
    return ["--stun", f"[{SERVER6}]:3478", *(["--dns64", dns] if dns else [])]


def _nat64(ipv4: str) -> str:
    from natkit.lab.ipv6 import NAT64_PREFIX

    packed = NAT64_PREFIX.network_address.packed[:12] + ipaddress.IPv4Address(ipv4).packed
    return str(ipaddress.IPv6Address(packed))


def only_args(server: str, signal_port: int) -> list[str]:
    """`natkit p2p` options of an IPv6-only peer (direct run): rendezvous through NAT64."""
    return ["--signal", f"http://[{_nat64(server)}]:{signal_port}"]


def serve_config() -> dict[str, Any]:
    return {
        "version": 1,
        "stun": {
            "listen": [f"udp://[{SERVER6}]:3478"],
            "alternate": f"[{ALTERNATE6}]:3479",
            "workers": 1,
        },
        "metrics": {"listen": None},
        "logging": {"level": "warning"},
    }


def _wait(lab: Any, proc: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    sock = lab.socket("server", socket.AF_INET6)
    sock.settimeout(0.1)
    request = bytes.fromhex("000100002112a442") + b"natkit-ipv6!"
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            sock.sendto(request, (SERVER6, 3478))
            with contextlib.suppress(TimeoutError, ConnectionRefusedError):
                sock.recvfrom(1500)
                return
    finally:
        sock.close()
    raise LabError("matrix: the IPv6 natkit serve did not start in node server")


@contextlib.contextmanager
def serving(lab: Any, tmp: Path) -> Iterator[None]:
    """The IPv6 STUN server for the block, when the topology has IPv6 LANs."""
    if not has_ipv6(lab):
        yield
        return
    (tmp / "serve6.yaml").write_text(yaml.safe_dump(serve_config()))
    argv = [sys.executable, "-m", "natkit", "serve", "-c", str(tmp / "serve6.yaml")]
    proc = lab.spawn("server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lab, proc)
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
