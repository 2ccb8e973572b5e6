"""TURN ChannelData, encoded and decoded (telling it from STUN is `natkit.net.demux`'s job).

ChannelData (RFC 8656 §12) is a 4-byte header (channel number 0x4000-0x4FFF, length) and the
application data; over TCP and TLS it is padded to a multiple of 4 bytes (§12.5), over UDP
padding is optional.
"""

from __future__ import annotations

from typing import NamedTuple

from natkit.stun.errors import StunDecodeError, StunEncodeError

__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "ChannelData",
    "build_channel_data",
    "parse_channel_data",
]

CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x4FFF  # RFC 8656 §12


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
