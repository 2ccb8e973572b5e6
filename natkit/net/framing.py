"""Message boundaries on TCP and TLS streams, sans-IO: STUN messages and ChannelData frames.

RFC 8489 §6.2.2: over TCP/TLS STUN messages are self-delimiting (a 20-byte header whose length
field counts the attributes). RFC 8656 §12.5: ChannelData (first byte 0b01) is a 4-byte header
and its data, padded to a multiple of 4 on streams. Anything else on a stream cannot be
resynchronised: `FramingError`, and the listener closes the connection.
"""

from __future__ import annotations

from collections.abc import Iterator

from natkit.net.demux import CHANNEL_DATA, OTHER, classify

__all__ = ["FramingError", "StreamFramer", "frame_size"]

_STUN_HEADER = 20


class FramingError(Exception):
    """The peer sent bytes that are neither a STUN message nor ChannelData (or too large)."""


def frame_size(buffer: bytes) -> int | None:
    """Size of the STUN or (padded) ChannelData frame at the start of a stream buffer; None while
    fewer than 4 bytes are buffered; `FramingError` when the buffer starts with neither."""
    if len(buffer) < 4:
        return None
    kind = classify(buffer)
    length = int.from_bytes(buffer[2:4], "big")
    if kind == CHANNEL_DATA:
        return 4 + length + (-length % 4)  # RFC 8656 §12.5: padded on streams
    if kind == OTHER:
        raise FramingError(f"stream byte 0x{buffer[0]:02x} starts neither STUN nor ChannelData")
    if length % 4:  # RFC 8489 §5: STUN lengths are multiples of 4
        raise FramingError("STUN message length not a multiple of 4")
    return _STUN_HEADER + length


class StreamFramer:
    """Splits a byte stream into frames of at most `max_size` bytes. `pending` says whether part
    of a frame is buffered: the listener's frame deadline runs while it is."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame buffered (0 between frames)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        return list(self.frames(data))

    def frames(self, data: bytes) -> Iterator[bytes]:
        """The complete frames, one at a time: a frame leaves the buffer only when it is taken,
        so a consumer that stops early (a connection handed over, `natkit.net.routes.Link`)
        finds every later byte still in `take()`, unparsed."""
        buf = self._buf
        buf += data
        while True:
            total = frame_size(bytes(buf[:4]))
            if total is None:
                return
            if total > self.max_size:
                raise FramingError(f"frame of {total} bytes exceeds {self.max_size}")
            if len(buf) < total:
                return
            frame = bytes(buf[:total])
            del buf[:total]
            yield frame

    def take(self) -> bytes:
        """Every buffered byte, unparsed; the buffer is empty afterwards."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest
