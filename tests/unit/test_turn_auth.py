"""Long-term credentials and stateless nonces of the builtin TURN engine (RFC 8489 §9.2)."""

from __future__ import annotations

import base64
import struct

import pytest

from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.integrity import long_term_key
from natkit.stun.message import Message, parse_message
from natkit.turn.auth import Authenticator, AuthError, Credentials
from natkit.turn.credentials import mint

REALM = "natkit.test"
NOW = 1_700_000_000.0


def auth(**kwargs: object) -> Authenticator:
    return Authenticator(REALM, users={"alice": "wonderland"}, secret="sesame",
                         nonce_key=b"n" * 32, **kwargs)  # type: ignore[arg-type]  # fmt: skip


def signed(username: str, password: str, nonce: str, realm: str = REALM) -> Message:
    attrs = [(AttrType.USERNAME, username), (AttrType.REALM, realm), (AttrType.NONCE, nonce)]
    msg = Message(Method.REFRESH, MessageClass.REQUEST, bytes(12), list(attrs))
    return parse_message(msg.encode(integrity_key=long_term_key(username, realm, password)))


@pytest.mark.parametrize("legacy", [False, True], ids=["rfc8489", "rfc5389"])
def test_nonce_round_trip_and_expiry(legacy: bool) -> None:
    a = auth(nonce_lifetime=10)
    nonce = a.nonce("198.51.100.1", NOW, legacy=legacy)
    assert a.nonce_valid(nonce, "198.51.100.1", NOW + 9.9)
    assert not a.nonce_valid(nonce, "198.51.100.1", NOW + 10)
    assert not a.nonce_valid(nonce, "198.51.100.2", NOW)  # bound to the client IP
    cookie, body = nonce[: len(nonce) - 16], nonce[-16:]
    raw = base64.urlsafe_b64decode(body)
    later = struct.pack("!I", struct.unpack_from("!I", raw)[0] + 5000) + raw[4:]
    later_nonce = cookie + base64.urlsafe_b64encode(later).decode()
    assert not a.nonce_valid(later_nonce, "198.51.100.1", NOW + 11)
    flipped = raw[:-1] + bytes([raw[-1] ^ 1])
    assert not a.nonce_valid(
        cookie + base64.urlsafe_b64encode(flipped).decode(), "198.51.100.1", NOW
    )
    for bad in ("", nonce + "A", nonce[:-1] + "=", nonce[:-1] + "é", " " + nonce[1:], "x" * 763):
        assert not a.nonce_valid(bad, "198.51.100.1", NOW), bad
    other = Authenticator(REALM, users={}, nonce_key=b"m" * 32)
    assert not other.nonce_valid(nonce, "198.51.100.1", NOW)  # another server's nonce


def test_nonce_is_short_and_wraps_harmlessly() -> None:
    # 29 characters (16 in the RFC 5389 form): the 401 challenge is the largest
    # unauthenticated TURN answer (natkit.turn.answers).
    a = auth(nonce_lifetime=10)
    assert len(a.nonce("198.51.100.1", NOW)) == 29
    assert len(a.nonce("198.51.100.1", NOW, legacy=True)) == 16
    wrap = (2**32 - 3000) / 1000  # issued 3 s before the millisecond counter wraps
    nonce = a.nonce("2001:db8::1", wrap)
    assert a.nonce_valid(nonce, "2001:db8::1", wrap + 9.9)
    assert not a.nonce_valid(nonce, "2001:db8::1", wrap + 10)
    assert not a.nonce_valid(nonce, "2001:db8::1", wrap - 1)  # from the future


def test_check_order() -> None:
    a = auth()
    ip = "198.51.100.1"
    nonce = a.nonce(ip, NOW)
    bare = parse_message(Message(Method.REFRESH, MessageClass.REQUEST, bytes(12)).encode())
    assert a.check(bare, ip, NOW) == AuthError(401, True)
    no_realm = Message(Method.REFRESH, MessageClass.REQUEST, bytes(12),
                       [(AttrType.USERNAME, "alice"), (AttrType.NONCE, nonce)])  # fmt: skip
    parsed = parse_message(no_realm.encode(integrity_key=b"k"))
    assert a.check(parsed, ip, NOW) == AuthError(400, False)
    assert a.check(signed("alice", "wonderland", "bogus"), ip, NOW) == AuthError(438, True)
    assert a.check(signed("alice", "nope", nonce), ip, NOW) == AuthError(401, True)
    assert a.check(signed("mallory", "x", nonce), ip, NOW) == AuthError(401, True)
    ok = a.check(signed("alice", "wonderland", nonce), ip, NOW)
    assert ok == Credentials("alice", "alice", long_term_key("alice", REALM, "wonderland"))


def test_stale_nonce_is_checked_before_the_password() -> None:
    # RFC 8489 §9.2.4: a client with an old nonce learns 438 (and retries), not 401.
    a = auth(nonce_lifetime=5)
    nonce = a.nonce("198.51.100.1", NOW)
    assert a.check(signed("alice", "nope", nonce), "198.51.100.1", NOW + 6) == AuthError(438, True)


def test_rest_api_credentials_use_unix_time() -> None:
    a = auth()
    cred = mint("sesame", "carol", 60, now=NOW)
    creds = a.credentials(cred.username, NOW)
    assert creds is not None and creds.user == "carol"
    assert creds.key == long_term_key(cred.username, REALM, cred.password)
    assert a.credentials(cred.username, NOW + 61) is None
    # The adapter's clock is monotonic; unix_offset turns it into Unix time for expiries.
    a.unix_offset = NOW - 100.0
    assert a.credentials(cred.username, 100.0) is not None
    assert a.credentials(cred.username, 161.0) is None
    assert a.credentials("nocolon", NOW) is None
    assert Authenticator(REALM, users={}).credentials(cred.username, NOW) is None


def test_rest_username_with_thousands_of_digits_is_refused_without_raising() -> None:
    # int() raises ValueError on > 4,300 digits: every such datagram was a traceback (issue 11).
    a = auth()
    for digits in (20, 4301, 100_000):
        assert a.credentials("9" * digits + ":mallory", NOW) is None
    assert a.credentials(":mallory", NOW) is None
