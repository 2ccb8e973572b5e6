"""TURN allocation state, sans-IO: allocations, permissions, channels, their lifetimes, ports.

Theory of operation. An `Allocation` is keyed twice: by the client's 5-tuple (what a request or
ChannelData arrives on, RFC 8656 §2.2) and by its relayed transport address (what a peer's packet
arrives on). `AllocationTable` keeps both indexes, the per-user counts for quotas and the relay
`PortPool`, and is the only place that creates or frees allocations, so the indexes never drift.

Every lifetime is an absolute expiry on the caller's clock (`now`, seconds). Nothing here reads a
clock or draws randomness on its own: the relay passes `now` in and owns the `random.Random`.

Lifetimes (RFC 8656):
- allocation: granted per §7.2 / §8 (`grant_lifetime`), refreshed by Refresh;
- permission: 300 s (§9), per peer IP, refreshed by CreatePermission or ChannelBind;
- channel binding: 600 s (§12), refreshed by a ChannelBind for the same number and peer. After it
  expires the number and the peer stay reserved for another 300 s (§12: "MUST NOT be rebound to a
  different transport address" for 5 minutes), so a late ChannelData cannot reach a new peer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import NamedTuple

from natkit.addr import Address, Transport

__all__ = [
    "CHANNEL_LIFETIME",
    "CHANNEL_QUARANTINE",
    "PERMISSION_LIFETIME",
    "Allocation",
    "AllocationTable",
    "Channel",
    "FiveTuple",
    "PortPool",
    "grant_lifetime",
]

PERMISSION_LIFETIME = 300.0  # RFC 8656 §9
CHANNEL_LIFETIME = 600.0  # RFC 8656 §12
CHANNEL_QUARANTINE = 300.0  # RFC 8656 §12: no rebinding to another peer for 5 minutes


class FiveTuple(NamedTuple):
    """The client side of an allocation (RFC 8656 §2.2): client, server address, transport."""

    client: Address
    local: Address
    transport: Transport


@dataclass(slots=True)
class Channel:
    number: int
    peer: Address
    expires: float


def grant_lifetime(requested: int | None, default: int, maximum: int) -> int:
    """RFC 8656 §7.2 (and §8 for Refresh): min(requested, max), but not below the default.

    The default is itself capped by the maximum, so a config with default > max stays sane.
    """
    default = min(default, maximum)
    if requested is None:
        return default
    return max(default, min(requested, maximum))


@dataclass(slots=True, eq=False)
class Allocation:
    """One allocation: who owns it, where it relays from, what it may send to."""

    five_tuple: FiveTuple
    relay: Address
    """The relay socket's local address (what `OpenRelay` bound)."""
    advertised: Address
    """XOR-RELAYED-ADDRESS: `relay`, or the external address behind a 1:1 NAT."""
    username: str
    user: str
    """The quota key: the user name (for REST credentials the part after ``expiry:``)."""
    key: bytes
    """Long-term key of `username`: signs every response for this allocation (§7.2)."""
    expires: float
    transaction_id: bytes = b""
    """The Allocate transaction that created it: a retransmit gets the same success (§7.2)."""
    dont_fragment: bool = False
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    peer_channels: dict[Address, Channel] = field(default_factory=dict)

    @property
    def family(self) -> int:
        return self.relay.family

    def permitted(self, ip: str, now: float) -> bool:
        expiry = self.permissions.get(ip)
        return expiry is not None and expiry > now

    def permit(self, ip: str, now: float) -> None:
        self.permissions[ip] = now + PERMISSION_LIFETIME

    def can_bind(self, number: int, peer: Address) -> bool:
        """RFC 8656 §12.2 rebinding rules: a number keeps its peer and a peer keeps its number
        (also during the quarantine after expiry); anything else is a 400."""
        bound = self.channels.get(number)
        if bound is not None and bound.peer != peer:
            return False
        other = self.peer_channels.get(peer)
        return other is None or other.number == number

    def bind(self, number: int, peer: Address, now: float) -> None:
        """Install or refresh a binding; also installs/refreshes the peer's permission."""
        channel = self.channels.get(number)
        if channel is None:
            channel = Channel(number, peer, 0.0)
            self.channels[number] = channel
            self.peer_channels[peer] = channel
        channel.expires = now + CHANNEL_LIFETIME
        self.permit(peer.host, now)

    def channel_peer(self, number: int, now: float) -> Address | None:
        """The peer a ChannelData on `number` goes to, if bound, unexpired and permitted."""
        channel = self.channels.get(number)
        if channel is None or channel.expires <= now:
            return None
        peer = channel.peer
        return peer if self.permitted(peer.host, now) else None

    def expire(self, now: float) -> None:
        """Drop expired permissions and channels whose quarantine is over."""
        for ip in [ip for ip, exp in self.permissions.items() if exp <= now]:
            del self.permissions[ip]
        gone = [c for c in self.channels.values() if c.expires + CHANNEL_QUARANTINE <= now]
        for channel in gone:
            del self.channels[channel.number]
            del self.peer_channels[channel.peer]


class PortPool:
    """Free relay ports of one IP within LOW-HIGH; random picks (RFC 8656 §7.2 wants relay
    ports hard to guess, RFC 6056), falling back to a scan when the range is nearly full."""

    __slots__ = ("_used", "high", "low", "rng")

    def __init__(self, low: int, high: int, rng: random.Random) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad relay port range {low}-{high}")
        self.low, self.high, self.rng = low, high, rng
        self._used: set[int] = set()

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def take(self, even: bool = False) -> int | None:
        """A free port (an even one for EVEN-PORT, §7.2), marked used; None when none is left."""
        if len(self._used) >= self.size:
            return None
        for _ in range(16):
            port = self.rng.randint(self.low, self.high)
            if even:
                port &= ~1
            if port >= self.low and port not in self._used:
                self._used.add(port)
                return port
        start = self.rng.randint(self.low, self.high)
        for offset in range(self.size):
            port = self.low + (start - self.low + offset) % self.size
            if port not in self._used and not (even and port & 1):
                self._used.add(port)
                return port
        return None

    def release(self, port: int) -> None:
        self._used.discard(port)


class AllocationTable:
    """Every allocation of one relay, indexed by 5-tuple and by relayed address."""

    def __init__(self, pools: dict[str, PortPool]) -> None:
        self.pools = pools
        """Port pool per relay IP."""
        self.by_five_tuple: dict[FiveTuple, Allocation] = {}
        self.by_relay: dict[Address, Allocation] = {}
        self.per_user: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.by_five_tuple)

    def add(self, allocation: Allocation) -> None:
        self.by_five_tuple[allocation.five_tuple] = allocation
        self.by_relay[allocation.relay] = allocation
        self.per_user[allocation.user] = self.per_user.get(allocation.user, 0) + 1

    def remove(self, allocation: Allocation) -> None:
        if self.by_five_tuple.get(allocation.five_tuple) is not allocation:
            return
        del self.by_five_tuple[allocation.five_tuple]
        del self.by_relay[allocation.relay]
        count = self.per_user[allocation.user] - 1
        if count:
            self.per_user[allocation.user] = count
        else:
            del self.per_user[allocation.user]
        pool = self.pools.get(allocation.relay.host)
        if pool is not None:
            pool.release(allocation.relay.port)

    def move(self, allocation: Allocation, relay: Address, advertised: Address) -> None:
        """Give `allocation` another relay address (its first port could not be bound)."""
        del self.by_relay[allocation.relay]
        allocation.relay, allocation.advertised = relay, advertised
        self.by_relay[relay] = allocation

    def expired(self, now: float) -> list[Allocation]:
        return [a for a in self.by_five_tuple.values() if a.expires <= now]
