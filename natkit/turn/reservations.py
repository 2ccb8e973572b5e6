"""Port reservations (RFC 8656 §7.2, EVEN-PORT with the R bit; RESERVATION-TOKEN §18.10), sans-IO.

Theory of operation. An Allocate with EVEN-PORT R=1 gets an even relay port N, and port N+1 of
the same IP is held for a later allocation (an RTP/RTCP pair): a `Reservation`, named by an
8-byte token the Allocate response carries. A later Allocate carrying that token — from any
5-tuple (§7.2: the reservation is server-wide), but from the same user — gets exactly that
address. A token is used once; it lapses after `RESERVATION_LIFETIME` (§7.2: at least 30 s);
an unknown, used, lapsed or other user's token is a 508 (§7.2 item 5).

The reserved port's socket is bound when the reservation is made (another process must not
take the port meanwhile): the allocation core issues an `OpenRelay` for it whose `owner` is
`Reservation.owner` — a 5-tuple no client has (the reserving client, with the reserved address
as the server side: a listener never sits on a relay port), so the adapter's per-owner
bookkeeping for it can never touch a real allocation's. Nothing is relayed on it (the relayed
address belongs to no allocation yet). A claim closes it and opens it again for the claiming
5-tuple, in one batch before the response; a lapse closes it.

Quota. A reservation counts as one allocation in ``turn.quota`` (per user and total) from the
Allocate that makes it until it lapses or is claimed; the claiming allocation takes its unit
over, so a claim is never refused for quota. It holds a socket and a port as an allocation
does: uncounted, a user could hold its quota of allocations plus a reserved socket for every
Allocate it churns within the lifetime. (coturn counts none, and holds them 300 s.)

`ReservationTable` owns the index, the expiry heap and the bookkeeping of ports and quota;
`natkit.turn.allocation.AllocationTable` owns it, so that every relay socket still ends there.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from natkit.addr import Address, FiveTuple
from natkit.turn.commands import CloseRelay
from natkit.turn.ports import PortPool
from natkit.turn.shared_quota import Quota

__all__ = ["RESERVATION_LIFETIME", "TOKEN_SIZE", "Reservation", "ReservationTable"]

RESERVATION_LIFETIME = 30.0  # §7.2: "MUST hold this reservation for at least 30 seconds"
TOKEN_SIZE = 8  # §18.10


@dataclass(slots=True, eq=False)
class Reservation:
    token: bytes
    relay: Address
    """The reserved relayed address (port N+1 of the pair)."""
    owner: FiveTuple
    """The `OpenRelay` owner of its socket (see the module docstring)."""
    user: str
    """The quota key of the user who made it: only that user may claim it."""
    expires: float
    ended: bool = False


class ReservationTable:
    """The live reservations of one relay, by token and by relayed address."""

    def __init__(self, pools: dict[str, PortPool], quota: Quota | None) -> None:
        self.pools, self.quota = pools, quota
        self.by_token: dict[bytes, Reservation] = {}
        self.by_relay: dict[Address, Reservation] = {}
        self._heap: list[tuple[float, int, Reservation]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self.by_token)

    def __iter__(self) -> Iterator[Reservation]:
        return iter(list(self.by_token.values()))

    def add(self, reservation: Reservation) -> None:
        """Index `reservation`; its port is taken and its quota unit acquired by the caller."""
        self.by_token[reservation.token] = reservation
        self.by_relay[reservation.relay] = reservation
        self._seq += 1
        heapq.heappush(self._heap, (reservation.expires, self._seq, reservation))

    def find(self, token: object, user: str, now: float) -> Reservation | None:
        """The live reservation `token` names for `user`, else None (§7.2 item 5: 508)."""
        if not isinstance(token, bytes):
            return None
        found = self.by_token.get(token)
        if found is None or found.expires <= now or found.user != user:
            return None
        return found

    def claim(self, reservation: Reservation) -> CloseRelay:
        """Hand `reservation`'s port and quota unit over to a new allocation: it leaves the
        index (a token is used once) and its socket is closed (to be opened again for the
        claiming 5-tuple)."""
        self._forget(reservation)
        return CloseRelay(reservation.relay)

    def end(self, reservation: Reservation) -> list[CloseRelay]:
        """End `reservation` (lapsed, given up, shutdown): its port, its quota unit, one
        `CloseRelay`. Idempotent."""
        if reservation.ended:
            return []
        self._forget(reservation)
        pool = self.pools.get(reservation.relay.host)
        if pool is not None:
            pool.release(reservation.relay.port)
        if self.quota is not None:
            self.quota.release(reservation.user)
        return [CloseRelay(reservation.relay)]

    def move(self, reservation: Reservation, relay: Address) -> None:
        """Point `reservation` at another address (its socket could not be bound yet)."""
        del self.by_relay[reservation.relay]
        reservation.relay = relay
        self.by_relay[relay] = reservation

    def sweep(self, now: float) -> list[CloseRelay]:
        """End the reservations whose lifetime is over."""
        heap, closed = self._heap, []
        while heap and heap[0][0] <= now:
            closed += self.end(heapq.heappop(heap)[2])
        return closed

    def close_all(self) -> list[CloseRelay]:
        return [cmd for reservation in self for cmd in self.end(reservation)]

    def _forget(self, reservation: Reservation) -> None:
        reservation.ended = True
        del self.by_token[reservation.token]
        del self.by_relay[reservation.relay]
        if not self.by_token:
            self._heap.clear()  # the entries left are all ended ones
