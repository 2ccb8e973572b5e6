"""Fuzz BindingHandler.handle and parse_message with 100,000+ random and mutated datagrams.

Properties: no exception escapes; the parser's totality guard never fires (every rejection is a
deliberate StunDecodeError); any answer is to a well-formed Binding request, carries its
transaction id, and stays within the amplification bound stated in natkit/stun/binding.py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from natkit.addr import Address, Transport
from natkit.stun import (
    AttrType,
    AttrValue,
    BindingHandler,
    ChangeRequest,
    ErrorCode,
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    parse_message,
)

PRIMARY, ALTERNATE = Address("203.0.113.10", 3478), Address("203.0.113.11", 3479)
CLIENT = Address("198.51.100.7", 40000)
COUNT = 100_000


def corpus(rng: random.Random) -> list[bytes]:
    attrs: list[list[tuple[int, AttrValue]]] = [
        [],
        [(AttrType.SOFTWARE, "fuzz client")],
        [(AttrType.CHANGE_REQUEST, ChangeRequest(True, True))],
        [(AttrType.CHANGE_REQUEST, ChangeRequest(False, True)), (AttrType.PADDING, bytes(12))],
        [(AttrType.RESPONSE_PORT, 50000)],
        [(AttrType.PRIORITY, 7), (AttrType.USE_CANDIDATE, True), (AttrType.USERNAME, "a:b")],
        [(0x7F00, b"unknown"), (0xC000, b"optional")],
        [(AttrType.XOR_MAPPED_ADDRESS, CLIENT), (AttrType.ERROR_CODE, ErrorCode(420, "x"))],
    ]
    out = []
    for a in attrs:
        for tid_len in (12, 16):
            msg = Message(Method.BINDING, MessageClass.REQUEST, rng.randbytes(tid_len), list(a))
            out.append(msg.encode())
            out.append(msg.encode(fingerprint=True))
            out.append(msg.encode(integrity_key=b"key", fingerprint=True))
    return out


def mutate(rng: random.Random, seed: bytes) -> bytes:
    if len(seed) < 4:
        return rng.randbytes(rng.randrange(24))
    data = bytearray(seed)
    choice = rng.randrange(6)
    if choice == 0:  # bit flips
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncation
        del data[rng.randrange(len(data)) :]
    elif choice == 2:  # header length lies
        data[2:4] = rng.randrange(0, 0x10000).to_bytes(2, "big")
    elif choice == 3 and len(data) > 24:  # attribute length lies (first attribute)
        data[22:24] = rng.choice([0, 1, 3, 0xFFFF, rng.randrange(0x10000)]).to_bytes(2, "big")
    elif choice == 4:  # trailing garbage / extension
        data += rng.randbytes(rng.randint(1, 12))
    else:  # attribute type swap
        if len(data) > 24:
            data[20:22] = rng.randrange(0x10000).to_bytes(2, "big")
    return bytes(data)


def generators(rng: random.Random) -> list[Callable[[], bytes]]:
    seeds = corpus(rng)
    return [
        lambda: rng.randbytes(rng.choice([0, 1, 4, 19, 20, 24, 28, 32, rng.randrange(200)])),
        lambda: b"\x00\x01" + rng.randbytes(rng.randrange(40)),
        lambda: mutate(rng, rng.choice(seeds)),
        lambda: mutate(rng, mutate(rng, rng.choice(seeds))),
        lambda: rng.choice(seeds),  # valid requests keep the answer checks exercised
    ]


@pytest.mark.slow
def test_fuzz_handler_and_parser() -> None:
    rng = random.Random(0x5747)
    handlers = [BindingHandler(), BindingHandler(primary=PRIMARY, alternate=ALTERNATE)]
    gens = generators(rng)
    answered = 0
    started = time.monotonic()
    for i in range(COUNT):
        data = gens[i % len(gens)]()
        try:
            request = parse_message(data)
        except StunDecodeError as exc:
            assert exc.__cause__ is None, f"totality guard fired on {data.hex()}: {exc!r}"
            request = None
        transport = Transport.TCP if i % 7 == 0 else Transport.UDP
        out = handlers[i % 2].handle(data, CLIENT, PRIMARY, transport)
        if out is None:
            continue
        answered += 1
        assert request is not None, f"answered garbage {data.hex()}"
        assert request.method == Method.BINDING
        assert request.message_class == MessageClass.REQUEST
        response = parse_message(out.data)
        assert response.transaction_id == request.transaction_id
        assert len(out.data) <= 3.4 * len(data), (data.hex(), out.data.hex())
    assert answered > COUNT // 10
    assert time.monotonic() - started < 60
