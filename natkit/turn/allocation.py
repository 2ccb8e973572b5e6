"""TURN allocation state, sans-IO: allocations, permissions, channels, their lifetimes, ports.

Theory of operation. An `Allocation` is keyed twice: by the client's 5-tuple (what a request or
ChannelData arrives on, RFC 8656 §2.2) and by its relayed transport address (what a peer's packet
arrives on). `AllocationTable` keeps both indexes, the per-user counts for quotas and the relay
`PortPool`, and is the only place that creates or frees allocations and their relay sockets
(`OpenRelay` / `CloseRelay`): every path that ends an allocation (its lifetime at the sweep or
at a lookup, Refresh 0, a re-allocation over an expired one, the loss of its TCP connection,
shutdown) goes through `AllocationTable.free`, which yields exactly one `CloseRelay`.

Every lifetime is an absolute expiry on the caller's clock (`now`, seconds). Nothing here reads a
clock or draws randomness on its own: the relay passes `now` in and owns the `random.Random`.

Expiry costs O(expired), not O(live): every allocation, permission and channel has one entry in
a heap of (expiry, ...) that `sweep` pops only while the top is due. A refresh only moves the
expiry stored in the object (no heap work on the request path); the stale entry, when it comes
up, is pushed again at the new expiry (lazy invalidation). Entries of freed allocations are
dropped when they come up, or all at once when they outnumber the live ones. `examined` counts
the entries the sweeps looked at (the work, for tests and benchmarks).

Limits (`Limits`, ``turn.limits.*``): permissions and channels per allocation are capped, so an
allocation's memory is bounded; over a cap the request is refused (508, RFC 8656 §7.2's
Insufficient Capacity) before any state changes.

Lifetimes (RFC 8656):
- allocation: granted per §7.2 / §8 (`grant_lifetime`), refreshed by Refresh;
- permission: 300 s (§9), per peer IP, refreshed by CreatePermission or ChannelBind;
- channel binding: 600 s (§12), refreshed by a ChannelBind for the same number and peer. After it
  expires the number and the peer stay reserved for another 300 s (§12: "MUST NOT be rebound to a
  different transport address" for 5 minutes), so a late ChannelData cannot reach a new peer.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import NamedTuple

from natkit.addr import Address, FiveTuple
from natkit.turn.commands import CloseRelay, OpenRelay
from natkit.turn.shared_quota import Quota

__all__ = [
    "CHANNEL_LIFETIME",
    "CHANNEL_QUARANTINE",
    "DEFAULT_LIMITS",
    "PERMISSION_LIFETIME",
    "Allocation",
    "AllocationTable",
    "Channel",
    "FiveTuple",
    "Limits",
    "PortPool",
    "grant_lifetime",
]

PERMISSION_LIFETIME = 300.0  # RFC 8656 §9
CHANNEL_LIFETIME = 600.0  # RFC 8656 §12
CHANNEL_QUARANTINE = 300.0  # RFC 8656 §12: no rebinding to another peer for 5 minutes


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
    freed: bool = False
    """Set by `AllocationTable.free`: its heap entries are dead."""
    scheduled: float = 0.0
    """The expiry of this allocation's live heap entry (a Refresh may shorten the lifetime)."""

    @property
    def family(self) -> int:
        return self.relay.family

    def permitted(self, ip: str, now: float) -> bool:
        expiry = self.permissions.get(ip)
        return expiry is not None and expiry > now

    def permit(self, ip: str, now: float) -> None:
        """Install or refresh; `AllocationTable.permit` is the way in (limits, expiry)."""
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
        """Install or refresh a binding and the peer's permission (through `AllocationTable.bind`,
        which schedules their expiry)."""
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


class PortPool:
    """Free relay ports of one IP within LOW-HIGH; random picks (RFC 8656 §7.2 wants relay
    ports hard to guess, RFC 6056), falling back to a scan when the range is nearly full."""

    __slots__ = ("_blocked", "_used", "high", "low", "rng")

    def __init__(self, low: int, high: int, rng: random.Random) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad relay port range {low}-{high}")
        self.low, self.high, self.rng = low, high, rng
        self._used: set[int] = set()
        self._blocked: dict[int, float] = {}  # port → until when it is not offered

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
        if port not in self._blocked:
            self._used.discard(port)

    def block(self, port: int, until: float) -> None:
        """`port` could not be bound (another process holds it): not offered before `until`."""
        self._used.add(port)
        self._blocked[port] = until

    def unblock(self, now: float) -> None:
        """Offer again the ports whose block is over (the relay's timer calls this)."""
        if self._blocked:
            for port in [p for p, until in self._blocked.items() if until <= now]:
                del self._blocked[port]
                self._used.discard(port)


class Limits(NamedTuple):
    """Per-allocation caps (``turn.limits``): what one client can make the server hold."""

    permissions: int = 64
    channels: int = 64


DEFAULT_LIMITS = Limits()

# Heap entry kinds: what the entry's `key` names.
_ALLOCATION, _PERMISSION, _CHANNEL = 0, 1, 2
_Entry = tuple[float, int, int, Allocation, object]
_COMPACT_MIN = 1024  # below this many heap entries, dead ones are left to the sweep


class AllocationTable:
    """Every allocation of one relay, indexed by 5-tuple and by relayed address."""

    def __init__(
        self, pools: dict[str, PortPool], limits: Limits | None = None, quota: Quota | None = None
    ) -> None:
        self.pools = pools
        self.quota = quota
        """Server-wide quota bookkeeping (`natkit.turn.shared_quota`): released in `free`."""
        """Port pool per relay IP."""
        self.limits = limits or DEFAULT_LIMITS
        self.by_five_tuple: dict[FiveTuple, Allocation] = {}
        self.by_relay: dict[Address, Allocation] = {}
        self.per_user: dict[str, int] = {}
        self.examined = 0
        """Heap entries the sweeps have looked at so far (the sweep's work)."""
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._dead = 0  # heap entries belonging to freed allocations

    def __len__(self) -> int:
        return len(self.by_five_tuple)

    # -- allocations -----------------------------------------------------------------------

    def create(
        self, five_tuple: FiveTuple, ip: str, even: bool, external: str | None, **fields: object
    ) -> tuple[Allocation, OpenRelay] | None:
        """A new allocation on a free port of `ip` (even for EVEN-PORT, §7.2) and the command
        that binds its socket; None when no port is free. `fields`: the rest of `Allocation`."""
        port = self.pools[ip].take(even=even)
        if port is None:
            return None
        relay = Address(ip, port)
        advertised = relay if external is None else Address(external, port)
        alloc = Allocation(five_tuple, relay, advertised, **fields)  # type: ignore[arg-type]
        self.by_five_tuple[five_tuple] = alloc
        self.by_relay[relay] = alloc
        self.per_user[alloc.user] = self.per_user.get(alloc.user, 0) + 1
        alloc.scheduled = alloc.expires
        self._push(alloc.expires, _ALLOCATION, alloc, None)
        return alloc, OpenRelay(relay, five_tuple, alloc.dont_fragment)

    def free(self, allocation: Allocation) -> list[CloseRelay]:
        """End `allocation`: both indexes, the quota, the port, and one `CloseRelay` for its
        socket. Idempotent (a second call returns nothing)."""
        if allocation.freed or self.by_five_tuple.get(allocation.five_tuple) is not allocation:
            return []
        allocation.freed = True
        del self.by_five_tuple[allocation.five_tuple]
        del self.by_relay[allocation.relay]
        count = self.per_user[allocation.user] - 1
        if count:
            self.per_user[allocation.user] = count
        else:
            del self.per_user[allocation.user]
        if self.quota is not None:
            self.quota.release(allocation.user)
        pool = self.pools.get(allocation.relay.host)
        if pool is not None:
            pool.release(allocation.relay.port)
        self._dead += 1 + len(allocation.permissions) + len(allocation.channels)
        if self._dead > len(self._heap) // 2 and len(self._heap) > _COMPACT_MIN:
            self._heap = [e for e in self._heap if not e[3].freed]
            heapq.heapify(self._heap)
            self._dead = 0
        return [CloseRelay(allocation.relay)]

    def live(self, five_tuple: FiveTuple, now: float) -> tuple[Allocation | None, list[CloseRelay]]:
        """The 5-tuple's allocation if its lifetime is not over; an expired one is freed here
        (its `CloseRelay` returned) rather than left for the sweep."""
        alloc = self.by_five_tuple.get(five_tuple)
        if alloc is None or alloc.expires > now:
            return alloc, []
        return None, self.free(alloc)

    def refresh(self, allocation: Allocation, expires: float) -> None:
        """A new expiry (§8); a shorter one gets its own heap entry, a longer one waits."""
        allocation.expires = expires
        if expires < allocation.scheduled:
            allocation.scheduled = expires
            self._push(expires, _ALLOCATION, allocation, None)

    def move(self, allocation: Allocation, relay: Address, advertised: Address) -> None:
        """Give `allocation` another relay address (its first port could not be bound)."""
        del self.by_relay[allocation.relay]
        allocation.relay, allocation.advertised = relay, advertised
        self.by_relay[relay] = allocation

    def close_all(self) -> list[CloseRelay]:
        """Shutdown: free every allocation."""
        return [cmd for alloc in list(self.by_five_tuple.values()) for cmd in self.free(alloc)]

    # -- permissions and channels ----------------------------------------------------------

    def can_permit(self, allocation: Allocation, ips: set[str]) -> bool:
        """Whether permissions for all of `ips` fit under ``turn.limits.permissions``."""
        new = sum(1 for ip in ips if ip not in allocation.permissions)
        return not new or len(allocation.permissions) + new <= self.limits.permissions

    def permit(self, allocation: Allocation, ip: str, now: float) -> None:
        """Install or refresh a permission (check `can_permit` first)."""
        if ip not in allocation.permissions:
            self._push(now + PERMISSION_LIFETIME, _PERMISSION, allocation, ip)
        allocation.permit(ip, now)

    def can_bind(self, allocation: Allocation, number: int, peer: Address) -> bool:
        """Whether a new binding fits under ``turn.limits.channels`` (and its permission)."""
        if number in allocation.channels:
            return True
        return len(allocation.channels) < self.limits.channels and self.can_permit(
            allocation, {peer.host}
        )

    def bind(self, allocation: Allocation, number: int, peer: Address, now: float) -> None:
        """Install or refresh a channel binding and its peer's permission (§12.2)."""
        if number not in allocation.channels:
            when = now + CHANNEL_LIFETIME + CHANNEL_QUARANTINE
            self._push(when, _CHANNEL, allocation, number)
        self.permit(allocation, peer.host, now)
        allocation.bind(number, peer, now)

    # -- expiry ----------------------------------------------------------------------------

    def sweep(self, now: float) -> list[CloseRelay]:
        """Free expired allocations, drop expired permissions and channels whose quarantine is
        over; looks only at the entries that are due (and at dead ones as they come up)."""
        heap, closed = self._heap, []
        while heap and heap[0][0] <= now:
            _, _, kind, alloc, key = heapq.heappop(heap)
            self.examined += 1
            if alloc.freed:
                self._dead = max(0, self._dead - 1)
                continue
            if kind == _ALLOCATION:
                closed += self._due_allocation(alloc, now)
            elif kind == _PERMISSION:
                self._due_permission(alloc, key, now)
            else:
                self._due_channel(alloc, key, now)
        return closed

    def _due_allocation(self, alloc: Allocation, now: float) -> list[CloseRelay]:
        if alloc.expires <= now:  # §7: the allocation ends with its lifetime
            return self.free(alloc)
        if alloc.scheduled <= now:  # refreshed: wait for the new expiry
            alloc.scheduled = alloc.expires
            self._push(alloc.expires, _ALLOCATION, alloc, None)
        return []  # else a duplicate left behind by a shortening Refresh

    def _due_permission(self, alloc: Allocation, ip: object, now: float) -> None:
        assert isinstance(ip, str)
        expires = alloc.permissions[ip]
        if expires <= now:
            del alloc.permissions[ip]
        else:
            self._push(expires, _PERMISSION, alloc, ip)

    def _due_channel(self, alloc: Allocation, number: object, now: float) -> None:
        assert isinstance(number, int)
        channel = alloc.channels[number]
        until = channel.expires + CHANNEL_QUARANTINE
        if until <= now:
            del alloc.channels[number]
            del alloc.peer_channels[channel.peer]
        else:
            self._push(until, _CHANNEL, alloc, number)

    def _push(self, when: float, kind: int, alloc: Allocation, key: object) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, alloc, key))
