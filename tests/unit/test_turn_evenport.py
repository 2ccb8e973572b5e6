"""EVEN-PORT and RESERVATION-TOKEN (RFC 8656 §7.2, §18.7, §18.10), sans-IO, through an adapter
that carries the commands out the way natkit.turn.builtin does.

- EVEN-PORT R=0: an even port; R=1: an even port N, N+1 held for a token (8 bytes) that the
  response carries; a later Allocate with the token, from another 5-tuple of the same user,
  gets exactly N+1; a token is used once and lapses after 30 s (then 508, as an unknown one);
  EVEN-PORT or an address family with a token is a 400.
- The reserved socket is bound from the start, handed over (CloseRelay + OpenRelay) on claim,
  closed on lapse; the RTP allocation's return path survives both.
- A reservation counts one quota unit until claimed (the claim takes it over) or lapsed.
- Pairs come from the worker's own port slice.
- Bind failures: a taken port gets a new pair; the host out of descriptors is a 508 with
  every bound socket closed; a claim whose port was grabbed meanwhile is a 508.

`Adapter` and `Wired` are used by tests/unit/test_turn_dual.py too.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from natkit.addr import Address, Transport
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.message import parse_message
from natkit.turn.allocation import FiveTuple
from natkit.turn.commands import CloseRelay, Command, OpenRelay, SendToClient, SendToPeer
from natkit.turn.ports import PortPool
from natkit.turn.relay import Relay
from natkit.turn.reservations import RESERVATION_LIFETIME
from tests.unit.test_turn_relay_client import PEER, RELAY4, Client, error_code, make_relay

A = AttrType
R_BIT = (A.EVEN_PORT, True)


@dataclass
class Adapter:
    """Carries commands out as `natkit.turn.builtin.BuiltinTurn._run` does: binds (or fails to
    bind) relay sockets, keeps the per-owner reply it registers on OpenRelay and drops on
    CloseRelay, replaces the rest of a batch with `relay_unavailable`'s answer. Checks that no
    socket is opened twice or closed unopened."""

    relay: Relay
    taken: set[Address] = field(default_factory=set)
    """Addresses another process holds: binding them fails."""
    exhausted: set[Address] = field(default_factory=set)
    """Addresses whose bind fails for want of a file descriptor."""
    sockets: dict[Address, FiveTuple] = field(default_factory=dict)
    senders: dict[FiveTuple, FiveTuple] = field(default_factory=dict)
    """OpenRelay owner → the client whose request's reply was registered for it."""
    opened: int = 0
    sent: list[SendToPeer] = field(default_factory=list)

    def run(self, commands: list[Command], reply: FiveTuple | None, now: float) -> list[Command]:
        """Carry out `commands`; what took effect (a failed OpenRelay and the rest of its batch
        replaced by what `relay_unavailable` returned)."""
        done: list[Command] = []
        for cmd in commands:
            if isinstance(cmd, OpenRelay):
                assert cmd.relay not in self.sockets, f"{cmd} while open"
                if cmd.relay in self.taken or cmd.relay in self.exhausted:
                    out = cmd.relay in self.exhausted
                    instead = self.relay.relay_unavailable(cmd.relay, now, exhausted=out)
                    return done + self.run(instead, reply, now)
                self.sockets[cmd.relay] = cmd.owner
                self.opened += 1
                if reply is not None:
                    self.senders[cmd.owner] = reply
            elif isinstance(cmd, CloseRelay):
                assert cmd.relay in self.sockets, f"{cmd} not open"
                self.senders.pop(self.sockets.pop(cmd.relay), None)
            elif isinstance(cmd, SendToPeer):
                assert cmd.relay in self.sockets, f"{cmd} from no socket"
                self.sent.append(cmd)
            done.append(cmd)
        return done

    def peer(self, relay: Address, data: bytes, peer: Address, now: float) -> FiveTuple | None:
        """A peer's datagram on `relay`: the client it is delivered to, if any."""
        assert relay in self.sockets
        out = self.relay.peer_data(relay, data, peer, now)
        return None if out is None else self.senders.get(out[1])

    def timeout(self, now: float) -> list[Command]:
        return self.run(self.relay.handle_timeout(now), None, now)

    def close(self) -> None:
        self.run(self.relay.close(), None, 0.0)
        assert not self.sockets, f"left open: {self.sockets}"


@dataclass
class Wired(Client):
    """A `Client` whose commands go through `adapter`; `last` is what took effect."""

    adapter: Adapter | None = None

    @property
    def five_tuple(self) -> FiveTuple:
        return FiveTuple(self.address, self.local, self.transport)

    def send_raw(self, data: bytes) -> list[Command]:
        assert self.adapter is not None
        commands = self.relay.handle_client(
            data, self.address, self.local, self.transport, self.now
        )
        self.last = self.adapter.run(commands, self.five_tuple, self.now)
        return self.last


def wired(relay: Relay | None = None, n: int = 1, **kwargs: object) -> list[Wired]:
    """`n` clients of one relay and adapter (alice, from 198.51.100.7:40000, :40001...)."""
    relay = relay or make_relay()
    adapter = Adapter(relay)
    return [Wired(relay, address=Address("198.51.100.7", 40000 + i), adapter=adapter, **kwargs)  # type: ignore[arg-type]
            for i in range(n)]  # fmt: skip


def opens(commands: list[Command]) -> list[OpenRelay]:
    return [c for c in commands if isinstance(c, OpenRelay)]


def token_of(response: object) -> bytes:
    assert hasattr(response, "get")
    token = response.get(A.RESERVATION_TOKEN)
    assert isinstance(token, bytes) and len(token) == 8
    return token


def relayed(response: object) -> Address:
    assert hasattr(response, "get")
    address = response.get(A.XOR_RELAYED_ADDRESS)
    assert isinstance(address, Address)
    return address


# -- EVEN-PORT -----------------------------------------------------------------------------


def test_even_port_without_the_r_bit_is_even_and_reserves_nothing() -> None:
    (client,) = wired(make_relay(per_user=20))
    for i in range(20):
        client.address = Address("198.51.100.7", 41000 + i)
        response = client.allocate((A.EVEN_PORT, False))
        assert relayed(response).port % 2 == 0 and A.RESERVATION_TOKEN not in response
        assert len(opens(client.last)) == 1
    assert len(client.relay.allocations.reservations) == 0


def test_the_r_bit_reserves_the_next_port_with_a_token() -> None:
    (client,) = wired()
    response = client.allocate(R_BIT)
    port = relayed(response).port
    assert port % 2 == 0
    token = token_of(response)
    kinds = [type(c) for c in client.last]
    assert kinds == [OpenRelay, OpenRelay, SendToClient], client.last
    first, reserved = opens(client.last)
    assert first == OpenRelay(Address(RELAY4, port), client.five_tuple, False)
    assert reserved.relay == Address(RELAY4, port + 1)
    # The reservation's socket has an owner of its own: closing it can never touch the
    # client's reply (the adapter drops the reply of the owner it closes).
    assert reserved.owner != client.five_tuple
    assert reserved.owner.local == reserved.relay
    held = client.relay.allocations.reservations.by_token[token]
    assert held.relay == reserved.relay and held.expires == client.now + RESERVATION_LIFETIME


def test_tokens_are_eight_random_bytes_from_the_relay_rng() -> None:
    clients = wired(make_relay(per_user=12), n=6)  # two units each
    tokens = {token_of(c.allocate(R_BIT)) for c in clients}
    assert len(tokens) == 6
    assert isinstance(Relay(make_relay().settings, make_relay().auth, make_relay().policy).rng,
                      random.SystemRandom)  # fmt: skip


def reserved_pair() -> tuple[Wired, Wired, Adapter, bytes, int]:
    """Two clients of one relay, the first with an R-bit allocation: both, the adapter, the
    token and the reserved port."""
    rtp, rtcp = wired(n=2)
    token = token_of(rtp.allocate(R_BIT))
    assert rtp.adapter is not None
    return rtp, rtcp, rtp.adapter, token, relayed(rtp.response()).port + 1


def test_a_token_gets_exactly_the_reserved_port_from_any_five_tuple() -> None:
    rtp, rtcp, adapter, token, reserved = reserved_pair()
    # Another 5-tuple, even another transport (§7.2: the reservation is server-wide).
    rtcp.transport = Transport.TCP
    response = rtcp.allocate((A.RESERVATION_TOKEN, token))
    assert relayed(response) == Address(RELAY4, reserved)
    assert A.RESERVATION_TOKEN not in response
    kinds = [type(c) for c in rtcp.last]
    assert kinds == [CloseRelay, OpenRelay, SendToClient], rtcp.last
    assert opens(rtcp.last)[0].owner == rtcp.five_tuple
    assert len(rtp.relay.allocations.reservations) == 0
    # Both allocations get their peers' data, the RTP one also after the handover.
    for client in (rtp, rtcp):
        client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER)])
        assert adapter.peer(client.relayed(), b"media", PEER, client.now) == client.five_tuple
    adapter.close()


def test_a_token_is_used_once() -> None:
    rtp, rtcp, third = wired(n=3)
    token = token_of(rtp.allocate(R_BIT))
    assert rtcp.allocate((A.RESERVATION_TOKEN, token)).message_class is MessageClass.SUCCESS
    assert error_code(third.allocate((A.RESERVATION_TOKEN, token))) == 508


def test_a_token_is_for_its_user_only() -> None:
    rtp, rtcp = wired(n=2)
    token = token_of(rtp.allocate(R_BIT))
    bob = Wired(rtp.relay, address=Address("198.51.100.9", 1), username="bob",
                password="builder", adapter=rtp.adapter)  # fmt: skip
    assert error_code(bob.allocate((A.RESERVATION_TOKEN, token))) == 508
    assert rtcp.allocate((A.RESERVATION_TOKEN, token)).message_class is MessageClass.SUCCESS


def test_a_reservation_lapses_after_thirty_seconds() -> None:
    rtp, rtcp, adapter, token, reserved = reserved_pair()
    rtp.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER)])
    assert adapter.timeout(rtp.now + RESERVATION_LIFETIME - 1) == []
    closed = adapter.timeout(rtp.now + RESERVATION_LIFETIME)
    assert closed == [CloseRelay(Address(RELAY4, reserved))]
    rtcp.now += RESERVATION_LIFETIME
    assert error_code(rtcp.allocate((A.RESERVATION_TOKEN, token))) == 508
    # The RTP allocation still gets its peer's data; the port is free again.
    assert adapter.peer(rtp.relayed(), b"x", PEER, rtp.now + 31) == rtp.five_tuple
    assert reserved not in rtp.relay.allocations.pools[RELAY4]._used
    adapter.close()


def test_a_token_past_its_lifetime_is_508_before_the_sweep() -> None:
    rtp, rtcp = wired(n=2)
    token = token_of(rtp.allocate(R_BIT))
    rtcp.now += RESERVATION_LIFETIME  # the sweep has not run
    assert error_code(rtcp.allocate((A.RESERVATION_TOKEN, token))) == 508


def test_token_combinations_that_are_400() -> None:
    (client,) = wired()
    token = (A.RESERVATION_TOKEN, bytes(8))
    for extra in [(A.EVEN_PORT, False), R_BIT, (A.REQUESTED_ADDRESS_FAMILY, 1),
                  (A.ADDITIONAL_ADDRESS_FAMILY, 2)]:  # fmt: skip
        assert error_code(client.allocate(token, extra)) == 400, extra  # §7.2 item 5
    assert error_code(client.allocate(R_BIT, (A.ADDITIONAL_ADDRESS_FAMILY, 2))) == 400  # item 8
    assert error_code(client.allocate(token)) == 508  # unknown token
    assert not client.relay.allocations.by_five_tuple


def test_the_r_bit_on_ipv6() -> None:
    (client,) = wired()
    response = client.allocate(R_BIT, (A.REQUESTED_ADDRESS_FAMILY, 2))
    address = relayed(response)
    assert address.family == 6 and address.port % 2 == 0
    assert opens(client.last)[1].relay == Address(address.host, address.port + 1)


def test_a_retransmitted_allocate_gets_the_same_token() -> None:
    (client,) = wired()
    tid = bytes(range(12))
    first = client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17), R_BIT], tid=tid)
    again = client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17), R_BIT], tid=tid)
    assert token_of(again) == token_of(first) and relayed(again) == relayed(first)
    assert not opens(client.last)


# -- quota -----------------------------------------------------------------------------------


def test_a_reservation_holds_a_quota_unit_that_the_claim_takes_over() -> None:
    rtp, rtcp, third = wired(make_relay(per_user=2), n=3)
    quota = rtp.relay.quota
    token = token_of(rtp.allocate(R_BIT))
    assert quota.counts == {"alice": 2}  # type: ignore[attr-defined]
    assert error_code(third.allocate()) == 486  # the reservation counts
    assert rtcp.allocate((A.RESERVATION_TOKEN, token)).message_class is MessageClass.SUCCESS
    assert quota.counts == {"alice": 2}  # type: ignore[attr-defined]  # taken over, not added
    rtcp.request(Method.REFRESH, [(A.LIFETIME, 0)])
    rtp.request(Method.REFRESH, [(A.LIFETIME, 0)])
    assert quota.counts == {}  # type: ignore[attr-defined]


def test_a_lapsed_reservation_gives_its_unit_back() -> None:
    rtp, other = wired(make_relay(per_user=2), n=2)
    rtp.allocate(R_BIT)
    assert error_code(other.allocate()) == 486
    assert rtp.adapter is not None
    rtp.adapter.timeout(rtp.now + RESERVATION_LIFETIME)
    other.now += RESERVATION_LIFETIME
    assert other.allocate().message_class is MessageClass.SUCCESS


def test_no_room_for_the_reservation_is_486_and_holds_nothing() -> None:
    (client,) = wired(make_relay(per_user=1))
    assert error_code(client.allocate(R_BIT)) == 486
    assert client.relay.quota.counts == {}  # type: ignore[attr-defined]
    assert client.adapter is not None and not client.adapter.sockets


# -- ports -----------------------------------------------------------------------------------


def test_pairs_come_from_the_workers_own_slice() -> None:
    base = make_relay(ports=(50000, 50099))
    settings = dataclasses.replace(base.settings, pool_ports=(50011, 50020))
    relay = Relay(settings, base.auth, base.policy, random.Random(3))
    clients = wired(relay, n=5)
    ports = []
    for client in clients[:4]:
        response = client.allocate(R_BIT)
        ports += [relayed(response).port, relayed(response).port + 1]
    assert sorted(ports) == list(range(50012, 50020))  # N even, N and N+1 inside the slice
    assert error_code(clients[4].allocate(R_BIT)) == 508  # item 8: no pair left
    assert clients[4].allocate().get(A.XOR_RELAYED_ADDRESS) in {
        Address(RELAY4, 50011), Address(RELAY4, 50020)}  # fmt: skip


def test_take_pair_edges() -> None:
    rng = random.Random(1)
    assert PortPool(50001, 50001, rng).take_pair() is None
    assert PortPool(50001, 50002, rng).take_pair() is None  # 50002's neighbour is outside
    pool = PortPool(50001, 50004, rng)
    assert pool.take_pair() == 50002 and pool.take_pair() is None
    pool = PortPool(50000, 50003, rng)
    pool.take()  # one port used: at most one pair left
    first = pool.take_pair()
    assert first in (50000, 50002) and pool.take_pair() is None


# -- bind failures --------------------------------------------------------------------------


def _failing(seed: int, offset: int, exhausted: bool = False) -> tuple[int, Relay, Wired]:
    """A client of a relay seeded with `seed` whose first pair's port N+`offset` cannot be
    bound (taken by another process, or no descriptor): N, the relay, the client."""
    (probe,) = wired(make_relay(seed=seed))
    port = relayed(probe.allocate(R_BIT)).port
    relay = make_relay(seed=seed)
    (client,) = wired(relay)
    assert client.adapter is not None
    failing = client.adapter.exhausted if exhausted else client.adapter.taken
    failing.add(Address(RELAY4, port + offset))
    return port, relay, client


def test_a_taken_first_port_gets_a_new_pair() -> None:
    port, relay, client = _failing(5, 0)
    response = client.allocate(R_BIT)
    new = relayed(response).port
    assert new != port and new % 2 == 0
    token = token_of(response)
    assert relay.allocations.reservations.by_token[token].relay.port == new + 1
    assert [type(c) for c in client.last] == [OpenRelay, OpenRelay, SendToClient]
    assert client.adapter is not None
    client.adapter.close()


def test_a_taken_reserved_port_closes_the_first_and_gets_a_new_pair() -> None:
    port, relay, client = _failing(6, 1)
    response = client.allocate(R_BIT)
    new = relayed(response).port
    assert new not in (port, port + 1)
    kinds = [type(c) for c in client.last]
    assert kinds == [OpenRelay, CloseRelay, OpenRelay, OpenRelay, SendToClient], client.last
    assert client.last[1] == CloseRelay(Address(RELAY4, port))
    assert port not in relay.allocations.pools[RELAY4]._used  # the good one is free again
    assert client.adapter is not None
    client.adapter.close()


def test_no_descriptor_for_the_reserved_port_is_508_with_the_first_closed() -> None:
    _, relay, client = _failing(7, 1, exhausted=True)
    assert client.adapter is not None
    assert error_code(client.allocate(R_BIT)) == 508
    assert [type(c) for c in client.last] == [OpenRelay, CloseRelay, SendToClient]
    assert not client.adapter.sockets and not relay.allocations.by_five_tuple
    assert len(relay.allocations.reservations) == 0 and relay.quota.counts == {}  # type: ignore[attr-defined]
    assert not relay.allocations.pools[RELAY4]._used


def test_a_claim_whose_port_was_grabbed_is_508() -> None:
    rtp, rtcp = wired(n=2)
    token = token_of(rtp.allocate(R_BIT))
    reserved = Address(RELAY4, relayed(rtp.response()).port + 1)
    assert rtp.adapter is not None
    rtp.adapter.taken.add(reserved)  # another process binds it between close and open
    assert error_code(rtcp.allocate((A.RESERVATION_TOKEN, token))) == 508
    assert [type(c) for c in rtcp.last] == [CloseRelay, SendToClient]
    assert rtp.relay.quota.counts == {"alice": 1}  # type: ignore[attr-defined]  # rtp's only
    assert reserved.port in rtp.relay.allocations.pools[RELAY4]._used  # blocked for a minute
    rtp.adapter.close()


def test_every_port_taken_is_508_and_nothing_leaks() -> None:
    (client,) = wired(make_relay(ports=(50000, 50019)))
    assert client.adapter is not None
    client.adapter.taken.update(Address(RELAY4, p) for p in range(50000, 50020))
    assert error_code(client.allocate(R_BIT)) == 508
    assert not client.adapter.sockets and client.relay.quota.counts == {}  # type: ignore[attr-defined]
    assert len(client.relay.allocations.reservations) == 0


def test_shutdown_closes_the_reservations() -> None:
    rtp, rtcp = wired(n=2)
    rtp.allocate(R_BIT)
    rtcp.allocate(R_BIT)
    assert rtp.adapter is not None and len(rtp.adapter.sockets) == 4
    rtp.adapter.close()
    assert rtp.relay.quota.counts == {}  # type: ignore[attr-defined]


def test_the_unsigned_error_answers_stay_parseable() -> None:
    (client,) = wired()
    client.send_raw(client.build(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17), R_BIT],
                                 sign=False))  # fmt: skip
    sends = [c for c in client.last if isinstance(c, SendToClient)]
    assert error_code(parse_message(sends[0].data)) == 401
