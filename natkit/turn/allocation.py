"""TURN allocation state, sans-IO: allocations, permissions, channels, their lifetimes, ports.

Theory of operation. An `Allocation` is keyed twice: by the client's 5-tuple (what a request or
ChannelData arrives on, RFC 8656 §2.2) and by its relayed transport address (what a peer's packet
arrives on). `AllocationTable` keeps both indexes, the per-user counts for quotas and the relay
`PortPool`, and is the only place that creates or frees allocations and their relay sockets
(`OpenRelay` / `CloseRelay`): every path that ends an allocation (its lifetime at the sweep or
at a lookup, Refresh 0, a re-allocation over an expired one, the loss of its TCP connection,
shutdown) goes through `AllocationTable.free`, which yields exactly one `CloseRelay` per relay
socket.

A dual allocation (RFC 8656 §7.2 item 9) is two `Allocation` legs, one per address family,
linked by `Allocation.other`: each has its relay socket, its `by_relay` entry and its lifetime
(a Refresh may name one family, §8); `by_five_tuple` holds one of them, and when that leg ends
(`end_leg`) the other takes its place. They share the permission and channel dicts. The ports
held for a RESERVATION-TOKEN (`natkit.turn.reservations`) are a table of this table's, so their
sockets end here too.

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
from dataclasses import dataclass, field
from typing import NamedTuple

from natkit.addr import Address, FiveTuple
from natkit.turn.commands import CloseRelay, OpenRelay
from natkit.turn.ports import PortPool
from natkit.turn.reservations import Reservation, ReservationTable
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
    "ip_family",
]

PERMISSION_LIFETIME = 300.0  # RFC 8656 §9
CHANNEL_LIFETIME = 600.0  # RFC 8656 §12
CHANNEL_QUARANTINE = 300.0  # RFC 8656 §12: no rebinding to another peer for 5 minutes


@dataclass(slots=True)
class Channel:
    number: int
    peer: Address
    expires: float


def ip_family(host: str) -> int:
    """4 or 6 for an IP literal as the codec and the sockets spell it (`Address.family` without
    parsing: this runs per Send indication)."""
    return 6 if ":" in host else 4


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
    other: Allocation | None = None
    """A dual allocation's leg of the other address family (RFC 8656 §7.2 item 9), linked both
    ways: its own relay socket and lifetime (a Refresh may name one family, §8), the same
    5-tuple, and the same permission and channel dicts (one allocation: a permission is per IP,
    so the families never mix, and the channel numbers are the 5-tuple's)."""
    reservation: bytes = b""
    """The RESERVATION-TOKEN its Allocate got (EVEN-PORT R=1): a retransmit gets it again."""
    owner: FiveTuple = None  # type: ignore[assignment]  # `five_tuple` unless given
    """The `OpenRelay` owner of `relay`'s socket, what peer data is sent to: `five_tuple`,
    except on a dual allocation's second leg (`other`), whose socket needs an owner of its own
    (the client with `relay` as the server side: no real 5-tuple has a relay port there)."""

    def __post_init__(self) -> None:
        if not self.owner:
            self.owner = self.five_tuple

    @property
    def family(self) -> int:
        return self.relay.family

    def leg(self, family: int) -> Allocation | None:
        """The leg that relays to peers of `family` (4 or 6): this one or `other`, else None
        (a peer of another family is a 443, §9-§12)."""
        if ip_family(self.relay.host) == family:
            return self
        other = self.other
        return other if other is not None and ip_family(other.relay.host) == family else None

    def legs(self) -> list[Allocation]:
        """This leg and `other`, IPv4 first (the order of XOR-RELAYED-ADDRESS)."""
        other = self.other
        if other is None:
            return [self]
        return [other, self] if ":" in self.relay.host else [self, other]

    def alive(self, now: float) -> bool:
        """Whether some leg's lifetime is not over."""
        return self.expires > now or (self.other is not None and self.other.expires > now)

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
        """Port pool per relay IP."""
        self.quota = quota
        """Server-wide quota bookkeeping (`natkit.turn.shared_quota`): released in `free`."""
        self.limits = limits or DEFAULT_LIMITS
        self.by_five_tuple: dict[FiveTuple, Allocation] = {}
        """The 5-tuple's allocation (of a dual allocation, one leg: `Allocation.other`)."""
        self.by_relay: dict[Address, Allocation] = {}
        """Every leg by its relay address."""
        self.per_user: dict[str, int] = {}
        self.reservations = ReservationTable(pools, quota)
        """Ports held for a RESERVATION-TOKEN (`natkit.turn.reservations`)."""
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
        return self._insert(five_tuple, Address(ip, port), external, fields)

    def create_pair(
        self,
        five_tuple: FiveTuple,
        ip: str,
        external: str | None,
        token: bytes,
        until: float,
        **fields: object,
    ) -> tuple[Allocation, list[OpenRelay]] | None:
        """EVEN-PORT with the R bit (§7.2): an allocation on an even port N of `ip`, N+1
        reserved for `token` until `until`, and the two commands that bind their sockets; None
        when no such pair is free. The caller has acquired the reservation's quota unit."""
        port = self.pools[ip].take_pair()
        if port is None:
            return None
        alloc, open_relay = self._insert(five_tuple, Address(ip, port), external, fields)
        alloc.reservation = token
        relay = Address(ip, port + 1)
        owner = FiveTuple(five_tuple.client, relay, five_tuple.transport)
        self.reservations.add(Reservation(token, relay, owner, alloc.user, until))
        return alloc, [open_relay, OpenRelay(relay, owner, False)]

    def claim(
        self,
        reservation: Reservation,
        five_tuple: FiveTuple,
        external: str | None,
        **fields: object,
    ) -> tuple[Allocation, list[CloseRelay | OpenRelay]]:
        """A RESERVATION-TOKEN's allocation on exactly the reserved address, and the commands
        that hand its socket over (closed as the reservation's, opened for `five_tuple`). It
        takes the reservation's port and quota unit over."""
        close = self.reservations.claim(reservation)
        alloc, open_relay = self._insert(five_tuple, reservation.relay, external, fields)
        return alloc, [close, open_relay]

    def add_leg(
        self, head: Allocation, ip: str, even: bool, external: str | None
    ) -> OpenRelay | None:
        """A dual allocation's second leg (§7.2 item 9) on a free port of `ip` (the other
        family), and the command that binds it; None when no port is free."""
        port = self.pools[ip].take(even=even)
        if port is None:
            return None
        relay = Address(ip, port)
        advertised = relay if external is None else Address(external, port)
        five = head.five_tuple
        owner = FiveTuple(five.client, relay, five.transport)
        leg = Allocation(
            five, relay, advertised, head.username, head.user, head.key, head.expires,
            transaction_id=head.transaction_id, dont_fragment=head.dont_fragment,
            permissions=head.permissions, channels=head.channels,
            peer_channels=head.peer_channels, other=head, owner=owner,
        )  # fmt: skip
        head.other = leg
        self.by_relay[relay] = leg
        leg.scheduled = leg.expires
        self._push(leg.expires, _ALLOCATION, leg, None)
        return OpenRelay(relay, owner, leg.dont_fragment)

    def _insert(
        self, five_tuple: FiveTuple, relay: Address, external: str | None, fields: dict[str, object]
    ) -> tuple[Allocation, OpenRelay]:
        advertised = relay if external is None else Address(external, relay.port)
        alloc = Allocation(five_tuple, relay, advertised, **fields)  # type: ignore[arg-type]
        self.by_five_tuple[five_tuple] = alloc
        self.by_relay[relay] = alloc
        self.per_user[alloc.user] = self.per_user.get(alloc.user, 0) + 1
        alloc.scheduled = alloc.expires
        self._push(alloc.expires, _ALLOCATION, alloc, None)
        return alloc, OpenRelay(relay, five_tuple, alloc.dont_fragment)

    def free(self, allocation: Allocation) -> list[CloseRelay]:
        """End `allocation` (every leg, whichever is given): both indexes, the quota, the ports,
        and one `CloseRelay` per relay socket. Idempotent (a second call returns nothing)."""
        head = self.by_five_tuple.get(allocation.five_tuple)
        if allocation.freed or head is None or allocation not in (head, head.other):
            return []
        del self.by_five_tuple[head.five_tuple]
        count = self.per_user[head.user] - 1
        if count:
            self.per_user[head.user] = count
        else:
            del self.per_user[head.user]
        if self.quota is not None:
            self.quota.release(head.user)
        closed = [self._drop(leg) for leg in head.legs()]
        self._dead += len(head.permissions) + len(head.channels)  # their entries are head's
        if self._dead > len(self._heap) // 2 and len(self._heap) > _COMPACT_MIN:
            self._heap = [e for e in self._heap if not e[3].freed]
            heapq.heapify(self._heap)
            self._dead = 0
        return closed

    def end_leg(self, leg: Allocation) -> list[CloseRelay]:
        """End one leg of a dual allocation (its lifetime, a Refresh naming its family, §8); the
        other carries on as the 5-tuple's allocation. A single leg ends the allocation."""
        other = leg.other
        if other is None or leg.freed:
            return self.free(leg)
        leg.other = other.other = None
        if self.by_five_tuple.get(leg.five_tuple) is leg:
            self.by_five_tuple[leg.five_tuple] = other
            # The permission and channel heap entries were the old head's: give them to `other`.
            for ip, expires in other.permissions.items():
                self._push(expires, _PERMISSION, other, ip)
            for number, channel in other.channels.items():
                self._push(channel.expires + CHANNEL_QUARANTINE, _CHANNEL, other, number)
            self._dead += len(other.permissions) + len(other.channels)
        return [self._drop(leg)]

    def _drop(self, leg: Allocation) -> CloseRelay:
        leg.freed = True
        del self.by_relay[leg.relay]
        pool = self.pools.get(leg.relay.host)
        if pool is not None:
            pool.release(leg.relay.port)
        self._dead += 1
        return CloseRelay(leg.relay)

    def live(self, five_tuple: FiveTuple, now: float) -> tuple[Allocation | None, list[CloseRelay]]:
        """The 5-tuple's allocation if its lifetime is not over; an expired one (or leg) is
        freed here (its `CloseRelay` returned) rather than left for the sweep."""
        alloc, closed = self.by_five_tuple.get(five_tuple), []
        while alloc is not None and alloc.expires <= now:
            closed += self.end_leg(alloc)
            alloc = self.by_five_tuple.get(five_tuple)
        return alloc, closed

    def refresh(self, allocation: Allocation, expires: float) -> None:
        """A new expiry for one leg (§8); a shorter one gets its own heap entry, a longer one
        waits."""
        allocation.expires = expires
        if expires < allocation.scheduled:
            allocation.scheduled = expires
            self._push(expires, _ALLOCATION, allocation, None)

    def move(self, allocation: Allocation, relay: Address, advertised: Address) -> None:
        """Give a leg another relay address (its first port could not be bound)."""
        del self.by_relay[allocation.relay]
        if allocation.owner != allocation.five_tuple:  # a second leg's owner names its relay
            allocation.owner = allocation.owner._replace(local=relay)
        allocation.relay, allocation.advertised = relay, advertised
        self.by_relay[relay] = allocation

    def close_all(self) -> list[CloseRelay]:
        """Shutdown: free every allocation and reservation."""
        closed = [cmd for alloc in list(self.by_five_tuple.values()) for cmd in self.free(alloc)]
        return closed + self.reservations.close_all()

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
        heap, closed = self._heap, self.reservations.sweep(now)
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
        if alloc.expires <= now:  # §7: the allocation (or this leg) ends with its lifetime
            return self.end_leg(alloc)
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
