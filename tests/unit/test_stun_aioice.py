"""Round trips natkit <-> aioice.stun (code we did not write), in both directions.

aioice represents a few attributes differently (NONCE as bytes, CHANGE-REQUEST and
REQUESTED-TRANSPORT as raw 32-bit integers, USE-CANDIDATE as None); `to_natkit` maps them.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aioice import stun as aio
from hypothesis import given, settings
from hypothesis import strategies as st

from natkit.addr import Address
from natkit.stun import (
    ATTRIBUTE_NAMES,
    AttrValue,
    ChangeRequest,
    ErrorCode,
    Message,
    MessageClass,
    check_fingerprint,
    check_integrity,
    parse_message,
)

NAME_TO_TYPE = {name: t for t, name in ATTRIBUTE_NAMES.items()}
CLASSES = {
    MessageClass.REQUEST: aio.Class.REQUEST,
    MessageClass.INDICATION: aio.Class.INDICATION,
    MessageClass.SUCCESS: aio.Class.RESPONSE,
    MessageClass.ERROR: aio.Class.ERROR,
}

ips = st.one_of(
    st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1)),
    st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1)),
)
addresses = st.tuples(ips, st.integers(0, 65535))
text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
u32, u64 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)

AIOICE_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **{name: addresses for name in (
        "MAPPED-ADDRESS", "SOURCE-ADDRESS", "CHANGED-ADDRESS", "XOR-PEER-ADDRESS",
        "XOR-RELAYED-ADDRESS", "XOR-MAPPED-ADDRESS", "RESPONSE-ORIGIN", "OTHER-ADDRESS")},
    "CHANGE-REQUEST": st.sampled_from([0, 2, 4, 6]),
    "USERNAME": text, "REALM": text, "SOFTWARE": text,
    "NONCE": text.map(lambda s: s.encode()),
    "ERROR-CODE": st.tuples(st.integers(300, 699), text),
    "CHANNEL-NUMBER": st.integers(0x4000, 0x4FFF),
    "LIFETIME": u32, "PRIORITY": u32,
    "DATA": st.binary(max_size=64),
    "REQUESTED-TRANSPORT": st.sampled_from([6, 17]).map(lambda p: p << 24),
    "USE-CANDIDATE": st.none(),
    "ICE-CONTROLLED": u64, "ICE-CONTROLLING": u64,
}  # fmt: skip

attribute_dicts = st.fixed_dictionaries({}, optional=AIOICE_VALUES)
methods = st.sampled_from(list(aio.Method))
classes = st.sampled_from(list(MessageClass))
keys = st.binary(min_size=1, max_size=32)


def to_natkit(name: str, value: Any) -> AttrValue:
    if name == "CHANGE-REQUEST":
        return ChangeRequest(bool(value & 4), bool(value & 2))
    if name == "NONCE":
        return str(value.decode())
    if name == "REQUESTED-TRANSPORT":
        return int(value >> 24)
    if name == "USE-CANDIDATE":
        return True
    if name == "ERROR-CODE":
        return ErrorCode(*value)
    if isinstance(value, tuple):
        return Address(*value)
    return value  # type: ignore[no-any-return]


@settings(max_examples=300, deadline=None)
@given(methods, classes, attribute_dicts, st.binary(min_size=12, max_size=12),
       st.one_of(st.none(), keys), st.booleans())  # fmt: skip
def test_aioice_builds_natkit_parses(
    method: aio.Method,
    cls: MessageClass,
    attrs: dict[str, Any],
    tid: bytes,
    key: bytes | None,
    fp: bool,
) -> None:
    message = aio.Message(method, CLASSES[cls], tid, dict(attrs))
    if key is not None:
        message.add_message_integrity(key)  # adds FINGERPRINT too
    elif fp:
        message.add_fingerprint()
    data = bytes(message)
    parsed = parse_message(data)
    assert (parsed.method, parsed.message_class, parsed.transaction_id) == (method, cls, tid)
    content = {t: v for t, v in parsed.attributes if t not in (0x0008, 0x8028)}
    assert content == {NAME_TO_TYPE[n]: to_natkit(n, v) for n, v in attrs.items()}
    if key is not None:
        assert check_integrity(data, key) and not check_integrity(data, key + b"!")
    assert check_fingerprint(data) == (key is not None or fp)


@settings(max_examples=300, deadline=None)
@given(methods, classes, attribute_dicts, st.binary(min_size=12, max_size=12),
       st.one_of(st.none(), keys), st.booleans())  # fmt: skip
def test_natkit_builds_aioice_parses(
    method: aio.Method,
    cls: MessageClass,
    attrs: dict[str, Any],
    tid: bytes,
    key: bytes | None,
    fp: bool,
) -> None:
    ours = Message(method, cls, tid, [(NAME_TO_TYPE[n], to_natkit(n, v)) for n, v in attrs.items()])
    data = ours.encode(integrity_key=key, fingerprint=fp)
    theirs = aio.parse_message(data)  # raises if aioice finds FINGERPRINT wrong
    assert (theirs.message_method, theirs.message_class) == (method, CLASSES[cls])
    assert theirs.transaction_id == tid
    expected = dict(attrs)
    if key is not None:
        assert theirs.check_message_integrity(key)
        assert not theirs.check_message_integrity(key + b"!")
    got = {
        n: v for n, v in theirs.attributes.items() if n not in ("MESSAGE-INTEGRITY", "FINGERPRINT")
    }
    assert got == expected
    assert ("FINGERPRINT" in theirs.attributes) == fp
