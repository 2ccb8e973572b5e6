"""RFC 6062 TCP relays in the sans-IO core, rule by rule, with the clock driven by the test.

The control connection and the data connections are `Client`s of the same relay on TCP
5-tuples; what the adapter would do (dial, accept, splice, close) is read from the commands and
`relay.tcp.outbox` and reported back by hand.
"""

from __future__ import annotations

import pytest

from natkit.addr import Address, FiveTuple, Transport
from natkit.stun.attributes import AttrValue
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.integrity import check_integrity
from natkit.stun.message import Message, parse_message
from natkit.turn.commands import CloseRelay, OpenRelay, SendToClient
from natkit.turn.refusals import explain
from natkit.turn.relay import Relay
from natkit.turn.tcp_relay import (
    BIND_TIMEOUT,
    CONNECT_TIMEOUT,
    Answer,
    Dial,
    Drop,
    Splice,
    State,
    TcpCommand,
)
from tests.unit.test_turn_relay_client import (
    CLIENT,
    PEER,
    PEER6,
    RELAY4,
    Client,
    error_code,
    make_relay,
)

A = AttrType
TCP_ALLOCATE: list[tuple[int, AttrValue]] = [(A.REQUESTED_TRANSPORT, 6)]
PEER2 = Address("8.8.4.4", 5001)


def control(relay: Relay | None = None, transport: Transport = Transport.TCP) -> Client:
    """A client with a TCP allocation on its control connection, the relay listening on it."""
    client = Client(relay or make_relay(), transport=transport)
    response = client.request(Method.ALLOCATE, TCP_ALLOCATE)
    assert response.message_class is MessageClass.SUCCESS, response
    opened = [c for c in client.last if isinstance(c, OpenRelay)]
    assert len(opened) == 1 and client.relay.tcp.is_tcp(opened[0].relay)
    client.relay.tcp.listening(opened[0].relay)  # what the adapter reports once it listens
    return client


def data_connection(owner: Client, port: int = 40001, username: str = "alice") -> Client:
    """A new TCP connection of the same client host (its nonce works: bound to the IP)."""
    password = {"alice": "wonderland", "bob": "builder"}[username]
    address = Address(CLIENT.host, port)
    return Client(owner.relay, address=address, transport=Transport.TCP, username=username,
                  password=password, nonce=owner.nonce, now=owner.now)  # fmt: skip


def outbox(relay: Relay) -> list[TcpCommand]:
    out, relay.tcp.outbox = relay.tcp.outbox, []
    return out


def connect(client: Client, peer: Address = PEER) -> Message | int:
    """A Connect: its error answer, or the CONNECTION-ID of the dial it started."""
    if client.nonce is None:
        probe = client.build(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)], sign=False)
        client.send_raw(probe)
        client.nonce = str(client.response().get(A.NONCE))
    client.send_raw(client.build(Method.CONNECT, [(A.XOR_PEER_ADDRESS, peer)]))
    if client.last and error_code(client.response()) == 438:  # the client retries, fresh nonce
        client.nonce = str(client.response().get(A.NONCE))
        client.send_raw(client.build(Method.CONNECT, [(A.XOR_PEER_ADDRESS, peer)]))
    if client.last:
        answer = client.response()
        assert error_code(answer) not in (None, 401, 438), answer
        return answer
    (dial,) = outbox(client.relay)
    assert isinstance(dial, Dial) and dial.peer == peer and dial.relay == client.relayed()
    return dial.cid


def connected(client: Client, peer: Address = PEER) -> int:
    """Connect, and the dial succeeded: the CONNECTION-ID the success announced."""
    cid = connect(client, peer)
    assert isinstance(cid, int)
    (answer,) = client.relay.tcp.connected(cid, client.now)
    assert isinstance(answer, Answer)
    assert answer.reply.to == (client.address, client.local, Transport.TCP)
    assert check_integrity(answer.reply.data, client.key)
    msg = parse_message(answer.reply.data)
    assert (msg.method, msg.message_class) == (Method.CONNECT, MessageClass.SUCCESS)
    assert msg.get(A.CONNECTION_ID) == cid
    return cid


def bind(data: Client, cid: object) -> Message:
    attrs: list[tuple[int, AttrValue]] = [] if cid is None else [(A.CONNECTION_ID, cid)]
    return data.request(Method.CONNECTION_BIND, attrs)


def code(answer: Message | int) -> int | None:
    assert isinstance(answer, Message), answer
    return error_code(answer)


# -- Allocate (§5.1) -----------------------------------------------------------------------


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
def test_a_tcp_allocation_over_tcp_or_tls(transport: Transport) -> None:
    client = control(transport=transport)
    response = client.response()
    relayed = response.get(A.XOR_RELAYED_ADDRESS)
    assert isinstance(relayed, Address) and relayed.host == RELAY4
    assert A.RESERVATION_TOKEN not in response  # §5.1 item 5


def test_a_udp_allocation_over_tcp_stays_udp() -> None:
    client = Client(make_relay(), transport=Transport.TCP)
    client.allocate()
    (opened,) = [c for c in client.last if isinstance(c, OpenRelay)]
    assert not client.relay.tcp.is_tcp(opened.relay)


def test_tcp_over_udp_is_400_and_other_protocols_442() -> None:
    client = Client(make_relay())
    assert error_code(client.request(Method.ALLOCATE, TCP_ALLOCATE)) == 400  # §5.1 item 2
    assert error_code(client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 1)])) == 442
    assert not client.relay.allocations.by_five_tuple


@pytest.mark.parametrize(
    "extra",
    [
        (A.DONT_FRAGMENT, True),
        (A.EVEN_PORT, False),
        (A.RESERVATION_TOKEN, bytes(8)),
        (A.ADDITIONAL_ADDRESS_FAMILY, 2),
    ],
)
def test_tcp_allocate_refuses_udp_only_attributes(extra: tuple[int, AttrValue]) -> None:
    client = Client(make_relay(), transport=Transport.TCP)
    assert error_code(client.request(Method.ALLOCATE, [*TCP_ALLOCATE, extra])) == 400  # item 3
    assert not client.relay.allocations.by_five_tuple
    assert client.relay.quota.active == 0  # type: ignore[attr-defined]


# -- Connect (§5.2) ------------------------------------------------------------------------


def test_connect_without_a_tcp_allocation_is_437() -> None:
    relay = make_relay()
    nothing = Client(relay, transport=Transport.TCP)
    assert code(connect(nothing)) == 437
    udp_alloc = Client(relay, address=Address(CLIENT.host, 40009), transport=Transport.TCP)
    udp_alloc.allocate()
    assert code(connect(udp_alloc)) == 437  # a UDP allocation relays no TCP
    over_udp = Client(relay)
    assert code(connect(over_udp)) == 437
    assert not relay.tcp.outbox


def test_connect_to_an_expired_allocation_is_437_and_frees_it() -> None:
    client = control()
    relay_addr = client.relayed()
    client.now += 601
    assert code(connect(client)) == 437
    assert CloseRelay(relay_addr) in client.last


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (None, 400),
        (Address("8.8.8.8", 0), 400),
        (PEER6, 443),
        (Address("10.0.0.5", 80), 403),
        (Address("127.0.0.1", 22), 403),
        (Address(RELAY4, 22), 403),  # our relay IP, not a relay port: ssh stays unreachable
    ],
)
def test_connect_checks_the_peer(peer: Address | None, expected: int) -> None:
    client = control()
    attrs: list[tuple[int, AttrValue]] = [] if peer is None else [(A.XOR_PEER_ADDRESS, peer)]
    assert error_code(client.request(Method.CONNECT, attrs)) == expected
    assert not client.relay.tcp.outbox and not client.relay.tcp.connections


def test_connect_to_another_allocation_of_this_relay_is_allowed() -> None:
    client = control()
    cid = connect(client, Address(RELAY4, 50050))  # a relay port: relay to relay, as for UDP
    assert isinstance(cid, int)


def test_connect_by_another_user_is_441() -> None:
    client = control()
    client.username, client.password = "bob", "builder"
    assert code(connect(client)) == 441


def test_connect_success_carries_the_connection_id_and_installs_no_permission() -> None:
    client = control()
    cid = connected(client)
    alloc = client.relay.allocations.by_five_tuple[(client.address, client.local, Transport.TCP)]
    assert client.relay.tcp.connections[cid].state is State.PENDING
    assert not alloc.permissions  # §5.2 needs none and makes none


def test_a_second_connect_to_the_same_peer_is_446_in_every_state() -> None:
    client = control()
    cid = connect(client)
    assert isinstance(cid, int)
    assert code(connect(client)) == 446  # connecting
    client.relay.tcp.connected(cid, client.now)
    assert code(connect(client)) == 446  # pending
    assert code(bind(data_connection(client), cid)) is None
    outbox(client.relay)  # the Splice
    assert code(connect(client)) == 446  # bound
    assert isinstance(connect(client, PEER2), int)  # another peer is fine
    client.relay.tcp.closed(cid)
    assert isinstance(connect(client), int)  # once it is gone, again


def test_a_failed_dial_is_447_and_dropped() -> None:
    client = control()
    cid = connect(client)
    assert isinstance(cid, int)
    answer, drop = client.relay.tcp.failed(cid)
    assert drop == Drop(cid) and isinstance(answer, Answer)
    assert error_code(parse_message(answer.reply.data)) == 447
    assert check_integrity(answer.reply.data, client.key)
    assert cid not in client.relay.tcp.connections
    assert client.relay.tcp.failed(cid) == [Drop(cid)]  # a late report changes nothing


def test_a_dial_that_takes_too_long_is_447() -> None:
    client = control()
    cid = connect(client)
    tcp = client.relay.tcp
    assert tcp.tick(client.now + CONNECT_TIMEOUT - 1) == []
    answer, drop = tcp.tick(client.now + CONNECT_TIMEOUT)
    assert isinstance(answer, Answer) and drop == Drop(cid)  # type: ignore[arg-type]
    assert error_code(parse_message(answer.reply.data)) == 447
    assert tcp.connected(cid, client.now) == [Drop(cid)]  # a dial finishing after its 447


def test_connections_per_allocation_are_capped_with_508() -> None:
    client = control()
    client.relay.tcp.limit = 2
    assert isinstance(connect(client, PEER), int)
    assert isinstance(connect(client, PEER2), int)
    assert code(connect(client, Address("9.9.9.9", 80))) == 508
    permit(client, Address("9.9.9.9", 0))
    incoming = client.relay.tcp.incoming(client.relayed(), Address("9.9.9.9", 9), client.now)
    assert incoming is None  # an incoming connection counts the same


# -- incoming connections (§5.3) -----------------------------------------------------------


def permit(client: Client, peer: Address) -> None:
    assert (
        error_code(client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, peer)])) is None
    )


def test_an_incoming_connection_needs_a_permission() -> None:
    client = control()
    tcp = client.relay.tcp
    assert tcp.incoming(client.relayed(), PEER, client.now) is None
    permit(client, PEER)
    result = tcp.incoming(client.relayed(), PEER, client.now)
    assert result is not None
    cid, (attempt,) = result
    assert isinstance(attempt, SendToClient)
    assert attempt.to == (client.address, client.local, Transport.TCP)
    msg = parse_message(attempt.data)
    assert (msg.method, msg.message_class) == (
        Method.CONNECTION_ATTEMPT,
        MessageClass.INDICATION,
    )
    assert msg.get(A.CONNECTION_ID) == cid and msg.get(A.XOR_PEER_ADDRESS) == PEER
    assert tcp.incoming(client.relayed(), PEER, client.now) is None  # that peer has one
    # The permission is per IP (RFC 8656 §9): another port of the same host may connect.
    assert tcp.incoming(client.relayed(), Address(PEER.host, 6000), client.now) is not None
    client.now += 301  # permissions last 300 s
    assert tcp.incoming(client.relayed(), Address(PEER.host, 7000), client.now) is None


def test_an_incoming_connection_to_an_unknown_relay_is_refused() -> None:
    client = control()
    permit(client, PEER)
    assert client.relay.tcp.incoming(Address(RELAY4, 1), PEER, client.now) is None


def test_an_unbound_connection_is_dropped_after_30_seconds() -> None:
    client = control()
    permit(client, PEER)
    tcp = client.relay.tcp
    result = tcp.incoming(client.relayed(), PEER, client.now)
    assert result is not None
    cid = result[0]
    bound = connected(client, PEER2)
    assert code(bind(data_connection(client), bound)) is None
    assert tcp.tick(client.now + BIND_TIMEOUT - 1) == []
    assert tcp.tick(client.now + BIND_TIMEOUT) == [Drop(cid)]  # the bound one stays
    assert set(tcp.connections) == {bound}


# -- ConnectionBind (§5.4) -----------------------------------------------------------------


def test_connection_bind_splices_a_new_connection() -> None:
    client = control()
    cid = connected(client)
    data = data_connection(client)
    answer = bind(data, cid)
    assert answer.message_class is MessageClass.SUCCESS
    assert answer.method == Method.CONNECTION_BIND
    assert outbox(client.relay) == [Splice(cid)]
    conn = client.relay.tcp.connections[cid]
    assert conn.state is State.BOUND and conn.client == (data.address, data.local, Transport.TCP)
    assert code(bind(data_connection(client, 40002), cid)) == 400  # bound already


def test_connection_bind_refusals() -> None:
    client = control()
    cid = connected(client)
    data = data_connection(client)
    assert code(bind(data, None)) == 400
    assert code(bind(data, cid ^ 1)) == 400
    assert code(bind(data_connection(client, username="bob"), cid)) == 441
    assert code(bind(client, cid)) == 400  # the control connection stays one
    over_udp = Client(client.relay, address=Address(CLIENT.host, 40003), nonce=client.nonce)
    assert code(bind(over_udp, cid)) == 400
    dialling = connect(client, PEER2)
    assert code(bind(data, dialling)) == 400  # not connected yet
    assert not outbox(client.relay)
    assert code(bind(data, cid)) is None  # all of that left it pending


def test_an_unsigned_connection_bind_is_challenged_not_437() -> None:
    client = control()
    cid = connected(client)
    data = data_connection(client)
    data.send_raw(data.build(Method.CONNECTION_BIND, [(A.CONNECTION_ID, cid)], sign=False))
    assert error_code(data.response()) == 401
    data.send_raw(data.build(Method.CONNECTION_BIND, [], sign=False))
    assert error_code(data.response()) == 400


def test_connection_bind_after_the_allocation_expired_is_400() -> None:
    client = control()
    cid = connected(client)
    data = data_connection(client)
    data.now += 601
    assert code(bind(data, cid)) == 400


# -- the end of an allocation (§5.5) -------------------------------------------------------


def populated() -> tuple[Client, set[int]]:
    """A TCP allocation with a connecting, a pending, a bound and an incoming connection."""
    client = control()
    dialling = connect(client, Address("9.9.9.9", 80))
    assert isinstance(dialling, int)
    pending = connected(client, PEER2)
    bound = connected(client, PEER)
    assert code(bind(data_connection(client), bound)) is None
    permit(client, Address("1.1.1.1", 0))
    result = client.relay.tcp.incoming(client.relayed(), Address("1.1.1.1", 9), client.now)
    assert result is not None
    outbox(client.relay)
    return client, {dialling, pending, bound, result[0]}


def released(client: Client, commands: list[object]) -> set[int]:
    """What the adapter does on the CloseRelay in `commands`: the connections dropped."""
    (closed,) = [c for c in commands if isinstance(c, CloseRelay)]
    drops = client.relay.tcp.released(closed.relay)
    assert all(isinstance(d, Drop) for d in drops)
    return {d.cid for d in drops if isinstance(d, Drop)}


def test_refresh_zero_drops_every_connection() -> None:
    client, cids = populated()
    client.request(Method.REFRESH, [(A.LIFETIME, 0)])
    assert released(client, list(client.last)) == cids
    assert not client.relay.tcp.connections


def test_expiry_drops_every_connection() -> None:
    client, cids = populated()
    assert released(client, list(client.relay.handle_timeout(client.now + 600))) == cids
    assert not client.relay.tcp.connections


def test_losing_the_control_connection_drops_every_connection() -> None:
    client, cids = populated()
    five_tuple = FiveTuple(client.address, client.local, Transport.TCP)
    assert released(client, list(client.relay.connection_lost(five_tuple, client.now))) == cids
    assert client.relay.tcp.tick(client.now + 3600) == []


def test_shutdown_drops_every_connection() -> None:
    client, cids = populated()
    client.relay.close()
    assert {c.cid for c in client.relay.tcp.close() if isinstance(c, Drop)} == cids


def test_a_mark_of_an_allocation_that_never_listened_is_forgotten() -> None:
    client = Client(make_relay(), transport=Transport.TCP)
    client.request(Method.ALLOCATE, TCP_ALLOCATE)
    (opened,) = [c for c in client.last if isinstance(c, OpenRelay)]
    relay = client.relay
    # The adapter could not bind any port: the allocation goes without a CloseRelay.
    for _ in range(8):
        commands = relay.relay_unavailable(relay.allocations.by_relay[opened.relay].relay, 0)
        opened = next((c for c in commands if isinstance(c, OpenRelay)), opened)
        if not relay.allocations.by_five_tuple:
            break
    assert not relay.allocations.by_five_tuple
    relay.tcp.tick(client.now)
    assert not relay.tcp._by_alloc


# -- refusals ------------------------------------------------------------------------------


def test_446_and_447_are_explained() -> None:
    client = control()
    cid = connect(client)
    assert isinstance(cid, int)
    request = client.build(Method.CONNECT, [(A.XOR_PEER_ADDRESS, PEER)])
    client.send_raw(request)
    refusal = explain(request, client.last[0].data, CLIENT, client.relay.policy.is_allowed)  # type: ignore[union-attr]
    assert refusal is not None and (refusal.code, refusal.reason) == (446, "connection_exists")
    answer = client.relay.tcp.failed(cid)[0]
    assert isinstance(answer, Answer)
    refusal = explain(answer.request, answer.reply.data, CLIENT, client.relay.policy.is_allowed)
    assert refusal is not None and (refusal.code, refusal.reason) == (447, "connection_failed")
    assert refusal.method == "other" and "alice" in refusal.detail


def test_a_refused_connection_bind_says_why() -> None:
    client = control()
    data = data_connection(client)
    request = data.build(Method.CONNECTION_BIND, [(A.CONNECTION_ID, 12345)])
    data.send_raw(request)
    (answer,) = data.last
    assert isinstance(answer, SendToClient)
    refusal = explain(request, answer.data, data.address, client.relay.policy.is_allowed)
    assert refusal is not None and refusal.reason == "bad_request"
    assert "CONNECTION-ID" in refusal.detail


def test_a_tcp_allocation_has_no_channels_and_no_send() -> None:
    """RFC 6062 §6: data of a TCP allocation moves on connections only. A ChannelBind would
    install a permission and a channel nothing can use: 400; a Send indication is dropped."""
    client = control()
    bind_attrs: list[tuple[int, AttrValue]] = [
        (A.CHANNEL_NUMBER, 0x4000),
        (A.XOR_PEER_ADDRESS, PEER),
    ]
    assert error_code(client.request(Method.CHANNEL_BIND, bind_attrs)) == 400
    alloc = client.relay.allocations.by_five_tuple[(client.address, client.local, client.transport)]
    assert not alloc.channels and not alloc.permitted(PEER.host, client.now)
    send = Message(Method.SEND, MessageClass.INDICATION, bytes(12),
                   [(A.XOR_PEER_ADDRESS, PEER), (A.DATA, b"hello")]).encode()  # fmt: skip
    assert client.send_raw(send) == []
