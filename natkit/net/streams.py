"""One TCP/TLS connection of a listener: its slot state, its way back (`Link`) and its deadlines.

Slowloris (issue 11 #4): a deadline that restarts on every byte lets 1 byte every 2 s hold a
slot forever. Here neither deadline moves per byte: the idle deadline counts from the last whole
frame moved in either direction (a STUN message or ChannelData in, an answer or relayed data
out), and a frame deadline runs from the first byte of a frame until the frame is complete
(`stream.frame_timeout`). The slot itself is admitted by `natkit.admission.ConnectionTable`
(per-source cap, oldest idle evicted when full); a handler that ties state to the connection
`pin`s it (TURN: RFC 8656 §7, a TCP allocation ends with its connection), and `relaying` keeps
a pinned connection out of eviction while it moves data: evicting it would end a working call.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from natkit.config.model import StreamConfig

__all__ = ["StreamConn", "StreamTimeout", "read_by"]


class StreamTimeout(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind  # an ERROR_KINDS name: "idle_timeout" or "frame_timeout"


class StreamConn:
    """One TCP/TLS connection's slot state: when it last moved a whole frame (either way) and
    whether a handler pinned it, which makes it not evictable while it relays. A `Link`."""

    __slots__ = ("clock", "last_active", "pinned", "writer")

    def __init__(self, writer: asyncio.StreamWriter, clock: Callable[[], float]) -> None:
        self.writer = writer
        self.clock = clock  # the loop's: its deadlines are on that clock
        self.last_active = clock()
        self.pinned = False

    def send(self, data: bytes, to: object = None) -> None:
        """Answers and relayed data for this connection's client (`to` is implied). A TURN
        peer may keep sending after the client went away (RFC 8656 §7: the allocation ends
        with the connection, which the reader reports a moment later): writes to a closing
        transport are dropped, since uvloop raises RuntimeError and asyncio's TLS transport
        logs "SSL connection is closed" for each."""
        if self.writer.transport.is_closing():
            return
        self.last_active = self.clock()
        self.writer.write(data)

    def pin(self) -> None:
        self.pinned = True

    def relaying(self, now: float, idle_timeout: float) -> bool:
        return self.pinned and now - self.last_active < idle_timeout


async def read_by(
    conn: StreamConn,
    reader: asyncio.StreamReader,
    frame_start: float | None,
    limits: StreamConfig,
    clock: Callable[[], float],
) -> bytes:
    """The next bytes, or `StreamTimeout`: idle when no whole frame moved for `idle_timeout`
    (stray bytes do not count), frame when a started frame is not complete `frame_timeout`
    after its first byte. Neither deadline moves per byte: a byte every few seconds (slowloris)
    cannot hold a slot."""
    while True:
        idle_at = conn.last_active + limits.idle_timeout
        frame_at = math.inf if frame_start is None else frame_start + limits.frame_timeout
        try:
            async with asyncio.timeout_at(min(idle_at, frame_at)):
                return await reader.read(65536)
        except TimeoutError:
            now = clock()
            if now >= frame_at:
                raise StreamTimeout("frame_timeout") from None
            if now >= conn.last_active + limits.idle_timeout:
                raise StreamTimeout("idle_timeout") from None
            # Relayed peer data went out meanwhile (`last_active` moved): wait on.
