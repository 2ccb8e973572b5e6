"""The amplification bound of natkit/turn/relay.py, sans-IO: for every kind of request that did
not authenticate, answer bytes / request bytes <= AMPLIFICATION_LIMIT (3.5), and the exact sizes
stated in the relay's docstring. tests/integration/test_serve_amplification.py measures the same
through `natkit serve` over UDP."""

from __future__ import annotations

import os
import random

import pytest

from natkit.addr import Address, Transport
from natkit.stun.attributes import AttrValue
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.message import Message, parse_message
from natkit.turn.auth import Authenticator
from natkit.turn.peers import PeerPolicy
from natkit.turn.relay import AMPLIFICATION_LIMIT, Relay, RelaySettings, SendToClient
from tests.unit.test_turn_relay_client import PEER, REALM, Client
from tests.unit.turn_sha256_client import Sha256Client

A = AttrType  # REALM "natkit.test": 11 bytes, padded like the default "natkit.local" (12)
CLIENT = Address("198.51.100.7", 40000)
SERVER = Address("192.0.2.1", 3478)
T0 = 1_000_000.0
PEER_ATTR: list[tuple[int, AttrValue]] = [(A.XOR_PEER_ADDRESS, PEER)]
BIND_ATTRS: list[tuple[int, AttrValue]] = [(A.CHANNEL_NUMBER, 0x4000), *PEER_ATTR]


def relay(realm: str = REALM) -> Relay:
    settings = RelaySettings(relay_ips={4: "192.0.2.1"}, ports=(50000, 50009), software="natkit")
    auth = Authenticator(realm, users={"alice": "wonderland"}, nonce_key=b"k" * 32)
    return Relay(settings, auth, PeerPolicy(()), random.Random(1))


def unsigned(
    method: int, attrs: list[tuple[int, AttrValue]], *, fingerprint: bool = False
) -> bytes:
    msg = Message(method, MessageClass.REQUEST, os.urandom(12), list(attrs))
    return msg.encode(fingerprint=fingerprint)


def bogus_signed(method: int, nonce: str) -> bytes:
    """Shortest request that reaches the credential check: 1-byte USERNAME, REALM, NONCE."""
    attrs: list[tuple[int, AttrValue]] = [(A.USERNAME, "m"), (A.REALM, "r"), (A.NONCE, nonce)]
    msg = Message(method, MessageClass.REQUEST, os.urandom(12), attrs)
    return msg.encode(integrity_key=b"wrong")


def answer(r: Relay, data: bytes, client: Address = CLIENT) -> bytes | None:
    sends = [
        c for c in r.handle_client(data, client, SERVER, Transport.UDP, T0)
        if isinstance(c, SendToClient)
    ]  # fmt: skip
    assert len(sends) <= 1
    return sends[0].data if sends else None


def with_allocation() -> Relay:
    """A relay where CLIENT's 5-tuple holds a live allocation (alice's)."""
    r = relay()
    assert (
        Client(r, address=CLIENT, local=SERVER, now=T0).allocate().message_class.name == "SUCCESS"
    )
    return r


# (name, relay factory, request, expected error code or None for no answer, expected size)
CASES = [
    ("Allocate, no attributes", relay, unsigned(Method.ALLOCATE, []), 400, 40),
    ("Allocate, REQUESTED-TRANSPORT", relay,
     unsigned(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)]), 401, 92),
    ("Allocate, REQUESTED-TRANSPORT + FINGERPRINT", relay,
     unsigned(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)], fingerprint=True), 401, 116),
    ("Allocate, REQUESTED-TRANSPORT=TCP", relay,
     unsigned(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 6)]), 401, 92),
    ("Allocate, unknown user", relay, None, 401, 108),
    ("Allocate, stale nonce", relay, bogus_signed(Method.ALLOCATE, "x"), 438, 104),
    ("Refresh, no allocation", relay, unsigned(Method.REFRESH, []), 437, 48),
    ("Refresh, live allocation", with_allocation, unsigned(Method.REFRESH, []), 401, 64),
    ("CreatePermission, no peer", relay, unsigned(Method.CREATE_PERMISSION, []), 400, 40),
    ("CreatePermission, no allocation", relay,
     unsigned(Method.CREATE_PERMISSION, PEER_ATTR), 437, 48),
    ("CreatePermission, live allocation", with_allocation,
     unsigned(Method.CREATE_PERMISSION, PEER_ATTR), 401, 108),
    ("ChannelBind, no attributes", relay, unsigned(Method.CHANNEL_BIND, []), 400, 40),
    ("ChannelBind, no allocation", relay, unsigned(Method.CHANNEL_BIND, BIND_ATTRS), 437, 48),
    ("ChannelBind, live allocation", with_allocation,
     unsigned(Method.CHANNEL_BIND, BIND_ATTRS), 401, 108),
    ("unknown method 0x00F", relay, unsigned(0x00F, []), 400, 40),
    ("integrity without USERNAME", relay,
     Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12)).encode(integrity_key=b"k"),
     400, 40),
    ("Send indication", relay,
     Message(Method.SEND, MessageClass.INDICATION, os.urandom(12), PEER_ATTR).encode(), None, 0),
    ("malformed (bad length)", relay, b"\x00\x03\x00\x04" + bytes(16), None, 0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "factory", "data", "code", "size"), CASES, ids=[c[0] for c in CASES]
)
def test_unauthenticated_answers_stay_within_the_bound(
    name: str, factory: object, data: bytes | None, code: int | None, size: int
) -> None:
    r = factory()  # type: ignore[operator]
    if data is None:  # unknown user: needs a valid nonce for this client first
        challenge = answer(r, unsigned(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)]))
        assert challenge is not None
        nonce = parse_message(challenge).get(A.NONCE)
        assert isinstance(nonce, str)
        data = bogus_signed(Method.ALLOCATE, nonce)
    out = answer(r, data)
    if code is None:
        assert out is None
        return
    assert out is not None
    msg = parse_message(out)
    error = msg.get(A.ERROR_CODE)
    assert error is not None and error[0] == code, msg  # type: ignore[index]
    assert A.SOFTWARE not in msg and A.MESSAGE_INTEGRITY not in msg
    assert len(out) == size, (name, len(data), len(out))
    assert len(out) <= AMPLIFICATION_LIMIT * len(data), (name, len(data), len(out))


@pytest.mark.parametrize(
    ("realm", "within"), [("r" * 16, True), ("r" * 17, False), ("r" * 44, False)]
)
def test_the_challenge_drops_its_reason_phrase_to_fit_and_long_realms_are_stated(
    realm: str, within: bool
) -> None:
    data = unsigned(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)])
    out = answer(relay(realm), data)
    assert out is not None
    msg = parse_message(out)
    assert msg.get(A.ERROR_CODE) == (401, "") and msg.get(A.REALM) == realm
    # The RFC 8489 form whatever the size (answers.py: no challenge chosen by request size).
    assert msg.get(A.PASSWORD_ALGORITHMS) is not None
    # The docstring's limit: up to 16 bytes of realm the bound holds, beyond it cannot.
    assert (len(out) <= AMPLIFICATION_LIMIT * len(data)) is within


def test_the_rfc5389_challenge_goes_only_to_an_md5_clients_allocation() -> None:
    """answers.py: a 20-byte unsigned Refresh on a live allocation cannot get the RFC 8489
    challenge within the bound; an MD5-only client's allocation gets the RFC 5389 one (64
    bytes), an RFC 8489 client's the full one (92 bytes, the stated exception)."""
    for client, size in ((Client, 64), (Sha256Client, 92)):
        r = relay()
        assert client(r, address=CLIENT, local=SERVER, now=T0).allocate().message_class.name == (
            "SUCCESS"
        )
        data = unsigned(Method.REFRESH, [])
        out = answer(r, data)
        assert out is not None and len(out) == size, (client, out)
        msg = parse_message(out)
        assert (A.PASSWORD_ALGORITHMS in msg) is (client is Sha256Client)


def test_a_client_that_starts_like_aioice_and_chromium_still_authenticates() -> None:
    # Both send an unsigned Allocate with REQUESTED-TRANSPORT first and sign from the 401 on.
    client = Client(relay())
    assert client.allocate(lifetime=600).message_class is MessageClass.SUCCESS
    for method, attrs in ((Method.CREATE_PERMISSION, PEER_ATTR), (Method.CHANNEL_BIND, BIND_ATTRS),
                          (Method.REFRESH, [(A.LIFETIME, 0)])):  # fmt: skip
        assert client.request(method, attrs).message_class is MessageClass.SUCCESS
