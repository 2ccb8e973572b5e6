"""RFC 5769 §2.1-2.4 and RFC 8489 Appendix B.1 test vectors (stored in tests/data/stun)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from natkit.addr import Address
from natkit.stun import (
    AttrType,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    PasswordAlgorithmId,
    check_fingerprint,
    check_integrity,
    check_integrity_sha256,
    long_term_key,
    parse_message,
    saslprep,
    short_term_key,
    userhash,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "data" / "stun" / "rfc5769.json").read_text()
)


def wire(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name]["hex"].replace(" ", ""))


def test_sample_request_short_term() -> None:  # RFC 5769 §2.1
    v, data = VECTORS["sample_request"], wire("sample_request")
    msg = parse_message(data)
    assert (msg.method, msg.message_class) == (Method.BINDING, MessageClass.REQUEST)
    assert msg.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert msg.get(AttrType.SOFTWARE) == v["software"]
    assert msg.get(AttrType.USERNAME) == v["username"]
    assert msg.get(AttrType.PRIORITY) == int(v["priority"], 16)
    assert msg.get(AttrType.ICE_CONTROLLED) == int(v["ice_controlled"], 16)
    key = short_term_key(v["password"])
    assert check_integrity(data, key) and msg.check_integrity(key)
    assert not check_integrity(data, key + b"x")
    assert check_fingerprint(data)


@pytest.mark.parametrize("name", ["sample_ipv4_response", "sample_ipv6_response"])
def test_sample_responses(name: str) -> None:  # RFC 5769 §2.2, §2.3
    v, data = VECTORS[name], wire(name)
    msg = parse_message(data)
    assert msg.message_class == MessageClass.SUCCESS
    assert msg.get(AttrType.XOR_MAPPED_ADDRESS) == Address(*v["mapped"])
    assert msg.get(AttrType.SOFTWARE) == v["software"]
    assert check_integrity(data, short_term_key(v["password"]))
    assert check_fingerprint(data)


@pytest.mark.parametrize("name", ["sample_request", "sample_ipv4_response", "sample_ipv6_response"])
def test_encode_reproduces_vector(name: str) -> None:
    """Rebuilding the vector's content with its key gives a message of the same size that
    carries the same attributes and valid MI and FINGERPRINT (the vectors pad with spaces where
    natkit pads with zeros, so the MAC bytes may differ)."""
    v, data = VECTORS[name], wire(name)
    msg = parse_message(data)
    content = [
        (t, value)
        for t, value in msg.attributes
        if t not in (AttrType.MESSAGE_INTEGRITY, AttrType.FINGERPRINT)
    ]
    rebuilt = Message(msg.method, msg.message_class, msg.transaction_id, content).encode(
        integrity_key=short_term_key(v["password"]), fingerprint=True
    )
    assert parse_message(rebuilt).attributes[: len(content)] == content
    assert check_integrity(rebuilt, short_term_key(v["password"]))
    assert check_fingerprint(rebuilt)
    assert len(rebuilt) == len(data)


def test_sample_request_long_term() -> None:  # RFC 5769 §2.4, SASLprep'd password
    v, data = VECTORS["sample_request_long_term"], wire("sample_request_long_term")
    assert saslprep(v["password"]) == v["password_prepared"]
    msg = parse_message(data)
    assert msg.get(AttrType.USERNAME) == v["username"]
    assert msg.get(AttrType.NONCE) == v["nonce"]
    assert msg.get(AttrType.REALM) == v["realm"]
    key = long_term_key(v["username"], v["realm"], v["password"])
    assert check_integrity(data, key)
    assert not check_integrity(data, long_term_key(v["username"], v["realm"], "TheMatrix"))
    rebuilt = Message(msg.method, msg.message_class, msg.transaction_id, msg.attributes[:3]).encode(
        integrity_key=key
    )
    assert rebuilt[-20:] == data[-20:]  # zero padding here, so the MAC is the vector's


def test_sample_request_long_term_sha256() -> None:  # RFC 8489 Appendix B.1
    name = "sample_request_long_term_sha256"
    v, data = VECTORS[name], wire(name)
    msg = parse_message(data)
    assert msg.get(AttrType.USERHASH) == userhash(v["username"], v["realm"])
    assert msg.get(AttrType.PASSWORD_ALGORITHM) == PasswordAlgorithm(PasswordAlgorithmId.SHA256)
    assert msg.get(AttrType.NONCE) == v["nonce"]
    key = long_term_key(v["username"], v["realm"], v["password"], PasswordAlgorithmId.SHA256)
    assert check_integrity_sha256(data, key)
    assert not check_integrity_sha256(data, long_term_key(v["username"], v["realm"], "x"))
    assert not check_integrity(data, key)  # no MESSAGE-INTEGRITY in this one
