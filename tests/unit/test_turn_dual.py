"""Dual allocations (RFC 8656 §7.2 item 9, ADDITIONAL-ADDRESS-FAMILY §18.11, ADDRESS-ERROR-CODE
§18.12; Refresh §8), sans-IO through the builtin-like adapter of test_turn_evenport.

- One Allocate gets an IPv4 and an IPv6 relay (two XOR-RELAYED-ADDRESS, IPv4 first), two
  OpenRelay, one quota unit; a family that cannot be had is an ADDRESS-ERROR-CODE (440 not
  offered, 508 no port or no socket) beside the other.
- A peer of family F goes out of, and comes back on, the relay of family F (Send, ChannelData,
  peer data); with no relay of F it is a 443.
- Refresh with REQUESTED-ADDRESS-FAMILY refreshes or deletes that family's relay only (443 when
  there is none); without it, both. Each relay expires on its own lifetime; the other carries on.
- Every OpenRelay is matched by exactly one CloseRelay, whatever the sequence (a random walk
  over both features, bind failures included).
"""

from __future__ import annotations

import random

from natkit.addr import Address, Transport
from natkit.stun.attributes import AddressErrorCode, decode_attribute
from natkit.stun.constants import (
    LEGACY_ADDITIONAL_ADDRESS_FAMILY,
    LEGACY_ADDRESS_ERROR_CODE,
    AttrType,
    MessageClass,
    Method,
)
from natkit.stun.framing import build_channel_data
from natkit.stun.message import Message
from natkit.turn.commands import CloseRelay, OpenRelay, SendToClient
from natkit.turn.reservations import RESERVATION_LIFETIME
from tests.unit.test_turn_evenport import Adapter, Wired, opens, wired
from tests.unit.test_turn_relay_client import (
    PEER,
    PEER6,
    RELAY4,
    RELAY6,
    error_code,
    make_relay,
)

A = AttrType
DUAL = (A.ADDITIONAL_ADDRESS_FAMILY, 2)


def relays(response: Message) -> list[Address]:
    return [v for t, v in response.attributes if t == A.XOR_RELAYED_ADDRESS]  # type: ignore[misc]


def address_errors(response: Message) -> list[AddressErrorCode]:
    return [v for t, v in response.attributes if t == A.ADDRESS_ERROR_CODE]  # type: ignore[misc]


def dual(**kwargs: object) -> Wired:
    (client,) = wired(make_relay(**kwargs))  # type: ignore[arg-type]
    response = client.allocate(DUAL)
    assert response.message_class is MessageClass.SUCCESS, response
    return client


def dual_with_peers() -> tuple[Wired, Adapter, Address, Address]:
    """A dual allocation with permissions for PEER and PEER6: client, adapter, its relays."""
    client = dual()
    assert client.adapter is not None
    v4, v6 = legs(client)[4], legs(client)[6]
    permit(client, PEER, PEER6)
    return client, client.adapter, v4, v6


def legs(client: Wired) -> dict[int, Address]:
    head = client.relay.allocations.by_five_tuple[client.five_tuple]
    return {leg.family: leg.relay for leg in head.legs()}


def permit(client: Wired, *peers: Address) -> Message:
    return client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, p) for p in peers])


def send(client: Wired, peer: Address, data: bytes = b"hi") -> list[object]:
    msg = Message(Method.SEND, MessageClass.INDICATION, bytes(12),
                  [(A.XOR_PEER_ADDRESS, peer), (A.DATA, data)])  # fmt: skip
    return list(client.send_raw(msg.encode()))


def test_one_allocate_gets_an_ipv4_and_an_ipv6_relay() -> None:
    (client,) = wired()
    response = client.allocate(DUAL)
    v4, v6 = relays(response)
    assert v4.host == RELAY4 and v6.host == RELAY6
    assert not address_errors(response)
    assert [type(c) for c in client.last] == [OpenRelay, OpenRelay, SendToClient]
    first, second = opens(client.last)
    assert (first.relay, second.relay) == (v4, v6)
    assert first.owner == client.five_tuple and second.owner not in (client.five_tuple,)
    table = client.relay.allocations
    assert len(table) == 1 and table.per_user == {"alice": 1}
    assert client.relay.quota.counts == {"alice": 1}  # type: ignore[attr-defined]


def test_coturn_draft_code_points_are_aliases() -> None:
    """coturn before 4.10 (Debian's 4.6.1 `turnutils_uclient -Z`) sends 0x8032 and reads
    0x8033; natkit answers in the numbering it was asked in."""
    legacy = (LEGACY_ADDITIONAL_ADDRESS_FAMILY, b"\x02\x00\x00\x00")
    (client,) = wired()
    assert len(relays(client.allocate(legacy))) == 2
    (client,) = wired(make_relay(relay_ips={4: RELAY4}))
    response = client.allocate(legacy)
    assert [a.host for a in relays(response)] == [RELAY4] and not address_errors(response)
    raw = response.get(LEGACY_ADDRESS_ERROR_CODE)
    assert isinstance(raw, bytes)
    error = decode_attribute(A.ADDRESS_ERROR_CODE, raw, b"")
    assert error == AddressErrorCode(2, 440, "Address Family not Supported")
    for bad in (b"\x01\x00\x00\x00", b"\x02\x00", b"\x07\x00\x00\x00"):
        client.address = Address(client.address.host, client.address.port + 1)
        assert error_code(client.allocate((LEGACY_ADDITIONAL_ADDRESS_FAMILY, bad))) == 400
    assert error_code(client.allocate(legacy, (A.RESERVATION_TOKEN, bytes(8)))) == 400


def test_even_port_without_r_applies_to_both_legs() -> None:
    (client,) = wired()
    response = client.allocate(DUAL, (A.EVEN_PORT, False))
    assert [a.port % 2 for a in relays(response)] == [0, 0]


def test_a_family_not_offered_is_an_address_error_440() -> None:
    (client,) = wired(make_relay(relay_ips={6: RELAY6}))
    response = client.allocate(DUAL)
    assert [a.host for a in relays(response)] == [RELAY6]
    assert address_errors(response) == [AddressErrorCode(1, 440, "Address Family not Supported")]
    assert error_code(client.allocate()) == 437  # the 5-tuple has its (IPv6) allocation


def test_a_family_without_a_free_port_is_an_address_error_508() -> None:
    relay = make_relay(ports=(50000, 50000))
    v6_only, client = wired(relay, n=2)
    v6_only.allocate((A.REQUESTED_ADDRESS_FAMILY, 2))  # takes the only IPv6 port
    response = client.allocate(DUAL)
    assert [a.host for a in relays(response)] == [RELAY4]
    assert address_errors(response) == [AddressErrorCode(2, 508, "Insufficient Capacity")]


def test_peers_go_out_of_the_relay_of_their_family() -> None:
    client = dual()
    adapter = client.adapter
    assert adapter is not None
    by_family = legs(client)
    assert permit(client, PEER, PEER6).message_class is MessageClass.SUCCESS
    for peer in (PEER, PEER6):
        (out,) = send(client, peer)
        assert out.relay == by_family[peer.family]  # type: ignore[attr-defined]
        assert adapter.peer(by_family[peer.family], b"back", peer, client.now) == (
            client.five_tuple
        )
    for number, peer in ((0x4000, PEER), (0x4001, PEER6)):
        bind = [(A.CHANNEL_NUMBER, number), (A.XOR_PEER_ADDRESS, peer)]
        assert client.request(Method.CHANNEL_BIND, bind).message_class is MessageClass.SUCCESS
        route = client.relay.channel_data(
            build_channel_data(number, b"m"), client.address, client.local, client.transport,
            client.now,
        )  # fmt: skip
        assert route is not None and route[0] == by_family[peer.family] and route[2] == peer
    adapter.close()


def test_refresh_names_one_family() -> None:
    client = dual()
    table = client.relay.allocations
    v4, v6 = legs(client)[4], legs(client)[6]
    client.now += 100
    refreshed = client.request(
        Method.REFRESH, [(A.LIFETIME, 1200), (A.REQUESTED_ADDRESS_FAMILY, 1)]
    )
    assert refreshed.get(A.LIFETIME) == 1200
    assert table.by_relay[v4].expires == client.now + 1200
    assert table.by_relay[v6].expires == client.now - 100 + 600  # untouched
    client.request(Method.REFRESH, [(A.LIFETIME, 900)])  # no family: both
    assert {table.by_relay[r].expires for r in (v4, v6)} == {client.now + 900}


def test_each_leg_expires_on_its_own_and_the_other_carries_on() -> None:
    client, adapter, v4, v6 = dual_with_peers()
    client.request(Method.REFRESH, [(A.LIFETIME, 1200), (A.REQUESTED_ADDRESS_FAMILY, 2)])
    client.now += 500
    permit(client, PEER6)  # refreshed: now until +800, its heap entry still the IPv4 leg's
    assert adapter.timeout(client.now + 100) == [CloseRelay(v4)]  # the IPv4 leg's lifetime
    assert legs(client) == {6: v6}
    client.now += 100
    # The IPv6 leg is the allocation now: its permissions, its return path, 443 for IPv4.
    assert adapter.peer(v6, b"x", PEER6, client.now) == client.five_tuple
    assert error_code(permit(client, PEER)) == 443
    # The permission sweep still runs for the promoted leg (its entries were re-pushed).
    head = client.relay.allocations.by_five_tuple[client.five_tuple]
    adapter.timeout(client.now + 199)
    assert PEER6.host in head.permissions
    adapter.timeout(client.now + 200)
    assert head.permissions == {}
    assert adapter.timeout(client.now + 600) == [CloseRelay(v6)]
    assert client.relay.quota.counts == {}  # type: ignore[attr-defined]
    adapter.close()


def test_refresh_zero_for_one_family_deletes_that_relay_only() -> None:
    client, adapter, v4, v6 = dual_with_peers()
    response = client.request(Method.REFRESH, [(A.LIFETIME, 0), (A.REQUESTED_ADDRESS_FAMILY, 1)])
    assert response.get(A.LIFETIME) == 0 and CloseRelay(v4) in client.last
    assert CloseRelay(v6) not in client.last
    # The IPv6 relay still delivers to the client (its socket's own owner kept its reply).
    assert adapter.peer(v6, b"x", PEER6, client.now) == client.five_tuple
    assert error_code(client.request(Method.REFRESH, [(A.REQUESTED_ADDRESS_FAMILY, 1)])) == 443
    assert send(client, PEER) == []
    client.request(Method.REFRESH, [(A.LIFETIME, 0)])
    assert client.last[-1] == CloseRelay(v6) and not client.relay.allocations.by_five_tuple
    assert client.relay.quota.counts == {}  # type: ignore[attr-defined]
    adapter.close()


def test_refresh_zero_without_a_family_deletes_both() -> None:
    client = dual()
    v4, v6 = legs(client)[4], legs(client)[6]
    client.request(Method.REFRESH, [(A.LIFETIME, 0)])
    assert {CloseRelay(v4), CloseRelay(v6)} <= set(client.last)


def test_the_ipv6_leg_refresh_on_a_single_allocation_is_443() -> None:
    (client,) = wired()
    client.allocate()
    assert error_code(client.request(Method.REFRESH, [(A.REQUESTED_ADDRESS_FAMILY, 2)])) == 443


def test_a_tcp_dual_allocation_ends_with_its_connection() -> None:
    (client,) = wired()
    client.transport = Transport.TCP
    client.allocate(DUAL)
    v4, v6 = legs(client)[4], legs(client)[6]
    adapter = client.adapter
    assert adapter is not None
    closed = adapter.run(client.relay.connection_lost(client.five_tuple, client.now), None, 0.0)
    assert sorted(closed) == sorted([CloseRelay(v4), CloseRelay(v6)])  # type: ignore[type-var]
    assert not adapter.sockets


def test_a_retransmitted_dual_allocate_gets_both_addresses_again() -> None:
    (client,) = wired()
    tid = bytes(range(12))
    first = client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17), DUAL], tid=tid)
    again = client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17), DUAL], tid=tid)
    assert relays(again) == relays(first) and not opens(client.last)


# -- bind failures --------------------------------------------------------------------------


def _first_ports(seed: int) -> dict[int, Address]:
    (client,) = wired(make_relay(seed=seed))
    client.allocate(DUAL)
    return legs(client)


def test_a_taken_port_in_either_family_is_tried_again() -> None:
    for family in (4, 6):
        taken = _first_ports(11)[family]
        (client,) = wired(make_relay(seed=11))
        assert client.adapter is not None
        client.adapter.taken.add(taken)
        response = client.allocate(DUAL)
        got = relays(response)
        assert len(got) == 2 and taken not in got and not address_errors(response)
        client.adapter.close()


def test_no_descriptor_for_one_family_keeps_the_other() -> None:
    for family, code in ((4, 1), (6, 2)):
        failing = _first_ports(12)[family]
        (client,) = wired(make_relay(seed=12))
        adapter = client.adapter
        assert adapter is not None
        adapter.exhausted.add(failing)
        response = client.allocate(DUAL)
        (kept,) = relays(response)
        assert kept.family != family
        assert address_errors(response) == [AddressErrorCode(code, 508, "Insufficient Capacity")]
        assert set(adapter.sockets) == {kept}
        peer = PEER if kept.family == 4 else PEER6
        permit(client, peer)
        assert adapter.peer(kept, b"x", peer, client.now) == client.five_tuple
        adapter.close()


# -- the invariant ---------------------------------------------------------------------------


def _step(rng: random.Random, adapter: Adapter, client: Wired, tokens: list[bytes]) -> None:
    """One random thing a client, a peer process or the clock does."""
    now = client.now
    taken = rng.random() < 0.3
    adapter.taken = {Address(RELAY4, 50000 + rng.randrange(16))} if taken else set()
    short = rng.random() < 0.2
    adapter.exhausted = {Address(RELAY6, 50000 + rng.randrange(16))} if short else set()
    action = rng.randrange(7)
    if action == 0:
        client.allocate(DUAL)
    elif action == 1:
        token = client.allocate((A.EVEN_PORT, True)).get(A.RESERVATION_TOKEN)
        if isinstance(token, bytes):
            tokens.append(token)
    elif action == 2 and tokens:
        client.allocate((A.RESERVATION_TOKEN, tokens.pop(rng.randrange(len(tokens)))))
    elif action == 3:
        client.allocate((A.REQUESTED_ADDRESS_FAMILY, rng.choice((1, 2))))
    elif action == 4:
        family = [(A.REQUESTED_ADDRESS_FAMILY, rng.choice((1, 2)))] if rng.random() < 0.5 else []
        client.request(Method.REFRESH, [(A.LIFETIME, rng.choice((0, 600))), *family])
    elif action == 5:
        adapter.timeout(now)
    else:
        adapter.run(adapter.relay.connection_lost(client.five_tuple, now), None, now)


def test_every_open_relay_is_closed_once_whatever_happens() -> None:
    """A random walk: dual, R-bit, token and plain Allocates from several 5-tuples, Refreshes
    (per family, zero), lifetimes, bind failures; the adapter asserts no socket is opened twice
    or closed unopened, the open sockets are exactly the live relays, and none is left."""
    for seed in range(8):
        rng = random.Random(seed)
        relay = make_relay(ports=(50000, 50015), per_user=50, seed=seed)
        adapter = Adapter(relay)
        clients = [Wired(relay, address=Address("198.51.100.7", 40000 + i), adapter=adapter)
                   for i in range(6)]  # fmt: skip
        tokens: list[bytes] = []
        now = 1_000_000.0
        for _ in range(250):
            now += rng.choice((0.0, 1.0, 7.0, RESERVATION_LIFETIME, 400.0))
            client = rng.choice(clients)
            client.now = now
            _step(rng, adapter, client, tokens)
            table = relay.allocations
            live = {leg.relay for head in table.by_five_tuple.values() for leg in head.legs()}
            assert live | set(table.reservations.by_relay) == set(adapter.sockets)
        assert adapter.opened > 100
        adapter.close()
        assert relay.quota.counts == {} and not relay.allocations.by_relay  # type: ignore[attr-defined]
