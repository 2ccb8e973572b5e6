"""The sans-IO TURN core, rule by rule (RFC 8656), with the clock driven by the test."""

from __future__ import annotations

import pytest

from natkit.addr import Address, Transport
from natkit.stun.attributes import AddressErrorCode
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.framing import build_channel_data, parse_channel_data
from natkit.stun.integrity import check_fingerprint, check_integrity
from natkit.stun.message import Message, parse_message
from natkit.turn.credentials import mint
from natkit.turn.relay import CloseRelay, OpenRelay, SendToClient, SendToPeer
from tests.unit.test_turn_relay_client import (
    PEER,
    PEER6,
    REALM,
    RELAY4,
    RELAY6,
    SECRET,
    T0,
    Client,
    error_code,
    make_relay,
)

A = AttrType
SERVER_LIKE = "192.0.2.3"  # a neighbour of the relay IP in the same denied range


def allocated(**kwargs: object) -> Client:
    client = Client(make_relay(**kwargs))  # type: ignore[arg-type]
    response = client.allocate()
    assert response.message_class is MessageClass.SUCCESS, response
    return client


# -- authentication ------------------------------------------------------------------------


def test_unauthenticated_request_gets_a_401_challenge() -> None:
    client = Client(make_relay())
    client.send_raw(client.build(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)], sign=False))
    response = client.response()
    assert error_code(response) == 401
    assert response.get(A.REALM) == REALM
    assert isinstance(response.get(A.NONCE), str)
    assert A.MESSAGE_INTEGRITY not in response  # no key to sign with yet
    assert A.SOFTWARE not in response  # unsigned answers stay small (amplification)


def test_wrong_password_is_401() -> None:
    client = Client(make_relay(), password="nope")
    assert error_code(client.allocate()) == 401
    assert not client.relay.allocations.by_five_tuple


def test_unknown_user_is_401() -> None:
    assert error_code(Client(make_relay(), username="mallory").allocate()) == 401


def test_integrity_without_nonce_is_400() -> None:
    client = Client(make_relay())
    msg = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12),
                  [(A.REQUESTED_TRANSPORT, 17), (A.USERNAME, "alice")])  # fmt: skip
    client.send_raw(msg.encode(integrity_key=client.key))
    assert error_code(client.response()) == 400


def test_rest_api_credentials() -> None:
    cred = mint(SECRET, "carol", 3600, now=T0)
    client = Client(make_relay(), username=cred.username, password=cred.password)
    assert client.allocate().message_class is MessageClass.SUCCESS
    assert client.relay.allocations.per_user == {"carol": 1}


def test_expired_rest_credential_is_401() -> None:
    cred = mint(SECRET, "carol", 60, now=T0 - 3600)
    client = Client(make_relay(), username=cred.username, password=cred.password)
    assert error_code(client.allocate()) == 401


def test_forged_rest_credential_is_401() -> None:
    cred = mint("other-secret", "carol", 3600, now=T0)
    client = Client(make_relay(), username=cred.username, password=cred.password)
    assert error_code(client.allocate()) == 401


def test_stale_nonce_is_438_with_a_fresh_nonce_and_the_client_recovers() -> None:
    client = allocated(nonce_lifetime=30)
    old = client.nonce
    client.now += 31
    client.send_raw(client.build(Method.REFRESH, [(A.LIFETIME, 600)]))
    stale = client.response()
    assert error_code(stale) == 438
    assert stale.get(A.REALM) == REALM and stale.get(A.NONCE) not in (None, old)
    client.nonce = str(stale.get(A.NONCE))
    assert client.request(Method.REFRESH, [(A.LIFETIME, 600)]).message_class is (
        MessageClass.SUCCESS
    )


def test_nonce_is_bound_to_the_client_ip() -> None:
    client = allocated()
    other = Client(client.relay, address=Address("198.51.100.8", 40000), nonce=client.nonce)
    other.send_raw(other.build(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)]))
    assert error_code(other.response()) == 438


# -- Allocate ------------------------------------------------------------------------------


def test_allocate_success_attributes_and_open_relay() -> None:
    client = Client(make_relay())
    response = client.allocate()
    opens = [c for c in client.last if isinstance(c, OpenRelay)]
    assert isinstance(client.last[0], OpenRelay) and len(opens) == 1
    relay = opens[0].relay
    assert relay.host == RELAY4 and 50000 <= relay.port <= 50099
    assert opens[0].owner == (client.address, client.local, Transport.UDP)
    assert response.get(A.XOR_RELAYED_ADDRESS) == relay
    assert response.get(A.XOR_MAPPED_ADDRESS) == client.address
    assert response.get(A.LIFETIME) == 600
    assert response.get(A.SOFTWARE) == "natkit-test"
    sends = [c for c in client.last if isinstance(c, SendToClient)]
    assert check_integrity(sends[0].data, client.key)
    assert not check_fingerprint(sends[0].data)


def test_fingerprint_is_mirrored() -> None:
    client = Client(make_relay(), fingerprint=True)
    client.allocate()
    sends = [c for c in client.last if isinstance(c, SendToClient)]
    assert check_fingerprint(sends[0].data)


@pytest.mark.parametrize(
    ("requested", "granted"), [(None, 600), (60, 600), (1200, 1200), (99999, 3600)]
)
def test_allocation_lifetime_is_clamped(requested: int | None, granted: int) -> None:
    client = Client(make_relay())
    assert client.allocate(lifetime=requested).get(A.LIFETIME) == granted


def test_requested_transport_rules() -> None:
    client = Client(make_relay())
    assert error_code(client.request(Method.ALLOCATE, [])) == 400
    # RFC 6062 §5.1: TCP over a UDP client connection is a 400; neither UDP nor TCP a 442.
    assert error_code(client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 6)])) == 400
    assert error_code(client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 132)])) == 442


def test_ipv6_relay_via_requested_address_family() -> None:
    client = Client(make_relay())
    response = client.allocate((A.REQUESTED_ADDRESS_FAMILY, 2))
    relayed = response.get(A.XOR_RELAYED_ADDRESS)
    assert isinstance(relayed, Address) and relayed.host == RELAY6


def test_unsupported_family_is_440() -> None:
    client = Client(make_relay(relay_ips={4: RELAY4}))
    assert error_code(client.allocate((A.REQUESTED_ADDRESS_FAMILY, 2))) == 440


def test_additional_address_family() -> None:
    # Dual allocations in full: tests/unit/test_turn_dual.py. Here a server with no IPv6 relay.
    client = Client(make_relay(relay_ips={4: RELAY4}))
    assert error_code(client.allocate((A.ADDITIONAL_ADDRESS_FAMILY, 1))) == 400
    both = [(A.REQUESTED_ADDRESS_FAMILY, 1), (A.ADDITIONAL_ADDRESS_FAMILY, 2)]
    assert error_code(client.allocate(*both)) == 400
    response = client.allocate((A.ADDITIONAL_ADDRESS_FAMILY, 2))
    assert response.message_class is MessageClass.SUCCESS
    expected = AddressErrorCode(2, 440, "Address Family not Supported")
    assert response.get(A.ADDRESS_ERROR_CODE) == expected


def test_even_port_and_reservations() -> None:
    # Reservations in full: tests/unit/test_turn_evenport.py.
    client = Client(make_relay())
    assert error_code(client.allocate((A.RESERVATION_TOKEN, bytes(8)))) == 508  # unknown token
    both = [(A.EVEN_PORT, False), (A.RESERVATION_TOKEN, bytes(8))]
    assert error_code(client.allocate(*both)) == 400
    relayed = client.allocate((A.EVEN_PORT, False)).get(A.XOR_RELAYED_ADDRESS)
    assert isinstance(relayed, Address) and relayed.port % 2 == 0


def test_dont_fragment_reaches_open_relay() -> None:
    client = Client(make_relay())
    client.allocate((A.DONT_FRAGMENT, True))
    assert [c.dont_fragment for c in client.last if isinstance(c, OpenRelay)] == [True]


def test_unknown_comprehension_required_attribute_is_420() -> None:
    client = Client(make_relay())
    response = client.allocate((0x7F01, b"????"))
    assert error_code(response) == 420
    assert response.get(A.UNKNOWN_ATTRIBUTES) == (0x7F01,)
    sends = [c for c in client.last if isinstance(c, SendToClient)]
    assert check_integrity(sends[0].data, client.key)


def test_second_allocate_on_a_5_tuple_is_437_but_a_retransmit_is_answered() -> None:
    client = Client(make_relay())
    tid = bytes(range(12))
    first = client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)], tid=tid)
    again = client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)], tid=tid)
    assert again.get(A.XOR_RELAYED_ADDRESS) == first.get(A.XOR_RELAYED_ADDRESS)
    assert not any(isinstance(c, OpenRelay) for c in client.last)
    assert error_code(client.allocate()) == 437


def test_per_user_quota_is_486_and_total_is_508() -> None:
    relay = make_relay(per_user=2, total=3)
    for port in (1, 2):
        assert Client(relay, address=Address("198.51.100.7", port)).allocate().message_class is (
            MessageClass.SUCCESS
        )
    assert error_code(Client(relay, address=Address("198.51.100.7", 3)).allocate()) == 486
    bob = Client(relay, address=Address("198.51.100.7", 4), username="bob", password="builder")
    assert bob.allocate().message_class is MessageClass.SUCCESS
    carl = Client(relay, address=Address("198.51.100.7", 5), username="bob", password="builder")
    assert error_code(carl.allocate()) == 508


def test_port_range_exhausted_is_508() -> None:
    relay = make_relay(ports=(50000, 50001))
    for port in (1, 2):
        Client(relay, address=Address("198.51.100.7", port)).allocate()
    assert error_code(Client(relay, address=Address("198.51.100.7", 3)).allocate()) == 508


def test_relay_unavailable_retries_another_port_then_508() -> None:
    relay = make_relay(ports=(50000, 50002))
    client = Client(relay)
    client.allocate()
    first = client.last[0]
    assert isinstance(first, OpenRelay)
    retry = relay.relay_unavailable(first.relay, client.now)
    assert isinstance(retry[0], OpenRelay) and retry[0].relay != first.relay
    response = parse_message(retry[1].data)  # type: ignore[union-attr]
    assert response.get(A.XOR_RELAYED_ADDRESS) == retry[0].relay
    again = relay.relay_unavailable(retry[0].relay, client.now)
    assert isinstance(again[0], OpenRelay)
    final = relay.relay_unavailable(again[0].relay, client.now)  # all three ports failed
    assert len(final) == 1 and error_code(parse_message(final[0].data)) == 508  # type: ignore[union-attr]
    assert not relay.allocations.by_five_tuple


# -- Refresh and lifetimes -----------------------------------------------------------------


def test_refresh_extends_and_zero_deletes() -> None:
    client = allocated()
    relay_addr = client.relayed()
    client.now += 500
    assert client.request(Method.REFRESH, [(A.LIFETIME, 1200)]).get(A.LIFETIME) == 1200
    client.now += 1100  # past the original 600 s, within the refreshed 1200 s
    assert client.relay.handle_timeout(client.now) == []
    response = client.request(Method.REFRESH, [(A.LIFETIME, 0)])
    assert response.get(A.LIFETIME) == 0
    assert CloseRelay(relay_addr) in client.last
    assert error_code(client.request(Method.REFRESH, [])) == 437


def test_allocation_expires() -> None:
    client = allocated()
    relay_addr = client.relayed()
    assert client.relay.handle_timeout(client.now + 599) == []
    assert client.relay.handle_timeout(client.now + 600) == [CloseRelay(relay_addr)]
    client.now += 601
    assert error_code(client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER)])) == 437


def test_refresh_with_other_family_is_443() -> None:
    client = allocated()
    assert error_code(client.request(Method.REFRESH, [(A.REQUESTED_ADDRESS_FAMILY, 2)])) == 443


def test_other_username_on_the_5_tuple_is_441() -> None:
    client = allocated()
    bob = Client(client.relay, username="bob", password="builder")
    assert error_code(bob.request(Method.REFRESH, [])) == 441
    assert error_code(bob.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER)])) == 441


def test_tcp_connection_lost_frees_the_allocation() -> None:
    client = Client(make_relay(), transport=Transport.TCP)
    client.allocate()
    relay_addr = client.relayed()
    lost = client.relay.connection_lost((client.address, client.local, Transport.TCP), client.now)  # type: ignore[arg-type]
    assert lost == [CloseRelay(relay_addr)]
    assert not client.relay.allocations.per_user


# -- permissions, Send/Data ----------------------------------------------------------------


def send_indication(client: Client, peer: Address, payload: bytes) -> list[object]:
    msg = Message(Method.SEND, MessageClass.INDICATION, bytes(12),
                  [(A.XOR_PEER_ADDRESS, peer), (A.DATA, payload)])  # fmt: skip
    return list(client.send_raw(msg.encode()))


def test_send_needs_a_permission_which_expires_after_300_s() -> None:
    client = allocated()
    relay_addr = client.relayed()
    assert send_indication(client, PEER, b"hi") == []
    ok = client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, Address(PEER.host, 0))])
    assert ok.message_class is MessageClass.SUCCESS
    assert send_indication(client, PEER, b"hi") == [SendToPeer(relay_addr, b"hi", PEER)]
    other_port = Address(PEER.host, 9999)  # §9: permissions are per IP, any port
    assert send_indication(client, other_port, b"x") == [SendToPeer(relay_addr, b"x", other_port)]
    client.now += 300
    assert send_indication(client, PEER, b"hi") == []


def test_data_indication_from_a_permitted_peer_only() -> None:
    client = allocated()
    relay_addr = client.relayed()
    assert client.relay.handle_peer(relay_addr, b"x", PEER, client.now) == []
    client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER)])
    [cmd] = client.relay.handle_peer(relay_addr, b"hello", PEER, client.now)
    assert isinstance(cmd, SendToClient) and cmd.to == (client.address, client.local, Transport.UDP)
    data = parse_message(cmd.data)
    assert (data.method, data.message_class) == (Method.DATA, MessageClass.INDICATION)
    assert data.get(A.XOR_PEER_ADDRESS) == PEER and data.get(A.DATA) == b"hello"
    assert client.relay.handle_peer(relay_addr, b"x", Address("1.1.1.1", 1), client.now) == []


@pytest.mark.parametrize(
    "peer",
    ["127.0.0.1", "10.1.2.3", "0.0.0.0", "192.168.1.1", "169.254.1.1", "224.0.0.1",
     "::ffff:127.0.0.1", "::1", "fe80::1", "::", "::ffff:" + RELAY4],
)  # fmt: skip
def test_policy_refuses_with_403(peer: str) -> None:
    client = Client(make_relay())
    family = 2 if ":" in peer else 1
    client.allocate((A.REQUESTED_ADDRESS_FAMILY, family))
    denied = client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, Address(peer, 1))])
    assert error_code(denied) == 403
    bind = [(A.CHANNEL_NUMBER, 0x4000), (A.XOR_PEER_ADDRESS, Address(peer, 1))]
    assert error_code(client.request(Method.CHANNEL_BIND, bind)) == 403


def two_allocations(**kwargs: object) -> tuple[Client, Client]:
    relay = make_relay(**kwargs)  # type: ignore[arg-type]
    a, b = Client(relay), Client(relay, address=Address("198.51.100.8", 40001))
    for client in (a, b):
        assert client.allocate().message_class is MessageClass.SUCCESS
    return a, b


def test_relay_to_relay_on_the_same_server() -> None:
    # Two clients pairing their relayed candidates (ICE relay<->relay): the relay IP is one of
    # the server's own addresses (and in 192.0.2.0/24, denied), yet the peer is legitimate.
    a, b = two_allocations()
    ra, rb = a.relayed(), b.relayed()
    for client, other in ((a, rb), (b, ra)):
        ok = client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, other)])
        assert ok.message_class is MessageClass.SUCCESS, ok
    assert bind(a, 0x4000, rb) is None
    assert a.send_raw(build_channel_data(0x4000, b"ping")) == [SendToPeer(ra, b"ping", rb)]
    [cmd] = a.relay.handle_peer(rb, b"ping", ra, a.now)  # arrives on B's relay from A's
    assert isinstance(cmd, SendToClient) and cmd.to == (b.address, b.local, Transport.UDP)
    assert parse_message(cmd.data).get(A.XOR_PEER_ADDRESS) == ra
    assert send_indication(b, ra, b"pong") == [SendToPeer(rb, b"pong", ra)]
    [back] = a.relay.handle_peer(ra, b"pong", rb, a.now)
    assert isinstance(back, SendToClient) and parse_channel_data(back.data) == (0x4000, b"pong")


@pytest.mark.parametrize("port", [22, 3478, 49999, 50100])
def test_relay_ip_outside_the_relay_port_range_stays_unreachable(port: int) -> None:
    # RFC 8656 §9: the permission is per IP, so the port is checked wherever one is named.
    a, b = two_allocations()
    own = Address(RELAY4, port)
    ok = a.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, own)])
    assert ok.message_class is MessageClass.SUCCESS
    assert bind(a, 0x4000, own) == 403
    assert send_indication(a, own, b"x") == []
    assert send_indication(a, b.relayed(), b"x") == [SendToPeer(a.relayed(), b"x", b.relayed())]


def test_relay_to_relay_leaves_the_rest_of_the_policy_alone() -> None:
    a, _ = two_allocations()
    for peer in ("192.0.2.2", "127.0.0.1", SERVER_LIKE):
        denied = a.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, Address(peer, 50000))])
        assert error_code(denied) == 403, peer


def test_allow_hole_for_the_relay_ip_opens_every_port() -> None:
    a, _ = two_allocations(allow=(RELAY4 + "/32",))  # allow wins, as everywhere in the policy
    assert bind(a, 0x4000, Address(RELAY4, 3478)) is None


def test_allow_opens_a_hole() -> None:
    client = Client(make_relay(allow=("127.0.0.1/32",)))
    client.allocate()
    ok = client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, Address("127.0.0.1", 1))])
    assert ok.message_class is MessageClass.SUCCESS
    other = client.request(
        Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, Address("127.0.0.2", 1))]
    )
    assert error_code(other) == 403


def test_create_permission_is_all_or_nothing_and_checks_family() -> None:
    client = allocated()
    both = [(A.XOR_PEER_ADDRESS, PEER), (A.XOR_PEER_ADDRESS, Address("10.0.0.1", 1))]
    assert error_code(client.request(Method.CREATE_PERMISSION, both)) == 403
    relay_addr = client.relayed()
    assert client.relay.allocations.by_relay[relay_addr].permissions == {}
    assert (
        error_code(client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER6)])) == 443
    )
    assert error_code(client.request(Method.CREATE_PERMISSION, [])) == 400


# -- channels ------------------------------------------------------------------------------


def bind(client: Client, number: int, peer: Address) -> int | None:
    attrs = [(A.CHANNEL_NUMBER, number), (A.XOR_PEER_ADDRESS, peer)]
    return error_code(client.request(Method.CHANNEL_BIND, attrs))


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_channel_data_both_ways(transport: Transport) -> None:
    client = Client(make_relay(), transport=transport)
    client.allocate()
    relay_addr = client.relayed()
    assert bind(client, 0x4001, PEER) is None
    out = client.send_raw(build_channel_data(0x4001, b"abcde", pad=True))
    assert out == [SendToPeer(relay_addr, b"abcde", PEER)]
    [cmd] = client.relay.handle_peer(relay_addr, b"abcde", PEER, client.now)
    assert isinstance(cmd, SendToClient)
    # §12.5: padded to 4 over TCP; over UDP natkit sends it unpadded.
    assert len(cmd.data) == (12 if transport is Transport.TCP else 9)
    assert parse_channel_data(cmd.data) == (0x4001, b"abcde")


def test_channel_number_range_and_rebinding_rules() -> None:
    client = allocated()
    other = Address("1.1.1.1", 7)
    assert bind(client, 0x3FFF, PEER) == 400
    assert bind(client, 0x5000, PEER) == 400
    assert bind(client, 0x4000, PEER) is None
    assert bind(client, 0x4000, PEER) is None  # refresh: same number, same peer
    assert bind(client, 0x4000, other) == 400  # number taken by another peer
    assert bind(client, 0x4001, PEER) == 400  # peer has another number
    assert bind(client, 0x4001, other) is None


def test_channel_binding_installs_a_permission_and_expires() -> None:
    client = allocated()
    relay_addr = client.relayed()
    bind(client, 0x4000, PEER)
    assert client.send_raw(build_channel_data(0x4000, b"x")) == [SendToPeer(relay_addr, b"x", PEER)]
    assert send_indication(client, PEER, b"y") == [SendToPeer(relay_addr, b"y", PEER)]
    client.request(Method.REFRESH, [(A.LIFETIME, 3600)])
    client.now += 300  # permission gone (300 s) though the channel lives 600 s
    assert client.send_raw(build_channel_data(0x4000, b"x")) == []
    client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER)])
    client.now += 300  # channel expired at 600 s
    client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER)])
    assert client.send_raw(build_channel_data(0x4000, b"x")) == []
    [cmd] = client.relay.handle_peer(relay_addr, b"z", PEER, client.now)  # Data indication now
    assert parse_message(cmd.data).method == Method.DATA  # type: ignore[union-attr]
    # Quarantine (§12): for 5 more minutes the number cannot go to another peer.
    client.relay.handle_timeout(client.now)
    assert bind(client, 0x4000, Address("1.1.1.1", 7)) == 400
    client.now += 300
    client.relay.handle_timeout(client.now)
    assert bind(client, 0x4000, Address("1.1.1.1", 7)) is None


def test_garbage_and_unknown_traffic_is_ignored() -> None:
    client = allocated()
    assert client.send_raw(b"") == []
    assert client.send_raw(b"\x80junk") == []
    assert client.send_raw(b"\x40\x00\x00\x10short") == []
    assert client.send_raw(build_channel_data(0x4005, b"unbound")) == []
    binding = Message(Method.BINDING, MessageClass.REQUEST, bytes(12)).encode()
    assert client.send_raw(binding) == []  # Binding is the STUN server's
    unknown = Message(0x0FF, MessageClass.REQUEST, bytes(12)).encode()
    client.send_raw(unknown)
    assert error_code(client.response()) == 400
    stranger = Client(client.relay, address=Address("198.51.100.9", 1))
    assert stranger.send_raw(build_channel_data(0x4000, b"x")) == []


def test_allow_range_around_the_relay_ip_keeps_it_port_checked() -> None:
    # Issue 11 item 6: a range opened for a LAN does not open this host inside it; the relay IP
    # then stays reachable only at relay ports (relay to relay), every other own address not at
    # all, while the rest of the range is open.
    a, b = two_allocations(allow=("192.0.2.0/24",))
    assert bind(a, 0x4000, Address(RELAY4, 3478)) == 403
    assert bind(a, 0x4001, b.relayed()) is None
    other = a.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, Address("192.0.2.77", 1))])
    assert other.message_class is MessageClass.SUCCESS
