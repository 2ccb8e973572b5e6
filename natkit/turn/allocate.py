"""The Allocate request (RFC 8656 §7.2), sans-IO: its checks, the relayed addresses it gets, and
what happens when the adapter cannot bind one of them.

Theory of operation. `natkit.turn.relay.Relay` hands `Allocator.allocate` an authenticated
Allocate on a 5-tuple with no live allocation (§7.2 items 1-2), when not draining. It runs the
other checks in the RFC's order (`check`: items 3-9; then the token, item 5, and the quota, item
10) and picks the relayed transport addresses, each bound by an `OpenRelay` before the response:

- RESERVATION-TOKEN: exactly the reserved address (`natkit.turn.reservations`), its socket
  handed over: [CloseRelay(R), OpenRelay(R, client), response];
- EVEN-PORT with R=1: an even port N for this allocation and N+1 held for a token that the
  response carries: [OpenRelay(N), OpenRelay(N+1, the reservation's owner), response];
- ADDITIONAL-ADDRESS-FAMILY (a dual allocation, `Allocation.other`): an IPv4 and an IPv6 relay,
  [OpenRelay(v4), OpenRelay(v6), response]; when only one family can be had, that one and
  ADDRESS-ERROR-CODE for the other (item 9: 440 not offered, 508 no port);
- otherwise one port of the REQUESTED-ADDRESS-FAMILY (IPv4 by default, item 7); even for
  EVEN-PORT R=0 (each leg of a dual allocation).

Every port comes from this worker's own slice (`natkit.turn.ports`). ADDITIONAL-ADDRESS-FAMILY
on a server without an IPv4 relay gets the IPv6 leg and ADDRESS-ERROR-CODE 440 for IPv4 (item
9's partial success, as coturn does; item 7's 440 is read as meant for one-family requests).
coturn before 4.10 (Debian's 4.6.1 `turnutils_uclient -Z`) sends ADDITIONAL-ADDRESS-FAMILY as
0x8032 and reads ADDRESS-ERROR-CODE as 0x8033, the draft code points: accepted as aliases,
answered in the numbering asked (`additional`).

Bind failures. The adapter carries a batch out in order; when an `OpenRelay` fails it drops the
rest and calls `unavailable(relay)`: the OpenRelays before that one took effect, it and those
after did not. The Allocate is answered anew:
- a port another process holds is not offered for a minute (`PortPool.block`) and another is
  tried, up to `_OPEN_TRIES` per Allocate: a new port for that leg; a new pair for R=1 (its
  first port closed if it was bound);
- with no try left, or the host out of a resource (`exhausted`: 508 at once, RFC 8656 §7.2
  Insufficient Capacity): a dual allocation keeps its other leg and says ADDRESS-ERROR-CODE 508
  for this one; anything else is a 508, after a CloseRelay for each socket bound;
- a claimed reservation is never retried (the token names one address): 508, as for a token
  that is no longer valid (item 5).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from natkit.addr import Address
from natkit.stun.attributes import AddressErrorCode, AttrValue, encode_attribute
from natkit.stun.constants import (
    ERROR_REASONS,
    LEGACY_ADDITIONAL_ADDRESS_FAMILY,
    LEGACY_ADDRESS_ERROR_CODE,
    AttrType,
)
from natkit.stun.message import Message
from natkit.turn.allocation import (
    Allocation,
    AllocationTable,
    FiveTuple,
    grant_lifetime,
    ip_family,
)
from natkit.turn.auth import Credentials
from natkit.turn.commands import CloseRelay, Command, OpenRelay, SendToClient
from natkit.turn.reservations import RESERVATION_LIFETIME, TOKEN_SIZE
from natkit.turn.settings import RelaySettings
from natkit.turn.shared_quota import Quota
from natkit.turn.tcp_relay import TCP_PROTOCOL

__all__ = ["FAMILIES", "UDP_PROTOCOL", "Allocator", "additional", "family_of"]

UDP_PROTOCOL = 17  # REQUESTED-TRANSPORT value for UDP (RFC 8656 §18.8)
FAMILIES = {1: 4, 2: 6}  # (REQUESTED-|ADDITIONAL-)ADDRESS-FAMILY value → IP version (§18.6)
_FAMILY_CODES = {4: 1, 6: 2}
_OPEN_TRIES = 8  # relay ports tried per Allocate when binding fails (taken by another process)
_BLOCK_SECONDS = 60.0  # a port we could not bind is not offered again for this long

Attrs = list[tuple[int, AttrValue]]
Respond = Callable[[Message, FiveTuple, bytes | None, Attrs], SendToClient]
Refuse = Callable[[Message, FiveTuple, int, bytes | None], SendToClient]


def additional(msg: Message) -> tuple[AttrValue | None, int]:
    """ADDITIONAL-ADDRESS-FAMILY's value (None: absent) and the attribute type to answer
    ADDRESS-ERROR-CODE with: RFC 8656's, or the draft code points of coturn before 4.10, whose
    `turnutils_uclient -Z` sends 0x8032 (`natkit.stun.constants`). A malformed draft value is
    0, which `Allocator.check` refuses (400) as it does an IPv4 one."""
    value = msg.get(AttrType.ADDITIONAL_ADDRESS_FAMILY)
    if value is not None:
        return value, AttrType.ADDRESS_ERROR_CODE
    raw = msg.get(LEGACY_ADDITIONAL_ADDRESS_FAMILY)
    if raw is None:
        return None, 0
    ok = isinstance(raw, bytes) and len(raw) == 4 and raw[0] in FAMILIES
    return (raw[0] if ok else 0), LEGACY_ADDRESS_ERROR_CODE  # type: ignore[index]


def family_of(value: AttrValue | None) -> int | None:
    """The IP version a (REQUESTED-|ADDITIONAL-)ADDRESS-FAMILY value names, or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return FAMILIES.get(value)
    return None


@dataclass(slots=True)
class _Batch:
    """An Allocate's OpenRelays in flight: `unavailable` may replace them until the next
    packet (the adapter reports a failed bind before it reads anything else)."""

    msg: Message
    alloc: Allocation
    """The 5-tuple's allocation (of a dual one, the leg `by_five_tuple` holds)."""
    opens: list[Address]
    tries: int
    claimed: bool


class Allocator:
    """The Allocate rules of one relay (see the module docstring)."""

    def __init__(
        self,
        settings: RelaySettings,
        table: AllocationTable,
        quota: Quota,
        rng: random.Random,
        respond: Respond,
        refuse: Refuse,
    ) -> None:
        """`respond(msg, to, key, attrs)` and `refuse(msg, to, code, key)`: the relay's signed
        answers (`natkit.turn.answers`)."""
        self.settings, self.table, self.quota, self.rng = settings, table, quota, rng
        self.respond, self.refuse = respond, refuse
        self.opening: dict[Address, _Batch] = {}
        """Relay addresses of the last Allocate's OpenRelays; the relay clears it on the next
        packet."""

    # -- Allocate --------------------------------------------------------------------------

    def check(self, msg: Message) -> int:
        """The error code an Allocate gets before any state changes (§7.2 items 3-9), or 0."""
        requested = msg.get(AttrType.REQUESTED_TRANSPORT)
        if not isinstance(requested, int) or isinstance(requested, bool):
            return 400  # item 3
        if requested not in (UDP_PROTOCOL, TCP_PROTOCOL):
            return 442  # RFC 6062 §5.1: UDP or TCP (TCP only over TCP/TLS: `TcpRelay`)
        even = msg.get(AttrType.EVEN_PORT)
        family = family_of(msg.get(AttrType.REQUESTED_ADDRESS_FAMILY))
        extra = additional(msg)[0]
        if AttrType.RESERVATION_TOKEN in msg:  # item 5 (whether the token is valid: 508 later)
            alone = even is None and family is None and extra is None
            return 0 if alone else 400
        if family is not None and extra is not None:
            return 400  # item 6
        relay_ips = self.settings.relay_ips
        if extra is None:
            return 0 if (family or 4) in relay_ips else 440  # item 7
        if even is True or extra != 2:
            return 400  # items 8 (R bit with a dual allocation) and 9 (only IPv6 is additional)
        return 0

    def allocate(
        self, msg: Message, five_tuple: FiveTuple, creds: Credentials, now: float
    ) -> list[Command]:
        """Check and create the allocation: the commands and the response (module docstring)."""
        code = self.check(msg)
        if code:
            return [self.refuse(msg, five_tuple, code, creds.key)]
        fields = self._fields(msg, creds, now)
        token = msg.get(AttrType.RESERVATION_TOKEN)
        if token is not None:
            return self._claim(msg, five_tuple, creds, token, fields, now)
        pair = msg.get(AttrType.EVEN_PORT) is True
        # The quota last (item 10): `acquire` counts the allocation server-wide, `free` gives
        # it back; a reservation holds a unit of its own (natkit.turn.reservations).
        code = self.quota.acquire(creds.user)
        if not code and pair:
            code = self.quota.acquire(creds.user)
            if code:
                self.quota.release(creds.user)
        if code:
            return [self.refuse(msg, five_tuple, code, creds.key)]
        if pair:
            made = self._pair(msg, five_tuple, fields, now)
        else:
            made = self._legs(msg, five_tuple, fields)
        if made is None:
            for _ in range(2 if pair else 1):
                self.quota.release(creds.user)
            return [self.refuse(msg, five_tuple, 508, creds.key)]  # no free port (pair)
        alloc, opens = made
        self._track(_Batch(msg, alloc, [cmd.relay for cmd in opens], 1, False))
        return [*opens, self.success(msg, alloc, now)]

    def success(self, msg: Message, alloc: Allocation, now: float) -> SendToClient:
        """The success response (§7.2), also to a retransmitted Allocate."""
        attrs: Attrs = [(AttrType.XOR_RELAYED_ADDRESS, leg.advertised) for leg in alloc.legs()]
        attrs.append((AttrType.LIFETIME, max(0, int(alloc.expires - now))))
        if alloc.reservation:
            attrs.append((AttrType.RESERVATION_TOKEN, alloc.reservation))
        attrs.append((AttrType.XOR_MAPPED_ADDRESS, alloc.five_tuple.client))
        asked, answer_type = additional(msg)
        if asked is not None:  # item 9: why a family is missing
            for family in (4, 6):
                if alloc.leg(family) is None:
                    code = 508 if family in self.settings.relay_ips else 440
                    value: AttrValue = AddressErrorCode(
                        _FAMILY_CODES[family], code, ERROR_REASONS[code]
                    )
                    if answer_type != AttrType.ADDRESS_ERROR_CODE:  # the draft code point: raw
                        value = encode_attribute(AttrType.ADDRESS_ERROR_CODE, value, b"")
                    attrs.append((answer_type, value))
        return self.respond(msg, alloc.five_tuple, alloc.key, attrs)

    def _fields(self, msg: Message, creds: Credentials, now: float) -> dict[str, object]:
        settings = self.settings
        lifetime = msg.get(AttrType.LIFETIME)
        asked = lifetime if isinstance(lifetime, int) and not isinstance(lifetime, bool) else None
        granted = grant_lifetime(asked, settings.lifetime_default, settings.lifetime_max)
        return {
            "username": creds.username, "user": creds.user, "key": creds.key,
            "expires": now + granted, "transaction_id": msg.transaction_id,
            "dont_fragment": AttrType.DONT_FRAGMENT in msg,
        }  # fmt: skip

    def _claim(
        self,
        msg: Message,
        five_tuple: FiveTuple,
        creds: Credentials,
        token: AttrValue,
        fields: dict[str, object],
        now: float,
    ) -> list[Command]:
        """RESERVATION-TOKEN: the reserved address, or 508 (item 5). No quota is acquired: the
        reservation's unit goes over to the allocation."""
        reservation = self.table.reservations.find(token, creds.user, now)
        if reservation is None:
            return [self.refuse(msg, five_tuple, 508, creds.key)]
        external = self.settings.external_ips.get(ip_family(reservation.relay.host))
        alloc, commands = self.table.claim(reservation, five_tuple, external, **fields)
        self._track(_Batch(msg, alloc, [reservation.relay], _OPEN_TRIES, True))
        return [*commands, self.success(msg, alloc, now)]

    def _pair(
        self, msg: Message, five_tuple: FiveTuple, fields: dict[str, object], now: float
    ) -> tuple[Allocation, list[OpenRelay]] | None:
        """EVEN-PORT R=1, on the one family asked for (`check` refuses R=1 on a dual one)."""
        family = self._families(msg)[0]
        ip = self.settings.relay_ips[family]
        token = self._token()
        until = now + RESERVATION_LIFETIME
        external = self.settings.external_ips.get(family)
        return self.table.create_pair(five_tuple, ip, external, token, until, **fields)

    def _legs(
        self, msg: Message, five_tuple: FiveTuple, fields: dict[str, object]
    ) -> tuple[Allocation, list[OpenRelay]] | None:
        """One leg per family asked for and offered; the first that gets a port is the head."""
        even = msg.get(AttrType.EVEN_PORT) is False
        alloc: Allocation | None = None
        opens: list[OpenRelay] = []
        for family in self._families(msg):
            ip, external = self.settings.relay_ips[family], self.settings.external_ips.get(family)
            if alloc is None:
                made = self.table.create(five_tuple, ip, even, external, **fields)
                if made is not None:
                    alloc, first = made
                    opens.append(first)
            else:
                leg = self.table.add_leg(alloc, ip, even, external)
                if leg is not None:
                    opens.append(leg)
        return None if alloc is None else (alloc, opens)

    def _families(self, msg: Message) -> list[int]:
        if additional(msg)[0] is not None:
            return [f for f in (4, 6) if f in self.settings.relay_ips]
        return [family_of(msg.get(AttrType.REQUESTED_ADDRESS_FAMILY)) or 4]

    def _token(self) -> bytes:
        """8 bytes from the relay's random source (SystemRandom in production: unguessable)."""
        taken = self.table.reservations.by_token
        while True:
            token = self.rng.getrandbits(8 * TOKEN_SIZE).to_bytes(TOKEN_SIZE, "big")
            if token not in taken:
                return token

    def _track(self, batch: _Batch) -> None:
        for relay in batch.opens:
            self.opening[relay] = batch

    # -- bind failures ---------------------------------------------------------------------

    def unavailable(self, relay: Address, now: float, exhausted: bool) -> list[Command]:
        """The adapter could not bind `relay` (module docstring, "Bind failures")."""
        batch = self.opening.get(relay)
        if batch is None:
            return []
        self.opening.clear()
        at = batch.opens.index(relay)
        bound, unbound = batch.opens[:at], batch.opens[at:]
        pool = self.table.pools[relay.host]
        if not exhausted:  # taken by another process: not offered again for a while
            pool.block(relay.port, now + _BLOCK_SECONDS)
        retry = not exhausted and not batch.claimed and batch.tries < _OPEN_TRIES
        alloc = batch.alloc
        reservation = self.table.reservations.by_token.get(alloc.reservation)
        if reservation is not None and not reservation.ended:
            moved = self._new_pair(alloc, reservation.relay, bound) if retry else None
            if moved is not None:
                return self._answer(batch, moved[0], moved[1], now)
            self.table.reservations.end(reservation)  # never bound: its CloseRelay is dropped
        else:
            leg = self.table.by_relay[relay]
            port = pool.take(even=batch.msg.get(AttrType.EVEN_PORT) is False) if retry else None
            if port is not None:
                new = Address(relay.host, port)
                self.table.move(leg, new, self._advertised(new))
                return self._answer(batch, [], [new, *unbound[1:]], now)
            if leg.other is not None:  # a dual allocation: keep the other family (item 9)
                self.table.end_leg(leg)  # never bound: no CloseRelay
                batch.alloc = self.table.by_five_tuple[alloc.five_tuple]
                return self._answer(batch, [], unbound[1:], now)
        closes: list[Command] = [c for c in self.table.free(alloc) if c.relay in bound]
        return [*closes, self.refuse(batch.msg, alloc.five_tuple, 508, alloc.key)]

    def _new_pair(
        self, alloc: Allocation, reserved: Address, bound: list[Address]
    ) -> tuple[list[Command], list[Address]] | None:
        """Another even pair for an R=1 Allocate whose pair could not be bound: CloseRelay for
        its first port if bound, and the two addresses to open."""
        pool = self.table.pools[alloc.relay.host]
        port = pool.take_pair()
        if port is None:
            return None
        old, host = alloc.relay, alloc.relay.host
        closes: list[Command] = [CloseRelay(r) for r in bound]
        pool.release(old.port)  # no-ops for the port just blocked
        pool.release(reserved.port)
        new = Address(host, port)
        self.table.move(alloc, new, self._advertised(new))
        reservation = self.table.reservations.by_relay[reserved]
        self.table.reservations.move(reservation, Address(host, port + 1))
        return closes, [new, reservation.relay]

    def _answer(
        self, batch: _Batch, closes: list[Command], opens: list[Address], now: float
    ) -> list[Command]:
        """`closes`, an OpenRelay for each of `opens`, the success response; tracked again."""
        commands = list(closes)
        for relay in opens:
            leg = self.table.by_relay.get(relay)
            if leg is not None:
                commands.append(OpenRelay(relay, leg.owner, leg.dont_fragment))
            else:
                reservation = self.table.reservations.by_relay[relay]
                commands.append(OpenRelay(relay, reservation.owner, False))
        self._track(_Batch(batch.msg, batch.alloc, opens, batch.tries + 1, batch.claimed))
        return [*commands, self.success(batch.msg, batch.alloc, now)]

    def _advertised(self, relay: Address) -> Address:
        external = self.settings.external_ips.get(ip_family(relay.host))
        return relay if external is None else Address(external, relay.port)
