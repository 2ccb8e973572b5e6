"""The interface a TURN engine offers `natkit serve`, and the builtin engine's settings.

One port serves STUN and TURN (as coturn does): the listeners of `natkit.net` route Binding
requests to the Binding handler and every other STUN message (TURN methods, Send indications)
and ChannelData to the engine's `TurnEngine.routes`, with the client's `natkit.net.routes.Link`
(UDP: the listener socket; TCP/TLS: the connection) for what its peers send later. The
``coturn`` engine is a separate process that owns the ports itself, so it has no `TurnEngine`
(`natkit.serve.routing.create_engine` returns None for it).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
from collections.abc import Callable
from typing import Protocol

from natkit.addr import Address, Transport
from natkit.config.cross import validate
from natkit.config.model import Config
from natkit.errors import ConfigError
from natkit.hostaddr import host_addresses, interfaces
from natkit.net.routes import Route
from natkit.turn.allocation import Limits
from natkit.turn.auth import Authenticator
from natkit.turn.peer_config import peer_policy
from natkit.turn.peers import PeerPolicy
from natkit.turn.relay import Relay, RelaySettings
from natkit.turn.shared_quota import Quota, SharedQuota

__all__ = [
    "HOST_REFRESH_INTERVAL",
    "HostAddressRefresh",
    "TurnEngine",
    "build_relay",
    "host_relay_ips",
    "parse_ports",
    "relay_settings",
    "worker_count",
    "worker_ports",
]

log = logging.getLogger("natkit.turn.engine")

HOST_REFRESH_INTERVAL = 30.0  # seconds between enumerations of this host's addresses


class TurnEngine(Protocol):
    """What `natkit serve` runs in each worker; its routes return at once (no awaiting per
    packet)."""

    async def start(self) -> None:
        """Start timers; call inside the running loop before the listeners start."""

    async def close(self) -> None:
        """Free every allocation and relay socket."""

    async def drain(
        self, timeout: float | None = None, elsewhere: Callable[[], int] | None = None
    ) -> None:
        """Refuse new allocations; return when the existing ones ended or `timeout` passed."""

    def routes(self) -> tuple[Route, Route]:
        """The routes for STUN methods other than Binding, and for ChannelData."""

    def connection_lost(self, source: Address, local: Address, transport: Transport) -> None:
        """A TCP/TLS client connection closed (RFC 8656 §7: its allocation goes with it)."""

    def sync_gauges(self) -> None:
        """Write the allocation/permission/channel gauges into the worker's metrics row."""


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


def worker_count(config: Config) -> int:
    """``stun.workers`` resolved ("auto": one per CPU), as `natkit.serve.workers` does."""
    workers = config.stun.workers
    return max(1, os.cpu_count() or 1) if workers == "auto" else max(1, int(workers))


def worker_ports(config: Config, worker: int, workers: int) -> tuple[int, int]:
    """Worker `worker`'s contiguous 1/`workers` slice of ``turn.relay.ports`` (the last takes
    the remainder). Contiguous rather than every N-th port: a slice is one range an operator can
    read in `ss` output or a firewall rule, and a pool is a plain LOW-HIGH either way. A range
    with fewer ports than workers is a ConfigError (a worker would have none)."""
    low, high = parse_ports(config)
    size = high - low + 1
    if size < workers:
        raise ConfigError(
            f"turn.relay.ports {config.turn.relay.ports} has {size} port(s) for {workers} "
            "workers: each worker needs its own slice; widen the range or lower stun.workers",
            file=config.source,
            path="turn.relay.ports",
        )
    share = size // workers
    first = low + worker * share
    return first, high if worker == workers - 1 else first + share - 1


def relay_settings(config: Config, worker: int = 0, workers: int | None = None) -> RelaySettings:
    """Relay IPs per family: ``turn.relay.address`` for its family, else the first concrete
    listener IP of each family, else (only wildcard listeners) this host's own address.
    `worker` of `workers` (default 1: a relay alone) allocates from its own port slice."""
    turn = config.turn
    pool_ports = worker_ports(config, worker, workers or 1)
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
        pool_ports=pool_ports,
        lifetime_default=turn.lifetime.default,
        lifetime_max=turn.lifetime.max,
        quota_per_user=turn.quota.per_user,
        quota_total=turn.quota.total,
        software=config.stun.software,
        limits=Limits(turn.limits.permissions_per_allocation, turn.limits.channels_per_allocation),
        peers_per_request=turn.limits.peers_per_request,
        tcp_connections=turn.limits.tcp_connections_per_allocation,
    )


def build_relay(
    config: Config,
    *,
    rng: random.Random | None = None,
    nonce_key: bytes | None = None,
    worker: int = 0,
    quota: SharedQuota | None = None,
    counting: Quota | None = None,
) -> Relay:
    """The sans-IO core for `config` (ConfigError for what it cannot serve); `worker` picks
    the port slice, `quota` is the supervisor's server-wide table (None: this relay alone);
    `counting`, if given, counts the quotas instead (a fleet's, `natkit.cluster.quota`)."""
    validate(config)  # the load-time rules, for a Config built in Python: no open relay, ...
    auth = config.turn.auth
    authenticator = Authenticator(
        config.turn.realm,
        users=auth.users,
        secret=auth.secret,
        nonce_lifetime=auth.nonce_lifetime,
        nonce_key=nonce_key,
    )
    worker_ports(config, 0, worker_count(config))  # `serve` calls this first: fail at start
    settings = relay_settings(config, worker, None if quota is None else quota.workers)
    view: Quota | None = None if quota is None else quota.view(worker)
    return Relay(settings, authenticator, peer_policy(config), rng, counting or view)
