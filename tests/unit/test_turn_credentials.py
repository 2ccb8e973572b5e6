"""TURN REST API credentials against vectors computed independently with hmac here."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from natkit.turn.credentials import ice_server, mint, parse_ttl, password_for, verify


def _expected(secret: str, username: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), "sha1").digest()).decode()


def test_mint_follows_the_rest_api_draft() -> None:
    cred = mint("north", "alice", 3600, now=1_700_000_000.7)
    assert cred.username == "1700003600:alice"
    assert cred.expires == 1_700_003_600
    assert cred.password == _expected("north", "1700003600:alice")


def test_known_vector() -> None:
    # Fixed vector: HMAC-SHA1("secret", "1600000000:bob"), computed with hashlib by hand.
    digest = hmac.new(b"secret", b"1600000000:bob", hashlib.sha1).digest()
    assert password_for("secret", "1600000000:bob") == base64.b64encode(digest).decode()
    assert len(base64.b64decode(password_for("secret", "x"))) == 20


def test_verify_accepts_until_expiry_then_refuses() -> None:
    cred = mint("s", "alice", 60, now=1000)
    assert verify("s", cred.username, cred.password, now=1000)
    assert verify("s", cred.username, cred.password, now=1060)
    assert not verify("s", cred.username, cred.password, now=1061)


@pytest.mark.parametrize(
    ("secret", "username", "password"),
    [
        ("other", "2000:alice", _expected("s", "2000:alice")),  # wrong secret
        ("s", "2000:alice", "bogus"),
        ("s", "alice", _expected("s", "alice")),  # no expiry: not ephemeral
        ("s", "soon:alice", _expected("s", "soon:alice")),
    ],
)
def test_verify_refuses(secret: str, username: str, password: str) -> None:
    assert not verify(secret, username, password, now=1000)


def test_mint_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        mint("", "alice", 60, now=0)
    with pytest.raises(ValueError):
        mint("s", "a:b", 60, now=0)
    with pytest.raises(ValueError):
        mint("s", "alice", 0, now=0)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("10m", 600), ("1h", 3600), ("1d", 86400), ("90", 90)]
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1w", "-1h", "1.5h", "h"])
def test_parse_ttl_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


def test_ice_server_entry() -> None:
    cred = mint("s", "alice", 60, now=0)
    assert ice_server(["turn:x:3478"], cred) == {
        "urls": ["turn:x:3478"],
        "username": "60:alice",
        "credential": cred.password,
    }


def test_verify_refuses_non_ascii_input_without_raising() -> None:
    assert not verify("s3cret", "9999999999:alice", "pässwörd", now=0)
    assert not verify("s3cret", "\u0663:alice", "x", now=0)  # an Arabic-Indic digit as expiry
