"""One TCP/TLS connection of a listener: its slot state, its way back (`Link`) and its deadlines.

Slowloris (issue 11 #4): a deadline that restarts on every byte lets 1 byte every 2 s hold a
slot forever. Here neither deadline moves per byte: the idle deadline counts from the last whole
frame moved in either direction (a STUN message or ChannelData in, an answer or relayed data
out), and a frame deadline runs from the first byte of a frame until the frame is complete
(`stream.frame_timeout`). The slot itself is admitted by `natkit.admission.ConnectionTable`
(per-source cap, oldest idle evicted when full); a handler that ties state to the connection
`pin`s it (TURN: RFC 8656 §7, a TCP allocation ends with its connection), and `relaying` keeps
a pinned connection out of eviction while it moves data: evicting it would end a working call.

A connection a handler hands over (`natkit.net.routes`, RFC 6062 §5.4) is also its `Pipe`:
writes made before the listener wrote the handing-over answer wait behind it (`start_pipe`),
then go out as is; the other side's flow control pauses its reading (`flowing`) and waits on
its write buffer (`on_drained`, high-water `PIPE_HIGH_WATER`), so neither direction buffers
without bound. It is pinned, and no idle deadline applies to it any more.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from natkit.config.model import StreamConfig

if TYPE_CHECKING:
    from natkit.addr import Address
    from natkit.net.routes import Sender

PIPE_HIGH_WATER = 1 << 16
"""Bytes a handed-over connection may have waiting to go out before `Pipe.write` says stop."""

__all__ = ["PIPE_HIGH_WATER", "StreamConn", "StreamTimeout", "read_by"]


class StreamTimeout(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind  # an ERROR_KINDS name: "idle_timeout" or "frame_timeout"


class StreamConn:
    """One TCP/TLS connection's slot state: when it last moved a whole frame (either way) and
    whether a handler pinned it, which makes it not evictable while it relays. A `Link`, and
    once handed over a `Pipe` (module docstring)."""

    __slots__ = (
        "_drain",
        "_flowing",
        "_queued",
        "clock",
        "ended",
        "handover",
        "last_active",
        "pinned",
        "writer",
    )

    def __init__(self, writer: asyncio.StreamWriter, clock: Callable[[], float]) -> None:
        self.writer = writer
        self.clock = clock  # the loop's: its deadlines are on that clock
        self.last_active = clock()
        self.pinned = False
        self.handover: tuple[Callable[[bytes], None], Callable[[], None]] | None = None
        """(receive, closed) of the handler that handed this connection over, if one did."""
        self.ended = False
        self._queued: list[bytes] | None = None  # pipe writes waiting behind the answer
        self._flowing: asyncio.Event | None = None
        self._drain: asyncio.Future[None] | None = None

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

    def sender(self, to: Address) -> Sender:
        """`natkit.net.routes.Link.sender`: a stream writes at once (the transport buffers)."""
        send = self.send

        def send_frame(head: bytes, body: bytes | memoryview) -> None:
            send(head + body if head else bytes(body))

        return send_frame

    def pin(self) -> None:
        self.pinned = True

    def relaying(self, now: float, idle_timeout: float) -> bool:
        return self.pinned and now - self.last_active < idle_timeout

    # -- handing over (natkit.net.routes) --------------------------------------------------

    def hand_over(self, receive: Callable[[bytes], None], closed: Callable[[], None]) -> StreamConn:
        if self.handover is not None:
            raise RuntimeError("this connection was handed over already")
        self.handover = (receive, closed)
        self.pinned = True
        self._queued = []
        self._flowing = asyncio.Event()
        self._flowing.set()
        return self

    def start_pipe(self) -> None:
        """The listener wrote the answer that handed the connection over: pipe writes go out."""
        queued, self._queued = self._queued or [], None
        self.writer.transport.set_write_buffer_limits(high=PIPE_HIGH_WATER)
        for data in queued:
            self.write(data)

    def write(self, data: bytes) -> bool:
        if self._queued is not None:
            self._queued.append(data)  # bounded by what the handler hands in before returning
            return True
        transport = self.writer.transport
        if transport.is_closing():
            return True  # the end is on its way to the other side (`closed`)
        self.last_active = self.clock()
        transport.write(data)
        return transport.get_write_buffer_size() <= PIPE_HIGH_WATER

    def on_drained(self, callback: Callable[[], None]) -> None:
        drain = self._drain
        if drain is None or drain.done():
            drain = self._drain = asyncio.ensure_future(self.writer.drain())

        def done(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is None and not self.ended:
                callback()

        drain.add_done_callback(done)

    def pause_reading(self) -> None:
        if self._flowing is not None:
            self._flowing.clear()

    def resume_reading(self) -> None:
        if self._flowing is not None:
            self._flowing.set()

    async def flowing(self) -> None:
        """Return when the pipe's reading is not paused."""
        if self._flowing is not None:
            await self._flowing.wait()

    def close(self) -> None:
        self.resume_reading()  # the reader wakes up to find the end
        self.writer.close()

    def end(self) -> None:
        """The listener is done with the connection: the handler hears it once (`closed`)."""
        if self.ended:
            return
        self.ended = True
        if self.handover is not None:
            self.handover[1]()


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
