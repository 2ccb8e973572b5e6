"""What a WebRTC/ICE agent on this machine would offer: aioice's candidates, and local interfaces.

Candidates come from aioice (code natkit did not write, as a browser's agent would): host,
server-reflexive (aioice asks one STUN server, IPv4 only) and relayed (one TURN server). aioice
retransmits for ~30 s; here the gathering is cut at the budget and whatever was gathered by then
is reported, with a note.

Interfaces come from ifaddr (aioice's own dependency). VPN/tunnel interfaces are flagged by the
kernel's link type (/sys/class/net/NAME/type: tun/wireguard are ARPHRD_NONE, ppp, ipip, gre, sit)
and by well-known names (tun*, wg*, tailscale*, …): traffic to the STUN server may leave through
them, and the peer then sees the VPN's exit. Several default routes mean several uplinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Candidate",
    "GatherResult",
    "Interface",
    "default_route_interfaces",
    "gather",
    "interfaces",
]

_TUNNEL_LINK_TYPES = {
    65534: "tun",
    512: "ppp",
    768: "ipip",
    769: "ip6ip6",
    776: "sit",
    778: "gre",
    823: "ip6gre",
}
_TUNNEL_NAMES = re.compile(
    r"^(tun|tap|wg|utun|ppp|ipsec|vti|tailscale|zt|nordlynx|proton|gpd|cscotun|vpn)", re.I
)


@dataclass(frozen=True, slots=True)
class Candidate:
    type: str
    """host, srflx, relay (prflx never appears while gathering)."""
    protocol: str
    address: str
    port: int
    priority: int
    foundation: str
    related_address: str | None = None
    related_port: int | None = None


@dataclass(slots=True)
class GatherResult:
    candidates: list[Candidate] = field(default_factory=list)
    stun_server: str | None = None
    turn_server: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    addresses: tuple[str, ...]
    tunnel: bool
    """Looks like a VPN or tunnel (link type or name)."""
    loopback: bool
    default_route: bool


def _candidate(c: Any) -> Candidate:
    return Candidate(
        type=str(c.type),
        protocol=str(c.transport),
        address=str(c.host),
        port=int(c.port),
        priority=int(c.priority),
        foundation=str(c.foundation),
        related_address=c.related_address,
        related_port=c.related_port,
    )


async def gather(
    timeout: float,
    stun: tuple[str, int] | None = None,
    turn: tuple[str, int] | None = None,
    turn_username: str | None = None,
    turn_password: str | None = None,
    turn_transport: str = "udp",
    turn_ssl: bool = False,
) -> GatherResult:
    """Gather ICE candidates with aioice within `timeout` seconds; never raises."""
    from aioice import Connection  # imported late: the CLI's start-up stays fast

    result = GatherResult(
        stun_server=f"{stun[0]}:{stun[1]}" if stun else None,
        turn_server=f"{turn[0]}:{turn[1]}" if turn else None,
    )
    try:
        conn = Connection(
            ice_controlling=True,
            stun_server=stun,
            turn_server=turn,
            turn_username=turn_username,
            turn_password=turn_password,
            turn_transport=turn_transport,
            turn_ssl=turn_ssl,
        )
    except Exception as err:
        result.error = f"aioice: {err}"
        return result
    try:
        try:
            await asyncio.wait_for(conn.gather_candidates(), timeout)
            found = list(conn.local_candidates)
        except TimeoutError:
            # Only the host candidates are sure to exist by now; the servers did not answer.
            protocols = getattr(conn, "_protocols", [])
            found = [p.local_candidate for p in protocols if hasattr(p, "local_candidate")]
            result.error = f"gathering not finished within {timeout:.1f} s (servers silent?)"
        except Exception as err:  # aioice raises plain exceptions for TURN failures
            result.error = f"aioice: {type(err).__name__}: {err}"
            found = list(conn.local_candidates)
        result.candidates = [_candidate(c) for c in found]
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 0.5)
    return result


def default_route_interfaces() -> set[str]:
    """Interfaces holding a default route (IPv4 and IPv6), from /proc."""
    names: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            cols = line.split()
            if len(cols) > 7 and cols[1] == "00000000" and cols[7] == "00000000":
                names.add(cols[0])
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/ipv6_route").read_text().splitlines():
            cols = line.split()
            if len(cols) == 10 and cols[0] == "0" * 32 and cols[1] == "00" and cols[9] != "lo":
                names.add(cols[9])
    return names


def _is_tunnel(name: str) -> bool:
    with contextlib.suppress(OSError, ValueError):
        kind = int(Path(f"/sys/class/net/{name}/type").read_text())
        if kind in _TUNNEL_LINK_TYPES:
            return True
    return bool(_TUNNEL_NAMES.match(name))


def interfaces() -> list[Interface]:
    """Local interfaces with their addresses (link-local IPv6 left out), flagged."""
    import ifaddr

    defaults = default_route_interfaces()
    out = []
    for adapter in ifaddr.get_adapters():
        addrs = []
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            with contextlib.suppress(ValueError):
                if not ipaddress.ip_address(text).is_link_local:
                    addrs.append(f"{text}/{ip.network_prefix}")
        name = str(adapter.nice_name)
        loopback = name == "lo" or (
            all(ipaddress.ip_interface(a).ip.is_loopback for a in addrs) and bool(addrs)
        )
        if not addrs:
            continue
        out.append(Interface(name, tuple(addrs), _is_tunnel(name), loopback, name in defaults))
    return out
