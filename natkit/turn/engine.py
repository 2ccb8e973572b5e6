"""The interface a TURN engine offers the STUN listeners, and the builtin engine's settings.

One port serves STUN and TURN (as coturn does): the listeners of `natkit.stun.server` answer
Binding requests themselves and hand every other datagram or stream frame (TURN methods, Send
indications, ChannelData) to the engine through `TurnEngine.datagram`, with a `reply` callable
that sends on the same socket (UDP: to the source; TCP/TLS: on the same connection). The
``coturn`` engine is a separate process that owns the ports itself, so it has no `TurnEngine`:
`create_engine` returns None for it.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Callable
from typing import Protocol

from natkit.addr import Address, Transport
from natkit.config.cross import validate
from natkit.config.model import Config
from natkit.errors import ConfigError
from natkit.hostaddr import host_addresses, interfaces
from natkit.turn.allocation import Limits
from natkit.turn.auth import Authenticator
from natkit.turn.peer_config import peer_policy
from natkit.turn.peers import PeerPolicy
from natkit.turn.relay import Relay, RelaySettings

__all__ = [
    "HOST_REFRESH_INTERVAL",
    "HostAddressRefresh",
    "Reply",
    "TurnEngine",
    "build_relay",
    "create_engine",
    "host_relay_ips",
    "parse_ports",
    "relay_settings",
]

Reply = Callable[[bytes], object]  # return value ignored (sendto returns a count)

log = logging.getLogger("natkit.turn.engine")

HOST_REFRESH_INTERVAL = 30.0  # seconds between enumerations of this host's addresses


class TurnEngine(Protocol):
    """What the STUN listeners call; every method returns at once (no awaiting per packet)."""

    async def start(self) -> None:
        """Start timers; call inside the running loop before the first `datagram`."""

    async def close(self) -> None:
        """Free every allocation and relay socket."""

    def datagram(
        self, data: bytes, source: Address, local: Address, transport: Transport, reply: Reply
    ) -> None:
        """One UDP datagram or one stream frame (STUN or ChannelData) from a client."""

    def channel_data(self, data: bytes, client: tuple[str, int], local: Address) -> None:
        """One ChannelData datagram (first byte 0x40-0x4F) from a UDP client: the media path,
        kept free of per-packet objects."""

    def connection_lost(self, source: Address, local: Address, transport: Transport) -> None:
        """A TCP/TLS client connection closed (RFC 8656 §7: its allocation goes with it)."""


class HostAddressRefresh:
    """Keeps a peer policy's host addresses current while serving: wildcard listeners name no
    address, so the own-address rule needs the interfaces' addresses, and DHCP, SLAAC or a VPN
    change them. Call it from a timer with `now`; it enumerates at most every
    `interval` seconds (~0.4 ms each) and swaps the set in only when it changed."""

    def __init__(
        self,
        policy: PeerPolicy,
        *,
        interval: float = HOST_REFRESH_INTERVAL,
        enumerate_: Callable[[], tuple[str, ...]] = host_addresses,
        now: float = 0.0,
    ) -> None:
        self.policy = policy
        self.interval = interval
        self.enumerate = enumerate_
        self.due = now + interval
        self.current: tuple[str, ...] | None = None

    def __call__(self, now: float) -> bool:
        """Refresh if due; True when the policy's host set was replaced."""
        if now < self.due:
            return False
        self.due = now + self.interval
        try:
            found = self.enumerate()
        except OSError as err:  # keep the last set: refusing less would be the wrong way
            log.warning("cannot list this host's addresses (own-address rule kept): %s", err)
            return False
        if found == self.current:
            return False
        if self.current is not None:
            log.info("this host's addresses changed: %s", ", ".join(found))
        self.current = found
        self.policy.replace_host_addresses(found)
        return True


def parse_ports(config: Config) -> tuple[int, int]:
    """``turn.relay.ports`` as (low, high): parsed once, at load (`PortRange`)."""
    ports = config.turn.relay.port_range
    return ports.low, ports.high


def host_relay_ips() -> dict[int, str]:
    """With only wildcard listeners: per family, this host's address on the interface holding
    the default route, else on any other non-loopback interface (what a peer could reach)."""
    found: dict[int, str] = {}
    ranked = sorted(interfaces(), key=lambda i: (i.loopback, i.tunnel, not i.default_route))
    for iface in ranked:
        if iface.loopback:
            continue
        for text in iface.addresses:
            ip = ipaddress.ip_interface(text).ip
            if not (ip.is_loopback or ip.is_link_local or ip.is_multicast):
                found.setdefault(ip.version, str(ip))
    return found


def relay_settings(config: Config) -> RelaySettings:
    """Relay IPs per family: ``turn.relay.address`` for its family, else the first concrete
    listener IP of each family, else (only wildcard listeners) this host's own address."""
    turn = config.turn
    relay_ips: dict[int, str] = {}
    if turn.relay.address:
        relay_ips[ipaddress.ip_address(turn.relay.address).version] = turn.relay.address
    for uri in config.stun.listen:
        ip = ipaddress.ip_address(uri.host)
        if not ip.is_unspecified:
            relay_ips.setdefault(ip.version, uri.host)
    if not relay_ips:
        relay_ips = host_relay_ips()
    if not relay_ips:
        raise ConfigError(
            "the builtin TURN engine needs a relay IP: set turn.relay.address "
            "(every listener is a wildcard address and this host has no global address)",
            file=config.source,
            path="turn.relay.address",
        )
    external: dict[int, str] = {}
    if turn.relay.external_address:
        external[ipaddress.ip_address(turn.relay.external_address).version] = (
            turn.relay.external_address
        )
    return RelaySettings(
        relay_ips=relay_ips,
        external_ips=external,
        ports=parse_ports(config),
        lifetime_default=turn.lifetime.default,
        lifetime_max=turn.lifetime.max,
        quota_per_user=turn.quota.per_user,
        quota_total=turn.quota.total,
        software=config.stun.software,
        limits=Limits(turn.limits.permissions_per_allocation, turn.limits.channels_per_allocation),
        peers_per_request=turn.limits.peers_per_request,
    )


def build_relay(
    config: Config, *, rng: random.Random | None = None, nonce_key: bytes | None = None
) -> Relay:
    """The sans-IO core for `config` (ConfigError for what it cannot serve)."""
    validate(config)  # the load-time rules, for a Config built in Python: no open relay, ...
    auth = config.turn.auth
    authenticator = Authenticator(
        config.turn.realm,
        users=auth.users,
        secret=auth.secret,
        nonce_lifetime=auth.nonce_lifetime,
        nonce_key=nonce_key,
    )
    return Relay(relay_settings(config), authenticator, peer_policy(config), rng)


def create_engine(
    config: Config, counters: list[int] | None = None, *, nonce_key: bytes | None = None
) -> TurnEngine | None:
    """The engine the STUN listeners feed, or None (TURN off, or coturn serving it);
    `counters` is the worker's metrics row, where the engine counts its refusals; `nonce_key`
    the key shared by every worker (None: a random one of its own)."""
    if not config.turn.enabled or config.turn.engine != "builtin":
        return None
    from natkit.turn.builtin import BuiltinTurn

    return BuiltinTurn(config, relay=build_relay(config, nonce_key=nonce_key), counters=counters)
