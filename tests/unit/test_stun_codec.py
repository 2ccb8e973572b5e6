"""Codec strictness, every attribute's round trip, ChannelData framing and the public surface."""

from __future__ import annotations

import os
import pkgutil
import struct

import pytest

import natkit.stun
from natkit.addr import Address
from natkit.stun import (
    AddressErrorCode,
    AttrType,
    AttrValue,
    ChangeRequest,
    ChannelData,
    ErrorCode,
    Icmp,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    StunDecodeError,
    StunEncodeError,
    build_channel_data,
    check_fingerprint,
    check_integrity,
    check_integrity_sha256,
    parse_channel_data,
    parse_message,
)
from natkit.stun.attributes import KNOWN_TYPES
from natkit.stun.constants import MAGIC_COOKIE_BYTES

V4, V6 = Address("192.0.2.1", 32853), Address("2001:db8::1", 1)
SAMPLES: dict[int, AttrValue] = {
    AttrType.MAPPED_ADDRESS: V4, AttrType.RESPONSE_ADDRESS: V6, AttrType.SOURCE_ADDRESS: V4,
    AttrType.CHANGED_ADDRESS: V6, AttrType.REFLECTED_FROM: V4, AttrType.ALTERNATE_SERVER: V6,
    AttrType.RESPONSE_ORIGIN: V4, AttrType.OTHER_ADDRESS: V6, AttrType.XOR_MAPPED_ADDRESS: V6,
    AttrType.XOR_PEER_ADDRESS: V4, AttrType.XOR_RELAYED_ADDRESS: V6,
    AttrType.USERNAME: "ユーザー", AttrType.REALM: "example.org", AttrType.NONCE: "n0nce",
    AttrType.SOFTWARE: "natkit", AttrType.ALTERNATE_DOMAIN: "turn.example.org",
    AttrType.PASSWORD: b"pw", AttrType.DATA: b"\x00\x01\x02", AttrType.PADDING: bytes(7),
    AttrType.USERHASH: bytes(range(32)), AttrType.MESSAGE_INTEGRITY: bytes(20),
    AttrType.MESSAGE_INTEGRITY_SHA256: bytes(24), AttrType.RESERVATION_TOKEN: b"12345678",
    AttrType.LIFETIME: 600, AttrType.PRIORITY: 0x6E0001FF, AttrType.CONNECTION_ID: 7,
    AttrType.FINGERPRINT: 1, AttrType.ICE_CONTROLLED: 2**64 - 1, AttrType.ICE_CONTROLLING: 3,
    AttrType.CHANNEL_NUMBER: 0x4001, AttrType.RESPONSE_PORT: 50000,
    AttrType.REQUESTED_TRANSPORT: 17, AttrType.REQUESTED_ADDRESS_FAMILY: 2,
    AttrType.ADDITIONAL_ADDRESS_FAMILY: 2, AttrType.USE_CANDIDATE: True,
    AttrType.DONT_FRAGMENT: True, AttrType.EVEN_PORT: True,
    AttrType.CHANGE_REQUEST: ChangeRequest(True, False),
    AttrType.ERROR_CODE: ErrorCode(438, "Stale Nonce"),
    AttrType.ADDRESS_ERROR_CODE: AddressErrorCode(2, 440, "no v6"),
    AttrType.UNKNOWN_ATTRIBUTES: (0x7F00, 0x0003, 0x1234),
    AttrType.PASSWORD_ALGORITHM: PasswordAlgorithm(2),
    AttrType.PASSWORD_ALGORITHMS: (PasswordAlgorithm(1), PasswordAlgorithm(2, b"abc")),
    AttrType.ICMP: Icmp(3, 4, 1400),
}  # fmt: skip


def test_samples_cover_every_known_type() -> None:
    assert set(SAMPLES) == set(KNOWN_TYPES)


@pytest.mark.parametrize(
    "attr_type", sorted(set(SAMPLES) - {AttrType.FINGERPRINT})
)  # verified on parse
@pytest.mark.parametrize("tid_len", [12, 16])
def test_every_attribute_round_trips(attr_type: int, tid_len: int) -> None:
    msg = Message(Method.ALLOCATE, MessageClass.SUCCESS, os.urandom(tid_len),
                  [(0xC0DE, b"raw"), (attr_type, SAMPLES[attr_type])])  # fmt: skip
    parsed = parse_message(msg.encode())
    assert parsed.attributes == msg.attributes
    assert parsed.legacy == (tid_len == 16)


def test_integrity_then_sha256_then_fingerprint() -> None:
    msg = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12), [(AttrType.PRIORITY, 1)])
    data = msg.encode(integrity_key=b"k1", integrity_sha256_key=b"k2", fingerprint=True)
    types = [t for t, _ in parse_message(data).attributes]
    assert types[1:] == [AttrType.MESSAGE_INTEGRITY, AttrType.MESSAGE_INTEGRITY_SHA256,
                         AttrType.FINGERPRINT]  # fmt: skip
    assert check_integrity(data, b"k1") and check_integrity_sha256(data, b"k2")
    assert check_fingerprint(data)
    assert not check_integrity_sha256(data, b"k1")


def test_attributes_after_integrity_are_ignored() -> None:
    head = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)).encode(integrity_key=b"k")
    tail = b"\x80\x22\x00\x04evil"
    data = head[:2] + (len(head) - 20 + 8).to_bytes(2, "big") + head[4:] + tail
    assert AttrType.SOFTWARE not in parse_message(data)


BASE = Message(Method.BINDING, MessageClass.REQUEST, bytes(12), [(AttrType.LIFETIME, 1)]).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"", BASE[:19], b"\xc0" + BASE[1:], BASE + b"\x00",
        BASE[:2] + b"\x00\x09" + BASE[4:],  # length not a multiple of 4
        BASE[:22] + b"\x00\x05" + BASE[24:],  # attribute overruns
        BASE[:22] + b"\x00\x03" + BASE[24:],  # LIFETIME must be 4 bytes
        Message(Method.BINDING, MessageClass.REQUEST, bytes(12)).encode(fingerprint=True)[:-1]
        + b"\x00",  # bad fingerprint
        Message(Method.BINDING, MessageClass.REQUEST, bytes(12),
                [(AttrType.USERNAME, "x")]).encode().replace(b"x", b"\xff"),  # not UTF-8
    ],
)  # fmt: skip
def test_malformed_raises_decode_error(data: bytes) -> None:
    with pytest.raises(StunDecodeError):
        parse_message(data)


def test_attribute_after_fingerprint_is_rejected() -> None:
    data = Message(Method.BINDING, MessageClass.REQUEST, bytes(12)).encode(fingerprint=True)
    data = data[:2] + (len(data) - 20 + 8).to_bytes(2, "big") + data[4:] + b"\x00\x24\x00\x04abcd"
    with pytest.raises(StunDecodeError):
        parse_message(data)


@pytest.mark.parametrize(
    ("attr_type", "value"),
    [
        (AttrType.LIFETIME, -1), (AttrType.LIFETIME, 2**32), (AttrType.USERNAME, b"x"),
        (AttrType.ERROR_CODE, ErrorCode(700, "")), (AttrType.XOR_MAPPED_ADDRESS, ("nope", 1)),
        (AttrType.MESSAGE_INTEGRITY, b"short"), (0x7777, "not bytes"),
        (AttrType.USE_CANDIDATE, False),
    ],
)  # fmt: skip
def test_unencodable_values_raise_encode_error(attr_type: int, value: object) -> None:
    msg = Message(Method.BINDING, MessageClass.REQUEST, bytes(12), [(attr_type, value)])  # type: ignore[list-item]
    with pytest.raises(StunEncodeError):
        msg.encode()


def test_unknown_required_reported() -> None:
    data = Message(Method.BINDING, MessageClass.REQUEST, bytes(12),
                   [(0x7F00, b""), (0xC000, b""), (0x7F00, b"")]).encode()  # fmt: skip
    assert parse_message(data).unknown_required == (0x7F00,)


def test_channel_data() -> None:
    assert build_channel_data(0x4000, b"abcde") == b"\x40\x00\x00\x05abcde"
    padded = build_channel_data(0x4FFF, b"abcde", pad=True)
    assert padded == b"\x4f\xff\x00\x05abcde\x00\x00\x00"
    assert parse_channel_data(padded) == ChannelData(0x4FFF, b"abcde")
    assert parse_channel_data(padded[:9]) == ChannelData(0x4FFF, b"abcde")
    for bad in (b"\x40\x00", b"\x50\x00\x00\x00", padded[:8], padded + b"\x00"):
        with pytest.raises(StunDecodeError):
            parse_channel_data(bad)
    with pytest.raises(StunEncodeError):
        build_channel_data(0x3FFF, b"")


def test_public_surface_is_explicit() -> None:
    assert sorted(natkit.stun.__all__) == sorted(set(natkit.stun.__all__))
    for name in natkit.stun.__all__:
        assert hasattr(natkit.stun, name), name
    # isidentifier: pytest's assertion rewriting adds "@py_builtins" and "@pytest_ar" to modules
    # of a package that ships a pytest plugin (natkit does: natkit.lab.pytest_plugin).
    public = {n for n in vars(natkit.stun) if not n.startswith("_") and n.isidentifier()}
    # Submodules appear as attributes once anything imported them; every other name is exported.
    modules = {m.name for m in pkgutil.iter_modules(natkit.stun.__path__)}
    assert public - set(natkit.stun.__all__) <= modules


@pytest.mark.parametrize(
    ("attr_type", "limit"),
    [(AttrType.USERNAME, 512), (AttrType.REALM, 763), (AttrType.NONCE, 763),
     (AttrType.SOFTWARE, 763), (AttrType.ALTERNATE_DOMAIN, 255)],
)  # fmt: skip
def test_text_attributes_are_bounded_at_decode(attr_type: int, limit: int) -> None:
    # RFC 8489 §14.3, §14.9, §14.10, §14.14: a 5,000-digit USERNAME used to reach int().
    def wire(size: int) -> bytes:
        value = struct.pack("!HH", attr_type, size) + b"9" * size + bytes(-size % 4)
        return struct.pack("!HH", 0x0003, len(value)) + MAGIC_COOKIE_BYTES + bytes(12) + value

    assert parse_message(wire(limit)).get(attr_type) == "9" * limit
    with pytest.raises(StunDecodeError, match="longer than"):
        parse_message(wire(limit + 1))
    with pytest.raises(StunEncodeError):
        Message(
            Method.ALLOCATE, MessageClass.REQUEST, bytes(12), [(attr_type, "9" * (limit + 1))]
        ).encode()


def test_error_reason_is_bounded_at_decode() -> None:
    for attr_type, head in ((AttrType.ERROR_CODE, b"\x00\x00\x04\x01"),
                            (AttrType.ADDRESS_ERROR_CODE, b"\x01\x00\x04\x01")):  # fmt: skip
        for size, ok in ((763, True), (764, False)):
            value = head + b"x" * size
            tlv = struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
            data = struct.pack("!HH", 0x0113, len(tlv)) + MAGIC_COOKIE_BYTES + bytes(12) + tlv
            if ok:
                assert parse_message(data).get(attr_type)[-1] == "x" * size  # type: ignore[index]
            else:
                with pytest.raises(StunDecodeError):
                    parse_message(data)
