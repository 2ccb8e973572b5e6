"""natkit.net sans-IO: RFC 7983 demultiplexing and stream framing (RFC 8489 §6.2.2 STUN, RFC 8656
§12.5 ChannelData)."""

from __future__ import annotations

import struct

import pytest

from natkit.net.demux import (
    BINDING,
    CHANNEL_DATA,
    OTHER,
    STUN,
    classify,
    is_error_response,
    is_indication,
    is_request,
)
from natkit.net.framing import FramingError, StreamFramer, frame_size
from natkit.stun.constants import MessageClass, Method
from natkit.stun.message import Message


def stun(length: int = 0) -> bytes:
    return struct.pack("!HHI", 1, length, 0x2112A442) + bytes(12) + bytes(length)


def test_split_and_joined_messages() -> None:
    f = StreamFramer(4096)
    wire = stun() + stun(8) + stun(4)
    frames = [fr for i in range(0, len(wire), 3) for fr in f.feed(wire[i : i + 3])]
    assert frames == [stun(), stun(8), stun(4)]


def test_channel_data_is_padded_on_streams() -> None:
    f = StreamFramer(4096)
    frame = b"\x40\x00\x00\x05hello\x00\x00\x00"
    assert f.feed(frame + stun()) == [frame, stun()]


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n", b"\x80\x01\x00\x00", b"\xff" * 8])
def test_garbage_raises(garbage: bytes) -> None:
    with pytest.raises(FramingError):
        StreamFramer(4096).feed(garbage)


def test_length_not_multiple_of_four_raises() -> None:
    with pytest.raises(FramingError):
        StreamFramer(4096).feed(struct.pack("!HHI", 1, 3, 0x2112A442))


def test_oversize_raises_before_buffering_it() -> None:
    with pytest.raises(FramingError):
        StreamFramer(512).feed(stun(1024)[:20])


def _header(method: int, cls: MessageClass) -> bytes:
    return Message(method, cls, bytes(12), []).encode()


def test_classify_every_first_byte() -> None:
    """RFC 7983 §7: 0-3 STUN, 64-79 ChannelData, the rest (ZRTP, DTLS, RTP, ...) not ours."""
    for first in range(256):
        kind = classify(bytes([first, 0x01]) + bytes(18))
        if first < 4:
            assert kind in (BINDING, STUN), first
        elif 64 <= first <= 79:
            assert kind == CHANNEL_DATA, first
        else:
            assert kind == OTHER, first
    assert classify(b"") == OTHER and classify(b"\x00") == OTHER


def test_classify_by_method_and_class() -> None:
    for cls in MessageClass:
        assert classify(_header(Method.BINDING, cls)) == BINDING
        for method in (Method.ALLOCATE, Method.REFRESH, Method.SEND, Method.CHANNEL_BIND, 0x0FF):
            assert classify(_header(method, cls)) == STUN, (method, cls)
    # Method bits spread over both bytes (RFC 8489 §5): 0x081 is not Binding; a method above
    # 0x0FF makes a first byte above 3, which RFC 7983 gives to other protocols.
    assert classify(_header(0x081, MessageClass.REQUEST)) == STUN
    assert classify(_header(0x011, MessageClass.REQUEST)) == STUN
    assert classify(_header(0x201, MessageClass.REQUEST)) == OTHER


def test_class_predicates() -> None:
    for cls in MessageClass:
        data = _header(Method.ALLOCATE, cls)
        assert is_request(data) == (cls is MessageClass.REQUEST)
        assert is_indication(data) == (cls is MessageClass.INDICATION)
        assert is_error_response(data) == (cls is MessageClass.ERROR)
    channel = b"\x40\x00\x00\x04abcd"
    assert not (is_request(channel) or is_indication(channel) or is_error_response(channel))


def test_frame_size() -> None:
    base = _header(Method.BINDING, MessageClass.REQUEST)
    assert frame_size(base[:3]) is None
    assert frame_size(base[:4]) == len(base)
    assert frame_size(b"\x40\x00\x00\x05") == 12
    with pytest.raises(FramingError):
        frame_size(b"\x16\x03\x01\x02\x00")  # a TLS ClientHello
