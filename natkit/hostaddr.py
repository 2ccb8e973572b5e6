"""This host's network interfaces and addresses (pure enumeration, no protocol knowledge).

Serving needs the host's own addresses (a TURN relay must not relay into them: with wildcard
listeners no listener names them) and diagnosing needs the interfaces a WebRTC agent would use;
both read them here, so `natkit.turn` never depends on `natkit.diag`.

Interfaces come from ifaddr (aioice's own dependency). VPN/tunnel interfaces are flagged by the
kernel's link type (/sys/class/net/NAME/type: tun/wireguard are ARPHRD_NONE, ppp, ipip, gre, sit)
and by well-known names (tun*, wg*, tailscale*, …). Several default routes mean several uplinks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Interface", "default_route_interfaces", "host_addresses", "interfaces"]

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
class Interface:
    name: str
    addresses: tuple[str, ...]
    """``IP/PREFIX`` strings, link-local IPv6 left out."""
    tunnel: bool
    """Looks like a VPN or tunnel (link type or name)."""
    loopback: bool
    default_route: bool


def _adapter_ips() -> list[tuple[str, list[tuple[str, int]]]]:
    """(interface name, [(ip, prefix length)]) for every interface, as ifaddr reports them."""
    import ifaddr  # imported late: the CLI's start-up stays fast

    out = []
    for adapter in ifaddr.get_adapters():
        ips = []
        for ip in adapter.ips:
            # ifaddr gives IPv6 as (address, flowinfo, scope_id); the scope is not part of it.
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            ips.append((text.split("%")[0], int(ip.network_prefix)))
        out.append((str(adapter.nice_name), ips))
    return out


def host_addresses() -> tuple[str, ...]:
    """Every address on every interface of this host (IPv4 and IPv6, link-local included):
    what a packet sent to it would reach this host's own services with."""
    found = set()
    for _name, ips in _adapter_ips():
        for text, _prefix in ips:
            with contextlib.suppress(ValueError):
                found.add(str(ipaddress.ip_address(text)))
    return tuple(sorted(found))


def interfaces() -> list[Interface]:
    """Local interfaces with their addresses (link-local IPv6 left out), flagged."""
    defaults = default_route_interfaces()
    out = []
    for name, ips in _adapter_ips():
        addrs = []
        for text, prefix in ips:
            with contextlib.suppress(ValueError):
                if not ipaddress.ip_address(text).is_link_local:
                    addrs.append(f"{text}/{prefix}")
        if not addrs:
            continue
        loopback = name == "lo" or all(ipaddress.ip_interface(a).ip.is_loopback for a in addrs)
        out.append(Interface(name, tuple(addrs), _is_tunnel(name), loopback, name in defaults))
    return out


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
