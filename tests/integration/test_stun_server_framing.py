"""StreamFramer (sans-IO, no sockets): RFC 8489 §6.2.2 STUN and RFC 8656 §12.5 ChannelData."""

from __future__ import annotations

import struct

import pytest

from natkit.stun.server import FramingError, StreamFramer


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
