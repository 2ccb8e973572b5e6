"""asyncio adapters for the STUN server: they move bytes between sockets and `BindingHandler`.

Theory of operation. All protocol decisions live in the sans-IO `BindingHandler`; this module
only receives, rate-limits, calls `handle()` and sends the `Transmit` it returns.

- UDP takes a lean path: a non-blocking socket watched with `loop.add_reader`, drained with
  `recvfrom` until EAGAIN (bounded per wake-up so one socket cannot starve the others). That is
  several times cheaper per datagram than `DatagramProtocol`, whose transport allocates and
  dispatches per packet.
- With `stun.alternate` set, RFC 5780 §4 needs four UDP sockets (`natkit.stun.sockets` plans
  them); each `Transmit` leaves from the socket whose address equals `Transmit.source`, so
  CHANGE-REQUEST answers really come from the other IP and/or port.
- TCP and TLS (RFC 8489 §6.2.2 framing) run one task per connection with a maximum message
  size; anything that is not a STUN message ends the connection. `StreamFramer` also knows RFC
  8656 §12.5 ChannelData framing for the TURN relay. Slots are admitted per source and per
  worker by `natkit.admission.ConnectionTable` (when full, the oldest idle or mid-frame
  connection is evicted, never one relaying for an allocation); an idle and a per-frame
  deadline that no single byte extends (`natkit.stun.streams`) cut slow-loris connections.
- The per-source rate limit runs before any parsing. IPv6 sources are keyed by their /64: one
  host commonly owns a whole /64, so a per-/128 bucket would be no limit at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from natkit.addr import Address, Transport
from natkit.admission import ConnectionTable, source_key
from natkit.config.model import RateLimitConfig, StunConfig
from natkit.logs import RateLimitFilter
from natkit.metrics import (
    CONNECTIONS,
    WorkerCounters,
    error_index,
    ratelimited_index,
    request_index,
)
from natkit.stun import mmsg
from natkit.stun.binding import BindingHandler, Transmit
from natkit.stun.framing import FramingError, StreamFramer
from natkit.stun.ratelimit import RateLimiter
from natkit.stun.sockets import ListenerPlan, bind_stream, bind_udp, plan_listeners
from natkit.stun.streams import StreamConn, StreamTimeout, read_by

if TYPE_CHECKING:
    from natkit.turn.engine import TurnEngine

__all__ = ["FramingError", "StreamFramer", "StunServer"]

log = logging.getLogger("natkit.stun.server")
log.addFilter(RateLimitFilter())  # a per-datagram bug must not become a log flood

_BATCH = 256  # datagrams per wake-up before yielding to the loop
_MMSG_BATCH = 64  # datagrams per recvmmsg/sendmmsg on IPv4 sockets
_RECV_SIZE = 2048  # larger than any STUN request we answer; longer datagrams get truncated
_TURN_RECV_SIZE = 65535  # with TURN on, relayed data arrives in datagrams as large as UDP allows
_TURN_FRAME_SIZE = 65540  # ChannelData over TCP: 4-byte header + 65535 bytes, padded


def _binding_request(data: bytes) -> bool:
    return data[:2] == b"\x00\x01"


def _not_a_request(data: bytes) -> bool:
    """ChannelData, indications and responses: with TURN on they carry relayed media at media
    rates, so the per-source request limit must not apply (only an allocation makes them count).
    RFC 8489 §5: the class bits are bit 0 of byte 0 and bit 4 of byte 1."""
    return len(data) > 1 and (data[0] >= 0x40 or bool(data[0] & 0x01) or bool(data[1] & 0x10))


def _ratelimit_key(family: int) -> Callable[[str], Hashable]:
    # IPv4 sources are keyed by their address as an int: what the batched UDP path has at hand.
    if family == 4:
        return lambda host: int.from_bytes(socket.inet_aton(host), "big")
    return lambda host: ipaddress.IPv6Address(host.partition("%")[0]).packed[:8]


class StunServer:
    """Every listener of one worker process, sharing one rate limiter and one counter row."""

    def __init__(
        self,
        config: StunConfig,
        counters: WorkerCounters,
        *,
        reuse_port: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        turn: TurnEngine | None = None,
    ) -> None:
        self.config = config
        self.turn = turn
        self.counters = counters
        self.limiter: RateLimiter | None = None
        self.reconfigure(config.rate_limit)
        self._reuse_port = reuse_port
        self._ssl = ssl_context
        self._udp: list[socket.socket] = []
        self._stream_socks: list[tuple[ListenerPlan, socket.socket]] = []
        self._servers: list[asyncio.Server] = []
        self._conn_tasks: set[asyncio.Task[None]] = set()
        stream = config.stream
        # Per worker, like the kernel's share of connections: each worker admits its own.
        self._table = ConnectionTable(stream.max_connections, stream.max_connections_per_source)
        self._loop: asyncio.AbstractEventLoop | None = None

    def reconfigure(self, rl: RateLimitConfig) -> None:
        """Apply `stun.rate_limit` (at start and on SIGHUP), keeping bucket state if possible."""
        if not rl.enabled:
            self.limiter = None
        elif self.limiter is None:
            self.limiter = RateLimiter(rl.per_source, rl.burst, rl.max_sources)
        else:
            self.limiter.reconfigure(rl.per_source, rl.burst, rl.max_sources)

    def bind(self, sockets: list[socket.socket] | None = None) -> list[ListenerPlan]:
        """Create every socket (NatkitError on failure) before the loop starts serving, or adopt
        `sockets` bound by the supervisor (`natkit.stun.sockets.bind_worker_sockets` order)."""
        plans = plan_listeners(self.config)
        given = iter(sockets) if sockets is not None else None
        for plan in plans:
            if plan.uri.transport is Transport.UDP:
                for a in plan.addresses:
                    join = self._reuse_port  # standalone: join a group someone else started
                    sock = next(given) if given else bind_udp(a, reuse_port=join, join=join)
                    self._udp.append(sock)
            else:
                join = self._reuse_port
                sock = next(given) if given else bind_stream(plan.primary, join, join=join)
                self._stream_socks.append((plan, sock))
        self._plans = plans
        return plans

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        udp = iter(self._udp)
        for plan in self._plans:
            if plan.uri.transport is not Transport.UDP:
                continue
            handler = self._handler(plan)
            socks = {addr: next(udp) for addr in plan.addresses}
            for local, sock in socks.items():
                loop.add_reader(sock.fileno(), self._udp_reader(handler, sock, local, socks))
        for plan, sock in self._stream_socks:
            tls = plan.uri.transport is Transport.TLS
            server = await asyncio.start_server(
                self._stream_callback(plan, self._handler(plan)),
                sock=sock,
                ssl=self._ssl if tls else None,
                # A handshake is a frame too: bounded by frame_timeout, not reset per byte.
                ssl_handshake_timeout=self.config.stream.frame_timeout if tls else None,
                limit=max(self.config.stream.max_message_size, 2**16),
            )
            self._servers.append(server)

    def _handler(self, plan: ListenerPlan) -> BindingHandler:
        return BindingHandler(
            primary=plan.primary, alternate=plan.alternate, software=self.config.software
        )

    def _udp_reader(
        self,
        handler: BindingHandler,
        sock: socket.socket,
        local: Address,
        socks: dict[Address, socket.socket],
    ) -> Callable[[], None]:
        # Everything the loop body needs is a local: attribute lookups cost per datagram.
        recvfrom, sendto, handle = sock.recvfrom, sock.sendto, handler.handle
        counts = self.counters.values
        family = local.family
        ok = request_index("udp", family, "success")
        err = request_index("udp", family, "error")
        ignored = request_index("udp", family, "ignored")
        limited = ratelimited_index("udp")
        internal, send_failed = error_index("internal"), error_index("send")
        key = _ratelimit_key(family)
        v4 = family == 4
        udp = Transport.UDP
        monotonic = time.monotonic
        new_tuple = tuple.__new__
        turn = self.turn
        exempt = _not_a_request if turn is not None else None
        channel = turn.channel_data if turn is not None else None
        recv_size = _TURN_RECV_SIZE if turn is not None else _RECV_SIZE

        def serve_one(data: bytes, source: Address) -> None:
            if channel is not None and data and 0x40 <= data[0] <= 0x4F:
                channel(data, source, local)  # relayed media: the TURN hot path
                return
            if turn is not None and not _binding_request(data):
                try:
                    turn.datagram(data, source, local, udp, lambda reply: sendto(reply, source))
                except Exception:
                    counts[internal] += 1
                    log.exception("TURN engine failed on a %d-byte datagram", len(data))
                return
            try:
                tx = handle(data, source, local, udp)
            except Exception:
                counts[internal] += 1
                log.exception("binding handler failed on a %d-byte datagram", len(data))
                return
            if tx is None:
                counts[ignored] += 1
                return
            counts[err if tx.data[1] & 0x10 else ok] += 1
            try:
                if tx.source == local:
                    sendto(tx.data, tx.destination)
                else:
                    socks.get(tx.source, sock).sendto(tx.data, tx.destination)
            except OSError:  # full send buffer or unreachable: UDP may drop, so do we
                counts[send_failed] += 1

        def on_readable() -> None:
            limiter = self.limiter
            now = monotonic()
            for _ in range(_BATCH):
                try:
                    data, addr = recvfrom(recv_size)
                except BlockingIOError:
                    return
                except OSError:
                    # ICMP port-unreachable for an earlier reply surfaces here: not our problem.
                    continue
                host = addr[0]
                if (
                    limiter is not None
                    and not (exempt is not None and exempt(data))
                    and not limiter.allow(key(host), now)
                ):
                    counts[limited] += 1
                    continue
                # IPv4 recvfrom gives exactly (host, port): reuse it as an Address, half the
                # cost of building one; IPv6 adds flowinfo and scope id.
                serve_one(data, new_tuple(Address, addr) if v4 else Address(host, addr[1]))

        if not (v4 and mmsg.available()):
            return on_readable
        # With TURN on, fewer but larger receive slots: relayed data needs 64 KiB each.
        batch = mmsg.MMsgSocket(
            sock,
            batch=_MMSG_BATCH if turn is None else _MMSG_BATCH // 4,
            size=recv_size,
            send_size=_RECV_SIZE,
        )
        plain = handler.plain_response_v4
        inet_ntoa = socket.inet_ntoa

        def on_readable_batched() -> None:
            # The plain Binding request is answered from the raw source address and sent in
            # one sendmmsg per batch; anything else takes serve_one like the unbatched path.
            limiter = self.limiter
            now = monotonic()
            for _ in range(_BATCH // _MMSG_BATCH):
                try:
                    n = batch.recv()
                except OSError:
                    continue  # ICMP errors for earlier replies, as above
                if not n:
                    return
                for i in range(n):
                    ip4, port = batch.source(i)
                    data = batch.datagram(i)
                    if (
                        limiter is not None
                        and not (exempt is not None and exempt(data))
                        and not limiter.allow(ip4, now)
                    ):
                        counts[limited] += 1
                        continue
                    if channel is not None and data and 0x40 <= data[0] <= 0x4F:
                        channel(data, (inet_ntoa(ip4.to_bytes(4, "big")), port), local)
                        continue
                    answer = plain(data, ip4, port, local)
                    if answer is None:
                        serve_one(data, Address(inet_ntoa(ip4.to_bytes(4, "big")), port))
                        continue
                    counts[ok] += 1
                    batch.queue(i, answer)
                dropped = batch.flush()
                if dropped:
                    counts[send_failed] += dropped

        return on_readable_batched

    def _stream_callback(
        self, plan: ListenerPlan, handler: BindingHandler
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], asyncio.Future[None]]:
        def on_connection(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> asyncio.Future[None]:
            task = asyncio.ensure_future(self._serve_stream(plan, handler, reader, writer))
            self._conn_tasks.add(task)
            task.add_done_callback(self._conn_tasks.discard)
            return task

        return on_connection

    async def _serve_stream(
        self,
        plan: ListenerPlan,
        handler: BindingHandler,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        counts = self.counters.values
        peer = writer.get_extra_info("peername")
        source = Address(peer[0], peer[1])
        conn = StreamConn(writer, asyncio.get_running_loop().time)
        if not self._admit(conn, source):
            writer.transport.abort()  # refused: nothing was read, nothing to answer
            return
        counts[CONNECTIONS] += 1
        sockname = writer.get_extra_info("sockname")
        local = Address(sockname[0], sockname[1])
        transport = plan.uri.transport
        name = transport.value
        try:
            await self._stream_loop(conn, handler, reader, source, local, transport)
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
            self._table.release(conn)
            if self.turn is not None:
                self.turn.connection_lost(source, local, transport)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _admit(self, conn: StreamConn, source: Address) -> bool:
        """A slot for `conn`: refused past the per-source cap; when full, the oldest idle or
        mid-frame connection is evicted for it (never one relaying for an allocation)."""
        counts = self.counters.values
        now, idle = conn.last_active, self.config.stream.idle_timeout

        def relaying(other: Hashable) -> bool:
            return isinstance(other, StreamConn) and other.relaying(now, idle)

        verdict = self._table.admit(conn, source_key((source.host,)), relaying)
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

    async def _stream_loop(
        self,
        conn: StreamConn,
        handler: BindingHandler,
        reader: asyncio.StreamReader,
        source: Address,
        local: Address,
        transport: Transport,
    ) -> None:
        counts = self.counters.values
        limits = self.config.stream
        name = transport.value
        key = _ratelimit_key(source.family)(source.host)
        turn = self.turn
        framer = StreamFramer(
            limits.max_message_size
            if turn is None
            else max(limits.max_message_size, _TURN_FRAME_SIZE)
        )
        family = source.family
        clock = conn.clock
        frame_start: float | None = None  # when the first byte of the pending frame came
        while True:
            data = await read_by(conn, reader, frame_start, limits, clock)
            if not data:
                return
            loop_now = clock()
            frames = framer.feed(data)
            if frames:
                conn.last_active = loop_now  # complete frames are activity; stray bytes are not
                frame_start = loop_now if framer.pending else None
            elif frame_start is None:
                frame_start = loop_now
            now = time.monotonic()
            for frame in frames:
                if turn is not None and not _binding_request(frame):
                    # TURN over TCP/TLS: requests still count against the source's budget.
                    if not _not_a_request(frame) and not self._allow(key, now, name):
                        continue
                    self._turn_frame(turn, frame, source, local, transport, conn.write)
                    continue
                if not self._allow(key, now, name):
                    continue
                tx = self._handle_frame(handler, frame, source, local, transport)
                if tx is None:
                    counts[request_index(name, family, "ignored")] += 1
                    # An indication legitimately gets no answer; anything else is garbage.
                    if frame[0] >= 4 or (frame[1] & 0x10) == 0 or frame[0] & 0x01:
                        raise FramingError("unanswerable message on a stream")
                    continue
                result = "error" if tx.data[1] & 0x10 else "success"
                counts[request_index(name, family, result)] += 1
                conn.writer.write(tx.data)
            await conn.writer.drain()

    def _allow(self, key: Hashable, now: float, transport_name: str) -> bool:
        if self.limiter is None or self.limiter.allow(key, now):
            return True
        self.counters.values[ratelimited_index(transport_name)] += 1
        return False

    def _turn_frame(
        self,
        turn: TurnEngine,
        frame: bytes,
        source: Address,
        local: Address,
        transport: Transport,
        reply: Callable[[bytes], object],
    ) -> None:
        try:
            turn.datagram(frame, source, local, transport, reply)
        except Exception:
            self.counters.values[error_index("internal")] += 1
            log.exception("TURN engine failed on a %d-byte %s frame", len(frame), transport)

    def _handle_frame(
        self,
        handler: BindingHandler,
        frame: bytes,
        source: Address,
        local: Address,
        transport: Transport,
    ) -> Transmit | None:
        if frame[0] >= 4:  # ChannelData: only meaningful once TURN allocations exist
            return None
        try:
            return handler.handle(frame, source, local, transport)
        except Exception:
            self.counters.values[error_index("internal")] += 1
            log.exception("binding handler failed on a %d-byte %s message", len(frame), transport)
            return None

    async def close(self, drain: float = 2.0) -> None:
        """Stop accepting; give open streams `drain` seconds to finish, then cut them."""
        loop = self._loop
        for sock in self._udp:
            if loop is not None:
                loop.remove_reader(sock.fileno())
            sock.close()
        for server in self._servers:
            server.close()
        for _, sock in self._stream_socks:
            sock.close()
        if self._conn_tasks:
            _, pending = await asyncio.wait(self._conn_tasks, timeout=drain)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.counters.flush()
