"""The TCP/TLS read path of a listener: one task per connection, framed (RFC 8489 §6.2.2, RFC
8656 §12.5), each frame rate limited, classified and handed to its route.

Slots are admitted per source and per worker by `natkit.admission.ConnectionTable` (when full,
the oldest idle or mid-frame connection is evicted, never one a handler pinned while it moves
data); an idle and a per-frame deadline that no single byte extends (`natkit.net.streams`) cut
slow-loris connections. Anything that is not STUN or ChannelData, a frame larger than every
route takes, or a request or response no handler answers ends the connection: a stream cannot be
resynchronised, and an unanswerable message on one is garbage or an attack.

Behind a load balancer (``stun.proxy_protocol``) the listener accepts connections itself:
a trusted balancer's connection is read exactly up to the end of its PROXY v2 header
(`natkit.net.proxy_protocol`), within ``stream.frame_timeout``, and only then becomes a TCP or
TLS stream (`loop.connect_accepted_socket`), so the ClientHello behind the header is never
lost; the announced client is the source for admission, rate limits and every handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Hashable

from natkit.addr import Address, Transport
from natkit.admission import ConnectionTable, source_key
from natkit.config.model import StreamConfig
from natkit.logs import RateLimitFilter
from natkit.metrics import CONNECTIONS, error_index, ratelimited_index, request_index
from natkit.net.demux import CHANNEL_DATA, classify, is_indication, is_request
from natkit.net.framing import FramingError, StreamFramer
from natkit.net.proxy_protocol import ProxyHeader, ProxyRefused, client_address, parse_header
from natkit.net.ratelimit import RateLimiter
from natkit.net.routes import Dispatcher, Limit
from natkit.net.streams import StreamConn, StreamTimeout, read_by
from natkit.net.udp import ratelimit_key

__all__ = ["StreamService"]

_PROXY_FIXED = 16  # signature, version/command, family, length (PROXY v2 §2.2)

log = logging.getLogger("natkit.net.stream")
log.addFilter(RateLimitFilter())  # refusals under a flood: one line per reason and interval


class StreamService:
    """Every TCP/TLS connection of one worker: one slot table, one set of tasks."""

    def __init__(
        self,
        limits: StreamConfig,
        counts: list[int],
        limiter: Callable[[], RateLimiter | None],
        proxied: Callable[[Address], bool] | None = None,
    ) -> None:
        """`proxied(peer)`: whether a connection from `peer` opens with a PROXY header (None:
        no listener takes PROXY headers)."""
        self.limits = limits
        self.counts = counts
        self.limiter = limiter
        self.proxied = proxied
        # Per worker, like the kernel's share of connections: each worker admits its own.
        self.table = ConnectionTable(limits.max_connections, limits.max_connections_per_source)
        self.tasks: set[asyncio.Task[None]] = set()

    def callback(
        self, dispatcher: Dispatcher, transport: Transport
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], asyncio.Future[None]]:
        """The `asyncio.start_server` callback of one listener."""

        def on_connection(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> asyncio.Future[None]:
            task = asyncio.ensure_future(self._serve(dispatcher, transport, reader, writer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return task

        return on_connection

    def accept_proxied(
        self,
        sock: socket.socket,
        dispatcher: Dispatcher,
        transport: Transport,
        ssl_context: ssl.SSLContext | None,
    ) -> asyncio.Task[None]:
        """Serve the listening `sock` with PROXY headers (module docstring); cancel to stop."""
        return asyncio.ensure_future(self._accept(sock, dispatcher, transport, ssl_context))

    async def _accept(
        self,
        sock: socket.socket,
        dispatcher: Dispatcher,
        transport: Transport,
        ctx: ssl.SSLContext | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as err:  # out of file descriptors: back off, as asyncio's server does
                log.warning("accept on %s failed: %s", transport.value, err.strerror or err)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.ensure_future(self._open(conn, addr, dispatcher, transport, ctx))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _open(
        self,
        sock: socket.socket,
        addr: tuple[str, int],
        dispatcher: Dispatcher,
        transport: Transport,
        ctx: ssl.SSLContext | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        peer = Address(addr[0], addr[1])
        client = peer
        try:
            if self.proxied is not None and self.proxied(peer):
                async with asyncio.timeout(self.limits.frame_timeout):
                    client = client_address(await _read_proxy_header(loop, sock), peer)
            reader = asyncio.StreamReader(limit=max(self.limits.max_message_size, 2**16))
            protocol = asyncio.StreamReaderProtocol(reader)
            handshake = self.limits.frame_timeout if ctx is not None else None
            link, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=ctx, ssl_handshake_timeout=handshake
            )
        except ProxyRefused as err:
            self.counts[error_index(err.kind)] += 1
            log.warning("refused a %s connection from %s: %s", transport.value, peer.host, err)
            sock.close()
            return
        except TimeoutError:
            self.counts[error_index("frame_timeout")] += 1
            sock.close()
            return
        except (OSError, ssl.SSLError):
            sock.close()  # gone during the header or the handshake
            return
        writer = asyncio.StreamWriter(link, protocol, reader, loop)
        await self._serve(dispatcher, transport, reader, writer, client)

    async def close(self, drain: float) -> None:
        """Give open connections `drain` seconds to finish, then cut them."""
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=drain)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _serve(
        self,
        dispatcher: Dispatcher,
        transport: Transport,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: Address | None = None,
    ) -> None:
        """One connection, from `client` (the peer unless a PROXY header announced another)."""
        counts = self.counts
        if client is None:
            peer = writer.get_extra_info("peername")
            client = Address(peer[0], peer[1])
        source = client
        conn = StreamConn(writer, asyncio.get_running_loop().time)
        if not self._admit(conn, source):
            writer.transport.abort()  # refused: nothing was read, nothing to answer
            return
        counts[CONNECTIONS] += 1
        sockname = writer.get_extra_info("sockname")
        local = Address(sockname[0], sockname[1])
        name = transport.value
        try:
            await self._loop(conn, dispatcher, reader, source, local, transport)
        except StreamTimeout as exc:
            counts[error_index(exc.kind)] += 1
            log.debug("closing %s connection from %s: %s", name, source, exc.kind)
        except FramingError as exc:
            counts[error_index("framing")] += 1
            log.debug("closing %s connection from %s: %s", name, source, exc)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the peer went away (or was evicted); nothing to tell it
        finally:
            counts[CONNECTIONS] -= 1
            self.table.release(conn)
            try:
                conn.end()  # a handed-over connection's handler hears of its end
            except Exception:
                counts[error_index("internal")] += 1
                log.exception("a handed-over connection's handler failed at its end")
            if dispatcher.on_close is not None:
                dispatcher.on_close(source, local, transport)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _admit(self, conn: StreamConn, source: Address) -> bool:
        """A slot for `conn`: refused past the per-source cap; when full, the oldest idle or
        mid-frame connection is evicted for it (never a pinned one that moves data)."""
        counts = self.counts
        now, idle = conn.last_active, self.limits.idle_timeout

        def relaying(other: Hashable) -> bool:
            return isinstance(other, StreamConn) and other.relaying(now, idle)

        verdict = self.table.admit(conn, source_key((source.host,)), relaying)
        if verdict.status:
            kind = "source_limit" if verdict.status == 429 else "connection_limit"
            counts[error_index(kind)] += 1
            log.warning("refused a TCP/TLS connection from %s: %s", source.host, verdict.reason)
            return False
        if isinstance(verdict.evict, StreamConn):
            counts[error_index("evicted")] += 1
            log.warning("stream slots full: closed the oldest idle connection for %s", source.host)
            verdict.evict.writer.transport.abort()
        return True

    async def _loop(
        self,
        conn: StreamConn,
        dispatcher: Dispatcher,
        reader: asyncio.StreamReader,
        source: Address,
        local: Address,
        transport: Transport,
    ) -> None:
        counts = self.counts
        limits = self.limits
        name = transport.value
        family = source.family
        key = ratelimit_key(family)(source.host)
        limited = ratelimited_index(name)
        internal = error_index("internal")
        routes = dispatcher.by_kind
        framer = StreamFramer(dispatcher.max_size(limits.max_message_size))
        clock = conn.clock
        frame_start: float | None = None  # when the first byte of the pending frame came
        while True:
            data = await read_by(conn, reader, frame_start, limits, clock)
            if not data:
                return
            loop_now = clock()
            now = time.monotonic()
            rl = self.limiter()
            moved = False
            for frame in framer.frames(data):
                moved = True
                kind = classify(frame)
                route = routes[kind]
                if route is None:
                    raise FramingError("ChannelData, but no TURN here")
                request = is_request(frame)
                if (
                    rl is not None
                    and route.limit is not Limit.NONE
                    and (route.limit is Limit.ALL or request)
                    and not rl.allow(key, now)
                ):
                    counts[limited] += 1
                    continue
                try:
                    tx = route.handle(frame, source, local, transport, conn)
                except Exception:
                    counts[internal] += 1
                    log.exception("%s failed on a %d-byte %s frame", route.name, len(frame), name)
                    tx = None
                if route.counted:
                    result = (
                        "ignored" if tx is None else "error" if tx.data[1] & 0x10 else "success"
                    )
                    counts[request_index(name, family, result)] += 1
                if tx is not None:
                    if tx.data:  # empty: answered later on the link (natkit.net.routes)
                        conn.send(tx.data)
                elif kind != CHANNEL_DATA and not is_indication(frame):
                    raise FramingError("unanswerable message on a stream")
                if conn.handover is not None:
                    break  # what follows is raw bytes, left unparsed in the framer
            if moved:
                conn.last_active = loop_now  # complete frames are activity; stray bytes are not
                frame_start = loop_now if framer.pending and conn.handover is None else None
            elif frame_start is None:
                frame_start = loop_now
            await conn.writer.drain()
            if conn.handover is not None:
                await self._pipe(conn, reader, framer.take())
                return

    async def _pipe(self, conn: StreamConn, reader: asyncio.StreamReader, rest: bytes) -> None:
        """A handed-over connection (`natkit.net.routes`): every byte to the handler as it
        comes, no framing, rate limit or idle deadline; flow control is the handler's."""
        assert conn.handover is not None
        receive, clock = conn.handover[0], conn.clock
        conn.start_pipe()
        data = rest
        while True:
            if data:
                conn.last_active = clock()
                try:
                    receive(data)
                except Exception:
                    self.counts[error_index("internal")] += 1
                    log.exception("a handed-over connection's handler failed (%d bytes)", len(data))
                    return
            await conn.flowing()
            data = await reader.read(65536)
            if not data:
                return


async def _read_proxy_header(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> ProxyHeader:
    """The PROXY v2 header at the start of `sock`, read to its last byte and not one further."""
    data = b""
    want = _PROXY_FIXED
    while True:
        chunk = await loop.sock_recv(sock, want - len(data))
        if not chunk:
            raise ProxyRefused("the connection closed inside its PROXY header")
        data += chunk
        header = parse_header(data)  # refuses as soon as the bytes rule a header out
        if header is not None:
            return header
        if len(data) >= _PROXY_FIXED:
            want = _PROXY_FIXED + int.from_bytes(data[14:16], "big")
