"""Demultiplexing and framing: STUN vs TURN ChannelData, and message boundaries on streams.

First-byte classes (RFC 7983 §7): 0-3 STUN, 64-79 TURN ChannelData. ChannelData (RFC 8656 §12)
is a 4-byte header (channel number 0x4000-0x4FFF, length) and the application data; over TCP and
TLS it is padded to a multiple of 4 bytes (§12.5), over UDP padding is optional.
"""

from __future__ import annotations

from typing import NamedTuple

from natkit.stun.constants import HEADER_LENGTH
from natkit.stun.errors import StunDecodeError, StunEncodeError

__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "ChannelData",
    "FramingError",
    "StreamFramer",
    "build_channel_data",
    "frame_size",
    "is_channel_data",
    "is_stun",
    "parse_channel_data",
]

CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x4FFF  # RFC 8656 §12


def is_stun(data: bytes) -> bool:
    """First byte 0-3: a STUN message (RFC 7983 §7); says nothing about validity."""
    return len(data) > 0 and data[0] < 4


def is_channel_data(data: bytes) -> bool:
    """First byte 64-79: a TURN ChannelData message (RFC 7983 §7)."""
    return len(data) > 0 and 64 <= data[0] <= 79


class ChannelData(NamedTuple):
    channel: int
    data: bytes


def parse_channel_data(data: bytes) -> ChannelData:
    """Decode one ChannelData message; trailing bytes are allowed only as padding to 4."""
    if len(data) < 4:
        raise StunDecodeError("ChannelData shorter than its 4-byte header")
    channel = int.from_bytes(data[0:2], "big")
    length = int.from_bytes(data[2:4], "big")
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunDecodeError(f"channel number 0x{channel:04x} outside 0x4000-0x4FFF")
    extra = len(data) - 4 - length
    if extra < 0:
        raise StunDecodeError(f"ChannelData length {length} but {len(data) - 4} bytes follow")
    if extra not in (0, -length % 4):
        raise StunDecodeError("ChannelData has trailing bytes beyond its padding")
    return ChannelData(channel, bytes(data[4 : 4 + length]))


def build_channel_data(channel: int, payload: bytes, *, pad: bool = False) -> bytes:
    """Encode ChannelData; `pad=True` for TCP/TLS (RFC 8656 §12.5 MUST), optional on UDP."""
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunEncodeError(f"channel number 0x{channel:04x} outside 0x4000-0x4FFF")
    if len(payload) > 0xFFFF:
        raise StunEncodeError("ChannelData payload longer than 65535 bytes")
    header = channel.to_bytes(2, "big") + len(payload).to_bytes(2, "big")
    return header + payload + (bytes(-len(payload) % 4) if pad else b"")


def frame_size(buffer: bytes) -> int | None:
    """Size of the STUN or (padded) ChannelData frame at the start of a stream buffer.

    None while fewer than 4 bytes are buffered. Raises `StunDecodeError` when the buffer does
    not start with STUN or ChannelData (a stream that cannot be resynchronised: close it).
    """
    if len(buffer) < 4:
        return None
    length = int.from_bytes(buffer[2:4], "big")
    if is_stun(buffer):
        return HEADER_LENGTH + length
    if is_channel_data(buffer):
        return 4 + length + (-length % 4)  # RFC 8656 §12.5: padded on streams
    raise StunDecodeError(f"stream byte 0x{buffer[0]:02x} starts neither STUN nor ChannelData")


class FramingError(Exception):
    """The peer sent bytes that are neither a STUN message nor ChannelData (or too large)."""


class StreamFramer:
    """Sans-IO splitter of a byte stream into STUN messages and ChannelData frames.

    RFC 8489 §6.2.2: over TCP/TLS messages are self-delimiting (20-byte header + length).
    RFC 8656 §12.5: ChannelData starts 0b01, is padded to 4 bytes over streams. `pending` says
    whether part of a frame is buffered: the server's frame deadline runs while it is.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame buffered (0 between frames)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        while True:
            try:
                total = frame_size(bytes(buf[:4]))
            except StunDecodeError as err:
                raise FramingError(str(err)) from None
            if total is None:
                break
            if buf[0] < 4 and total % 4:  # RFC 8489 §5: STUN lengths are multiples of 4
                raise FramingError("STUN message length not a multiple of 4")
            if total > self.max_size:
                raise FramingError(f"frame of {total} bytes exceeds {self.max_size}")
            if len(buf) < total:
                break
            frames.append(bytes(buf[:total]))
            del buf[:total]
        return frames
