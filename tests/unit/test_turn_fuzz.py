"""The TURN core under garbage: random and mutated client messages and peer datagrams never raise,
and whatever it answers is a well-formed STUN message or ChannelData for that client."""

from __future__ import annotations

import random

from natkit.addr import Address
from natkit.net.demux import CHANNEL_DATA, classify
from natkit.stun.constants import AttrType, Method
from natkit.stun.framing import build_channel_data
from natkit.stun.message import Message, parse_message
from natkit.turn.relay import AMPLIFICATION_LIMIT, SendToClient
from tests.unit.test_turn_relay_client import PEER, Client, make_relay

ROUNDS = 30_000


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    match rng.randrange(5):
        case 0:  # bit flips
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(buf))
                buf[i] ^= 1 << rng.randrange(8)
        case 1:  # truncation
            del buf[rng.randrange(len(buf)) :]
        case 2:  # length field lies (STUN header or ChannelData header)
            buf[2:4] = rng.randrange(65536).to_bytes(2, "big")
        case 3:  # an attribute length lies
            if len(buf) > 24:
                i = 20 + 4 * rng.randrange((len(buf) - 20) // 4)
                buf[i + 2 : i + 4] = rng.randrange(65536).to_bytes(2, "big")
        case _:  # junk appended
            buf += rng.randbytes(rng.randrange(1, 40))
    return bytes(buf)


def test_relay_survives_garbage_and_answers_only_well_formed() -> None:
    rng = random.Random(5769)
    client = Client(make_relay())
    assert client.allocate().message_class.name == "SUCCESS"
    peer = Address(PEER.host, PEER.port)
    client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, peer)])
    client.request(
        Method.CHANNEL_BIND, [(AttrType.CHANNEL_NUMBER, 0x4000), (AttrType.XOR_PEER_ADDRESS, peer)]
    )
    relayed = client.relayed()
    seeds = [
        client.build(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)]),
        client.build(Method.REFRESH, [(AttrType.LIFETIME, 600)]),
        client.build(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, peer)]),
        client.build(
            Method.CHANNEL_BIND,
            [(AttrType.CHANNEL_NUMBER, 0x4001), (AttrType.XOR_PEER_ADDRESS, peer)],
        ),
        Message(
            Method.SEND,
            0x10,
            rng.randbytes(12),
            [(AttrType.XOR_PEER_ADDRESS, peer), (AttrType.DATA, b"hi")],
        ).encode(),
        build_channel_data(0x4000, b"media"),
        *(client.build(method, attrs, sign=False) for method, attrs in (
            (Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)]), (Method.REFRESH, []),
            (Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, peer)]),
            (Method.CHANNEL_BIND, [(AttrType.CHANNEL_NUMBER, 0x4001),
                                   (AttrType.XOR_PEER_ADDRESS, peer)]),
        )),
    ]  # fmt: skip
    answered = 0
    for i in range(ROUNDS):
        if i % 10 == 0:
            data = rng.randbytes(rng.randrange(0, 120))
        else:
            data = _mutate(rng, rng.choice(seeds))
        for command in client.send_raw(data):
            if isinstance(command, SendToClient):
                answered += 1
                assert command.to == (client.address, client.local, client.transport)
                if classify(command.data) != CHANNEL_DATA:
                    answer = parse_message(command.data)  # raises if we ever built garbage
                    if AttrType.MESSAGE_INTEGRITY not in answer:  # relay.py's bound
                        assert len(command.data) <= AMPLIFICATION_LIMIT * len(data), data.hex()
        client.relay.handle_peer(relayed, _mutate(rng, b"peer data!"), peer, client.now)
        client.now += 0.001
    assert answered > 0  # mutated but still valid requests do get answers
