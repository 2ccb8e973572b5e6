"""RFC 8489 §9.2 in the builtin TURN server, sans-IO: SHA-256 long-term credentials, the nonce
cookie, the bid-down checks, USERHASH and MESSAGE-INTEGRITY-SHA256 (natkit.turn.auth).

The SHA-256 client is the tests' own (tests/unit/turn_sha256_client.py), itself checked
against RFC 8489 Appendix B.1 as corrected by verified erratum 6268 (tests/data/stun).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from natkit.addr import Address
from natkit.stun.attributes import MAX_PASSWORD_ALGORITHMS, AttrValue, PasswordAlgorithm
from natkit.stun.constants import AttrType, MessageClass, Method, PasswordAlgorithmId
from natkit.stun.errors import StunDecodeError
from natkit.stun.integrity import (
    PASSWORD_ALGORITHMS_FEATURE,
    USERNAME_ANONYMITY_FEATURE,
    check_integrity,
    check_integrity_sha256,
    long_term_key,
    message_integrity_sha256,
    nonce_cookie,
    nonce_features,
    userhash,
)
from natkit.stun.message import Message, parse_message
from natkit.turn.auth import OFFER, Authenticator, AuthError, Credentials, Sha256SignedKey
from natkit.turn.credentials import mint
from natkit.turn.refusals import explain, is_error_response
from natkit.turn.relay import Relay, SendToClient
from tests.unit.test_turn_relay_client import (
    PEER,
    REALM,
    SECRET,
    T0,
    Client,
    error_code,
    make_relay,
)
from tests.unit.turn_sha256_client import MD5, SHA256, Challenge, DowngradeDetected, Sha256Client

A = AttrType
IP = "198.51.100.7"
ALLOCATE: list[tuple[int, AttrValue]] = [(A.REQUESTED_TRANSPORT, 17)]
B1 = json.loads((Path(__file__).parents[1] / "data" / "stun" / "rfc5769.json").read_text())[
    "sample_request_long_term_sha256"
]


def b1_wire() -> bytes:
    return bytes.fromhex(B1["hex"].replace(" ", ""))


def authenticator(**kwargs: object) -> Authenticator:
    users = kwargs.pop("users", {"alice": "wonderland"})
    return Authenticator(REALM, users=users, nonce_key=b"n" * 32, **kwargs)  # type: ignore[arg-type]


def request(challenge: Challenge, **sign: object) -> Message:
    msg = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12), list(ALLOCATE))
    return parse_message(challenge.sign(msg, "alice", "wonderland", **sign))  # type: ignore[arg-type]


def challenge_of(a: Authenticator, *, legacy: bool = False) -> Challenge:
    attrs = a.challenge(IP, T0, legacy=legacy)
    return Challenge.read(Message(Method.ALLOCATE, MessageClass.ERROR, bytes(12), attrs))


# -- the RFC's own vector and the nonce cookie ----------------------------------------------


def test_appendix_b1_vector_is_what_the_test_client_builds() -> None:
    # RFC 8489 B.1 + erratum 6268: USERHASH, NONCE, REALM, PASSWORD-ALGORITHM, MI-SHA256.
    data = b1_wire()
    msg = parse_message(data)
    assert msg.get(A.USERHASH) == userhash(B1["username"], B1["realm"])
    challenge = Challenge(B1["realm"], B1["nonce"], None)
    bare = Message(msg.method, msg.message_class, msg.transaction_id)
    assert challenge.sign(bare, B1["username"], B1["password"], hashed=True) == data
    # The SASLprep'd password "TheMatrIX" (RFC 8489 B.1) gives the same SHA-256 key.
    key = long_term_key(B1["username"], B1["realm"], B1["password"], PasswordAlgorithmId.SHA256)
    assert key == long_term_key(B1["username"], B1["realm"], "TheMatrIX", 2)
    assert check_integrity_sha256(data, key)
    # Erratum 6290: bit 1 (username anonymity) is the second bit from the right: "AAAC".
    assert nonce_features(B1["nonce"]) == USERNAME_ANONYMITY_FEATURE


def test_appendix_b1_request_through_the_authenticator() -> None:
    """The vector's user as a static user: its own nonce is not ours (438); re-signed with a
    nonce we issued it authenticates by USERHASH, and with the RFC 8489 cookie (the
    "Password algorithms" bit) its missing PASSWORD-ALGORITHMS is a 400."""
    a = Authenticator(B1["realm"], users={B1["username"]: B1["password"]}, nonce_key=b"n" * 32)
    assert a.check(parse_message(b1_wire()), IP, T0) == AuthError(438, True)
    key = long_term_key(B1["username"], B1["realm"], "TheMatrIX", PasswordAlgorithmId.SHA256)

    def check(challenge: Challenge, password: str) -> Credentials | AuthError:
        bare = Message(Method.BINDING, MessageClass.REQUEST, bytes(12))
        signed = challenge.sign(bare, B1["username"], password, hashed=True)
        return a.check(parse_message(signed), IP, T0)

    cases = ((True, False, True), (False, False, False), (False, True, True))
    for legacy, offer, accepted in cases:
        challenge = Challenge(B1["realm"], a.nonce(IP, T0, legacy=legacy), OFFER if offer else None)
        got = check(challenge, B1["password"])
        if accepted:
            assert got == Credentials(B1["username"], B1["username"], key)
            assert isinstance(got, Credentials) and isinstance(got.key, Sha256SignedKey)
            assert check(challenge, "TheMatrix") == AuthError(401, True)
        else:
            assert isinstance(got, AuthError) and (got.code, got.reason) == (400, "downgrade")


def test_nonce_cookie_shape_and_hostile_nonces() -> None:
    assert nonce_cookie(0) == "obMatJos2AAAA"
    assert nonce_cookie(PASSWORD_ALGORITHMS_FEATURE) == "obMatJos2AAAB"
    assert nonce_cookie(3) == "obMatJos2AAAD"
    assert nonce_features("obMatJos2AAAD" + "x" * 16) == 3
    for bad in ("", "obMatJos2", "obMatJos2AAA", "obMatJos2AA==", "obMatJos2AAé=", "xbMatJos2AAAD",
                "obMatJos2AAA=", "obMatJos2 AAA", "AAAD" * 200):  # fmt: skip
        assert nonce_features(bad) is None, bad


@pytest.mark.parametrize(
    ("users", "secret", "features"),
    [({"alice": "w"}, None, 3), ({}, SECRET, 1), ({"alice": "w"}, SECRET, 1)],
    ids=["users", "secret", "both"],
)
def test_challenge_offers_sha256_first_and_anonymity_only_without_a_secret(
    users: dict[str, str], secret: str | None, features: int
) -> None:
    a = Authenticator(REALM, users=users, secret=secret, nonce_key=b"n" * 32)
    challenge = challenge_of(a)
    assert challenge.offered == OFFER == (SHA256, MD5)
    assert nonce_features(challenge.nonce) == features == a.features
    assert len(challenge.nonce) == 29 and a.nonce_valid(challenge.nonce, IP, T0)
    # The MAC covers the cookie: other feature bits, or the cookie cut off, are not ours.
    body = challenge.nonce[13:]
    for forged in (nonce_cookie(features ^ USERNAME_ANONYMITY_FEATURE) + body, body):
        assert not a.nonce_valid(forged, IP, T0)
    legacy = challenge_of(a, legacy=True)
    assert legacy.offered is None and nonce_features(legacy.nonce) is None


# -- the checks of RFC 8489 §9.2.4 ---------------------------------------------------------


def test_sha256_client_gets_the_sha256_key_and_signs_responses_with_it() -> None:
    a = authenticator()
    creds = a.check(request(challenge_of(a)), IP, T0)
    sha = long_term_key("alice", REALM, "wonderland", PasswordAlgorithmId.SHA256)
    assert creds == Credentials("alice", "alice", sha)
    assert isinstance(creds, Credentials) and isinstance(creds.key, Sha256SignedKey)
    # PASSWORD-ALGORITHM MD5 out of the offer: the MD5 key, responses still MI-SHA256 (§9.2.4).
    creds = a.check(request(challenge_of(a), choose=MD5), IP, T0)
    md5 = long_term_key("alice", REALM, "wonderland")
    assert creds == Credentials("alice", "alice", md5)
    assert isinstance(creds, Credentials) and isinstance(creds.key, Sha256SignedKey)


def test_md5_only_client_is_processed_exactly_as_before() -> None:
    a = authenticator()
    nonce = challenge_of(a).nonce  # it ignores PASSWORD-ALGORITHMS and copies the nonce
    attrs = [*ALLOCATE, (A.USERNAME, "alice"), (A.REALM, REALM), (A.NONCE, nonce)]
    msg = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12), list(attrs))
    md5 = long_term_key("alice", REALM, "wonderland")
    creds = a.check(parse_message(msg.encode(integrity_key=md5)), IP, T0)
    assert creds == Credentials("alice", "alice", md5)
    assert isinstance(creds, Credentials) and type(creds.key) is bytes  # plain MI responses
    # MI-SHA256 without PASSWORD-ALGORITHM(S): processed as MD5, answered with MI (§9.2.4).
    creds = a.check(parse_message(msg.encode(integrity_sha256_key=md5)), IP, T0)
    assert isinstance(creds, Credentials) and type(creds.key) is bytes and creds.key == md5


@pytest.mark.parametrize(
    ("sign", "offered", "detail"),
    [
        ({"send_offer": False}, OFFER, "PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS"),
        ({"choose": None}, OFFER, "PASSWORD-ALGORITHMS without PASSWORD-ALGORITHM"),
        ({"choose": MD5}, (MD5,), "differs from the server's offer"),
        ({"choose": MD5}, (MD5, SHA256), "differs from the server's offer"),
        ({}, (*OFFER, PasswordAlgorithm(3)), "differs from the server's offer"),
        ({"choose": PasswordAlgorithm(3)}, OFFER, "not one of PASSWORD-ALGORITHMS"),
        ({"choose": PasswordAlgorithm(1, b"xx")}, OFFER, "not one of PASSWORD-ALGORITHMS"),
    ],
    ids=["stripped", "no-choice", "md5-only", "reordered", "extended", "unknown", "params"],
)
def test_a_tampered_offer_is_a_400(sign: dict[str, object], offered: tuple[PasswordAlgorithm, ...],
                                   detail: str) -> None:  # fmt: skip
    a = authenticator()
    challenge = challenge_of(a)
    challenge.offered = offered  # what a man in the middle left of the 401
    got = a.check(request(challenge, **sign), IP, T0)
    assert got == AuthError(400, False)
    assert isinstance(got, AuthError) and got.reason == "downgrade" and detail in got.detail


def test_rfc5389_nonce_has_no_offer_to_match() -> None:
    """No "Password algorithms" bit, no list check (§9.2.4); PASSWORD-ALGORITHM still picks
    the key, and an unknown one is a plain 400."""
    a = authenticator()
    legacy = challenge_of(a, legacy=True)
    creds = a.check(request(legacy), IP, T0)
    assert isinstance(creds, Credentials) and isinstance(creds.key, Sha256SignedKey)
    got = a.check(request(legacy, choose=PasswordAlgorithm(7)), IP, T0)
    assert isinstance(got, AuthError) and (got.code, got.reason) == (400, "bad_request")


def test_message_integrity_sha256_rules() -> None:
    a = authenticator()
    challenge = challenge_of(a)
    good = challenge.sign(Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12), list(ALLOCATE)),
                          "alice", "wonderland", md5_too=True)  # fmt: skip
    msg = parse_message(good)
    assert A.MESSAGE_INTEGRITY in msg and isinstance(a.check(msg, IP, T0), Credentials)
    # MI-SHA256 present: it decides; a bad one fails even next to a good MI.
    mi256 = good.index(b"\x00\x1c\x00\x20") + 4
    bad = good[:mi256] + bytes([good[mi256] ^ 1]) + good[mi256 + 1 :]
    assert a.check(parse_message(bad), IP, T0) == AuthError(401, True)
    assert a.check(request(challenge_of(a)), IP, T0 + 601) == AuthError(438, True)  # stale
    wrong = Challenge(challenge.realm, challenge.nonce, challenge.offered)
    msg = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12), list(ALLOCATE))
    assert a.check(parse_message(wrong.sign(msg, "alice", "nope")), IP, T0) == AuthError(401, True)


@pytest.mark.parametrize("size", [16, 20, 28])
def test_truncated_message_integrity_sha256_is_refused_in_turn(size: int) -> None:
    # RFC 8489 §14.6: 16-32 bytes in general, the full 32 unless the usage allows less.
    a = authenticator()
    challenge = challenge_of(a)
    attrs = [*ALLOCATE, (A.USERNAME, "alice"), (A.NONCE, challenge.nonce), (A.REALM, REALM),
             (A.PASSWORD_ALGORITHMS, OFFER), (A.PASSWORD_ALGORITHM, SHA256)]  # fmt: skip
    key = long_term_key("alice", REALM, "wonderland", PasswordAlgorithmId.SHA256)
    full = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12), list(attrs)).encode(
        integrity_sha256_key=key
    )
    prefix = full[:-36]
    mac = message_integrity_sha256(prefix, key, size)
    body = prefix + b"\x00\x1c" + size.to_bytes(2, "big") + mac
    data = body[:2] + (len(body) - 20).to_bytes(2, "big") + body[4:]
    msg = parse_message(data)
    assert check_integrity_sha256(data, key)  # valid STUN, just shorter than TURN accepts
    got = a.check(msg, IP, T0)
    assert got == AuthError(400, False) and isinstance(got, AuthError)
    assert f"truncated to {size} bytes" in got.detail


# -- USERHASH --------------------------------------------------------------------------------


def test_userhash_finds_a_static_user_and_never_a_rest_user() -> None:
    a = authenticator(users={"alice": "wonderland", "bob": "builder"})
    challenge = challenge_of(a)
    creds = a.check(request(challenge, hashed=True), IP, T0)
    assert isinstance(creds, Credentials) and creds.username == "alice"
    # Both USERNAME and USERHASH: which one counts would be a guess.
    msg = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12),
                  [*ALLOCATE, (A.USERNAME, "bob")])  # fmt: skip
    both = parse_message(challenge.sign(msg, "alice", "wonderland", hashed=True))
    got = a.check(both, IP, T0)
    assert isinstance(got, AuthError) and (got.code, got.detail) == (
        400,
        "both USERNAME and USERHASH",
    )
    # A REST API user has no USERHASH: the username embeds its expiry, no table holds it.
    rest = Authenticator(REALM, secret=SECRET, nonce_key=b"n" * 32)
    cred = mint(SECRET, "carol", 60, now=T0)
    rest_challenge = challenge_of(rest)
    assert not rest.features & USERNAME_ANONYMITY_FEATURE
    msg = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12), list(ALLOCATE))
    hashed = parse_message(rest_challenge.sign(msg, cred.username, cred.password, hashed=True))
    assert rest.check(hashed, IP, T0) == AuthError(401, True)
    msg = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12), list(ALLOCATE))
    named = parse_message(rest_challenge.sign(msg, cred.username, cred.password))
    rest.unix_offset = 0.0
    got = rest.check(named, IP, T0)
    assert isinstance(got, Credentials) and got.user == "carol"  # REST + SHA-256 by USERNAME
    assert got.key == long_term_key(cred.username, REALM, cred.password, 2)


# -- through the relay: responses, refusals, hostile input ---------------------------------


def test_sha256_relay_session_every_response_carries_mi_sha256() -> None:
    client = Sha256Client(make_relay(), fingerprint=True)
    assert client.allocate().message_class is MessageClass.SUCCESS
    for method, attrs in (
        (Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER)]),
        (Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, 0x4000), (A.XOR_PEER_ADDRESS, PEER)]),
        (Method.ALLOCATE, ALLOCATE),  # 437: an error to an authenticated request is signed too
        (Method.REFRESH, [(A.LIFETIME, 0)]),
    ):  # fmt: skip
        answer = client.request(method, attrs)
        assert A.MESSAGE_INTEGRITY_SHA256 in answer and A.MESSAGE_INTEGRITY not in answer
        assert check_integrity_sha256(answer.raw, client.key), method
        assert A.FINGERPRINT in answer
    assert error_code(answer) is None
    # The same server, an MD5-only client: MESSAGE-INTEGRITY as ever.
    md5 = Client(client.relay, address=Address("198.51.100.9", 1))
    answer = md5.allocate()
    assert A.MESSAGE_INTEGRITY in answer and A.MESSAGE_INTEGRITY_SHA256 not in answer
    assert check_integrity(answer.raw, md5.key)


def test_401_and_438_carry_the_offer() -> None:
    relay = make_relay(nonce_lifetime=5)
    client = Sha256Client(relay, password="nope")
    answer = client.allocate()
    assert error_code(answer) == 401 and answer.get(A.PASSWORD_ALGORITHMS) == OFFER
    client.password, client.now = "wonderland", T0 + 10  # the nonce is now stale
    client.send_raw(client.build(Method.ALLOCATE, ALLOCATE))
    stale = client.response()
    assert error_code(stale) == 438 and stale.get(A.PASSWORD_ALGORITHMS) == OFFER
    Challenge.read(stale)  # a valid challenge for an RFC 8489 client
    # §9.2.5, the client's half of the bid-down check: the cookie promises an offer.
    kept = [(t, v) for t, v in stale.attributes if t != A.PASSWORD_ALGORITHMS]
    stripped = Message(stale.method, stale.message_class, stale.transaction_id, kept)
    with pytest.raises(DowngradeDetected):
        Challenge.read(stripped)


def _refusal(relay: Relay, client: Client, data: bytes) -> tuple[str, str]:
    commands = client.send_raw(data)
    assert len(commands) == 1 and isinstance(commands[0], SendToClient)
    assert is_error_response(commands[0].data)
    refusal = explain(data, commands[0].data, client.address, relay.policy.is_allowed)
    assert refusal is not None
    return refusal.reason, refusal.detail


def test_refusals_name_the_downgrade_and_the_userhash_problems() -> None:
    relay = make_relay()
    client = Sha256Client(relay)
    client.allocate()  # fetches a nonce
    client.offered = (MD5,)
    reason, detail = _refusal(relay, client, client.build(Method.REFRESH, []))
    assert reason == "downgrade" and "differs from the server's offer" in detail
    assert "user 'alice'" in detail
    # A 400 of the method handler (after authentication) is still "bad_request".
    client.offered = OFFER
    assert _refusal(relay, client, client.build(Method.CREATE_PERMISSION, []))[0] == "bad_request"
    # USERHASH on a server with a secret (no anonymity offered) is explained as such.
    rest = Relay(relay.settings, Authenticator(REALM, secret=SECRET), relay.policy)
    hashed = Sha256Client(rest, hashed=True, address=Address("198.51.100.9", 2))
    assert error_code(hashed.allocate()) == 401
    reason, detail = _refusal(rest, hashed, hashed.build(Method.ALLOCATE, ALLOCATE))
    assert reason == "credentials" and "no username anonymity" in detail
    assert f"userhash {userhash('alice', REALM)[:4].hex()}" in detail


def test_password_algorithms_is_bounded_at_decode() -> None:
    many = tuple(PasswordAlgorithm(i) for i in range(MAX_PASSWORD_ALGORITHMS + 1))
    msg = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12), [(A.PASSWORD_ALGORITHMS, many)])
    with pytest.raises(StunDecodeError):
        parse_message(msg.encode())
    ok = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12),
                 [(A.PASSWORD_ALGORITHMS, many[:-1])])  # fmt: skip
    assert parse_message(ok.encode()).get(A.PASSWORD_ALGORITHMS) == many[:-1]


def test_hostile_mutations_of_sha256_requests_never_raise() -> None:
    """Byte flips, cuts and spliced attributes of valid SHA-256 and USERHASH requests: the
    core answers or drops, never raises (5,000 packets, seeded)."""
    rng = random.Random(8489)
    relay = make_relay()
    seeds = []
    for hashed in (False, True):
        client = Sha256Client(relay, hashed=hashed, address=Address(IP, 3000 + hashed))
        client.allocate()
        seeds.append(client.build(Method.REFRESH, [(A.LIFETIME, 600)]))
        seeds.append(client.build(Method.ALLOCATE, ALLOCATE))
    junk = [b"\x80\x02\x00\x04\x00\x02\x00\x00", b"\x00\x1d\x00\x02\x00\x02\x00\x00",
            b"\x00\x1e\x00\x20" + bytes(32), b"\x00\x1c\x00\x10" + bytes(16),
            b"\x80\x02\x00\x06\x00\x01\x00\x09\x00\x00\x00\x00"]  # fmt: skip
    for _ in range(5000):
        data = bytearray(rng.choice(seeds))
        kind = rng.randrange(3)
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(20, len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data = data[: rng.randrange(20, len(data))]
            data[2:4] = (len(data) - 20).to_bytes(2, "big")
        else:
            at = 20 + 4 * rng.randrange((len(data) - 20) // 4)
            data[at:at] = rng.choice(junk)
            data[2:4] = (len(data) - 20).to_bytes(2, "big")
        source = Address(IP, 3000 + rng.randrange(2))
        relay.handle_client(bytes(data), source, client.local, client.transport, T0)
