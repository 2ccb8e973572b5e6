"""The asyncio side of RFC 6062 TCP relays: listening sockets, dials, peer data connections.

Theory of operation. `natkit.turn.tcp_relay.TcpRelay` decides; this module owns the sockets
and moves the bytes. `BuiltinTurn` delegates to one `TcpSockets`: the `OpenRelay` of a TCP
allocation becomes `listen` (a TCP socket listening on the relayed address, watched with
`loop.add_reader`), its `CloseRelay` `close_relay`; after every client request `run` carries out
what the core's handlers left (a `Dial`: a task connecting from the relayed address, whose
answer goes out later; a `Splice`: the request's link handed over and joined to the peer); the
engine's one-second timer calls `tick`.

The relayed address is shared. The listening socket is bound exclusively first (EADDRINUSE if
anyone holds the port: `natkit.net.sockets` does the same for the listeners) and only then
opened with SO_REUSEPORT, so that each dial can bind the very same address (§5.2: "The local
endpoint is the relayed transport address"); Linux lets a bound socket share a listener's port
only with SO_REUSEPORT on both. A later process of the same uid could join that port the same
way (the kernel rule `natkit.net.sockets` describes); a second natkit cannot, it binds
exclusively first.

Bytes and memory. A peer data connection is an `asyncio.Protocol`. Before its ConnectionBind,
what the peer sends is kept, up to `tcp_relay.PENDING_LIMIT`; then its reading pauses, so the
kernel's receive window closes (§5.3). Once spliced, bytes go straight between the peer's
transport and the client's `natkit.net.routes.Pipe`, both ways, with flow control on each side:
the peer's reading pauses while the client's write backlog is above the pipe's high-water mark
(until `Pipe.on_drained`), the client's reading pauses while the peer transport's buffer is
above `_HIGH_WATER` (`pause_writing`/`resume_writing`). Either side closing drops the pair
(`TcpRelay.closed`); a close writes out what is queued first.

``NATKIT_TURN_TCP_BIND_TIMEOUT`` (seconds) shortens RFC 6062's 30-second ConnectionBind
deadline: for tests only, which cannot wait 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import cast

from natkit.addr import Address, FiveTuple
from natkit.logs import RateLimitFilter
from natkit.metrics import (
    TURN_BYTES_TO_CLIENT,
    TURN_BYTES_TO_PEER,
    TURN_PACKETS_TO_CLIENT,
    TURN_PACKETS_TO_PEER,
)
from natkit.net.demux import is_error_response
from natkit.net.routes import Link, Pipe
from natkit.turn.commands import Command
from natkit.turn.tcp_relay import (
    PENDING_LIMIT,
    Answer,
    Dial,
    Drop,
    Splice,
    TcpCommand,
    TcpRelay,
)

__all__ = ["BIND_TIMEOUT_ENV", "TcpSockets"]

log = logging.getLogger("natkit.turn.tcp")
log.addFilter(RateLimitFilter())

BIND_TIMEOUT_ENV = "NATKIT_TURN_TCP_BIND_TIMEOUT"
_HIGH_WATER = 1 << 16  # bytes queued towards a peer before the client's reading pauses
_BACKLOG = 16  # peers connecting at once to one relayed address
_ACCEPTS = 16  # connections accepted per wake-up
_ACCEPT_BACKOFF = 0.5  # seconds a listener rests when the host has no file descriptor left
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class TcpSockets:
    """Every RFC 6062 socket of one `BuiltinTurn`; see the module docstring."""

    def __init__(
        self,
        core: TcpRelay,
        send: Callable[[list[Command]], object],
        refused: Callable[[bytes, bytes, Address], None],
        counters: list[int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`send` carries out the core's `SendToClient`s (the engine's command runner);
        `refused(request, response, client)` counts and logs an error answer."""
        self.core = core
        self.send = send
        self.refused = refused
        self.counters = counters
        self.clock = clock
        self._listeners: dict[Address, tuple[socket.socket, FiveTuple]] = {}
        self._dials: dict[int, asyncio.Task[None]] = {}
        self._peers: dict[int, _Peer] = {}
        self._adopting: set[asyncio.Task[None]] = set()
        timeout = os.environ.get(BIND_TIMEOUT_ENV)
        if timeout:
            try:
                core.bind_timeout = float(timeout)
            except ValueError:
                log.warning("ignoring %s=%r: not a number of seconds", BIND_TIMEOUT_ENV, timeout)

    # -- the engine's delegation -----------------------------------------------------------

    def listen(self, relay: Address, owner: FiveTuple) -> bool | None:
        """Listen on the relayed address `relay` of `owner`'s allocation: None when it does,
        else whether the host ran out of a resource (`exhausted`) rather than the port being
        taken (as `BuiltinTurn._open_relay`)."""
        family = socket.AF_INET6 if relay.family == 6 else socket.AF_INET
        sock: socket.socket | None = None
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of old dials
            if family == socket.AF_INET6:  # no IPv4-mapped peers on an IPv6 relay
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(relay)
            sock.listen(_BACKLOG)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the module docstring
        except OSError as err:
            if sock is not None:
                sock.close()
            if err.errno in _EXHAUSTED:
                log.warning(
                    "no TCP relay socket for %s: %s (answering 508; raise the file "
                    "descriptor limit)", relay, err.strerror or err,
                )  # fmt: skip
                return True
            log.debug("TCP relay %s unavailable: %s", relay, err)
            return False
        self._listeners[relay] = (sock, owner)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock, relay)
        self.core.listening(relay)
        return None

    def close_relay(self, relay: Address) -> FiveTuple | None:
        """The `CloseRelay` of a TCP allocation: its listener and every connection go; the
        owner's 5-tuple, or None if `relay` is no TCP relay of ours."""
        entry = self._listeners.pop(relay, None)
        if entry is None:
            return None
        sock, owner = entry
        _unwatch(sock)
        self._carry(self.core.released(relay))
        return owner

    def run(self, link: Link) -> bool:
        """Carry out what the core's handlers left for the request that arrived on `link`;
        True when that request (a Connect) is answered later."""
        outbox, self.core.outbox = self.core.outbox, []
        deferred = False
        for cmd in outbox:
            if isinstance(cmd, Dial):
                task = asyncio.ensure_future(self._dial(cmd))
                self._dials[cmd.cid] = task
                deferred = True
            elif isinstance(cmd, Splice):
                self._splice(cmd.cid, link)
            else:
                self._carry([cmd])
        return deferred

    def tick(self, now: float) -> None:
        self._carry(self.core.tick(now))

    async def close(self) -> None:
        """Shutdown: every listener, dial and connection."""
        for relay in list(self._listeners):
            self.close_relay(relay)
        self._carry(self.core.close())
        for cid in list(self._peers):  # pragma: no cover - a connection the core forgot
            self._drop(cid)
        tasks = [*self._dials.values(), *self._adopting]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- commands --------------------------------------------------------------------------

    def _carry(self, commands: list[TcpCommand]) -> None:
        for cmd in commands:
            if isinstance(cmd, Drop):
                self._drop(cmd.cid)
            elif isinstance(cmd, Answer):
                self.send([cmd.reply])
                if is_error_response(cmd.reply.data):
                    self.refused(cmd.request, cmd.reply.data, cmd.reply.to.client)
            elif isinstance(cmd, Dial | Splice):  # pragma: no cover - only from handlers
                raise AssertionError(f"{cmd} outside a request")
            else:
                self.send([cmd])

    def _drop(self, cid: int) -> None:
        task = self._dials.pop(cid, None)
        if task is not None:
            task.cancel()
        peer = self._peers.pop(cid, None)
        if peer is not None:
            peer.close()

    def _lost(self, cid: int) -> None:
        """A side of `cid` closed (the peer's transport, or the client's pipe)."""
        self._carry(self.core.closed(cid))

    async def _dial(self, cmd: Dial) -> None:
        """§5.2: connect from the relayed address; the core answers success or 447."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if cmd.relay.family == 6 else socket.AF_INET
        sock: socket.socket | None = None
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(cmd.relay)
            await loop.sock_connect(sock, cmd.peer)
        except OSError as err:
            if sock is not None:
                sock.close()
            log.debug("TCP relay %s could not connect to %s: %s", cmd.relay, cmd.peer, err)
            self._dials.pop(cmd.cid, None)
            self._carry(self.core.failed(cmd.cid))
            return
        except BaseException:  # cancelled by its Drop (a deadline, the allocation's end)
            if sock is not None:
                sock.close()
            raise
        self._dials.pop(cmd.cid, None)
        peer = self._peers[cmd.cid] = _Peer(self, cmd.cid)
        self._adopt(sock, peer)
        self._carry(self.core.connected(cmd.cid, self.clock()))

    def _splice(self, cid: int, link: Link) -> None:
        """§5.4: the client data connection `link` and peer data connection `cid` are one."""
        peer = self._peers.get(cid)
        if peer is None:  # the peer went away meanwhile: the pipe ends at once
            link.hand_over(_ignore, _nothing).close()
            self._carry(self.core.closed(cid))
            return
        peer.attach(link.hand_over(peer.from_client, lambda: self._lost(cid)))

    def _accept(self, listener: socket.socket, relay: Address) -> None:
        """§5.3: peers connecting to the relayed address; only those with a permission stay."""
        for _ in range(_ACCEPTS):
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in _EXHAUSTED:  # rest, or the listener spins on readiness
                    log.warning("TCP relay %s cannot accept: %s", relay, err.strerror or err)
                    self._rest(listener, relay)
                return
            result = self.core.incoming(relay, Address(addr[0], addr[1]), self.clock())
            if result is None:
                sock.close()  # no permission for that peer (or over the limit)
                continue
            cid, commands = result
            peer = _Peer(self, cid)
            self._peers[cid] = peer
            self._adopt(sock, peer)
            self._carry(commands)

    def _adopt(self, sock: socket.socket, peer: _Peer) -> None:
        task = asyncio.ensure_future(_adopt(sock, peer))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    def _rest(self, listener: socket.socket, relay: Address) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener.fileno())

        def again() -> None:
            if self._listeners.get(relay, (None,))[0] is listener:
                loop.add_reader(listener.fileno(), self._accept, listener, relay)

        loop.call_later(_ACCEPT_BACKOFF, again)


class _Peer(asyncio.Protocol):
    """One peer data connection: buffered until spliced, then piped to the client."""

    def __init__(self, owner: TcpSockets, cid: int) -> None:
        self.owner = owner
        self.cid = cid
        self.counters = owner.counters
        self.transport: asyncio.Transport | None = None
        self.pipe: Pipe | None = None
        self.pending: list[bytes] = []  # peer bytes before the splice (§5.3)
        self.pending_size = 0
        self.early: list[bytes] = []  # client bytes before the transport exists
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but the same interface.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        if self.closing:
            transport.close()
            return
        for data in self.early:
            transport.write(data)
        self.early.clear()
        if self.pending_size >= PENDING_LIMIT:  # pragma: no cover - not read yet
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        counters = self.counters
        counters[TURN_PACKETS_TO_CLIENT] += 1
        counters[TURN_BYTES_TO_CLIENT] += len(data)
        pipe, transport = self.pipe, self.transport
        assert transport is not None
        if pipe is None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size >= PENDING_LIMIT:
                transport.pause_reading()  # the receive window closes (§5.3)
        elif not pipe.write(data):
            transport.pause_reading()
            pipe.on_drained(self._resume)

    def _resume(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # the peer closed: close this side too, and the client's (§5.5)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self.cid)

    def pause_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.resume_reading()

    def from_client(self, data: bytes) -> None:
        """Bytes from the client data connection, as they are, to the peer."""
        counters = self.counters
        counters[TURN_PACKETS_TO_PEER] += 1
        counters[TURN_BYTES_TO_PEER] += len(data)
        if self.transport is None:
            self.early.append(data)  # bounded: the pipe pauses on `pause_writing` only later
        elif not self.closing:
            self.transport.write(data)

    def attach(self, pipe: Pipe) -> None:
        """Spliced: what the peer sent so far goes first (behind the ConnectionBind answer)."""
        self.pipe = pipe
        for data in self.pending:
            pipe.write(data)
        self.pending.clear()
        if self.pending_size >= PENDING_LIMIT and self.transport is not None:
            self.transport.resume_reading()
        self.pending_size = 0

    def close(self) -> None:
        """The pair ends: queued bytes go out, then both connections close."""
        if self.closing:
            return
        self.closing = True
        if self.transport is not None:
            self.transport.close()
        if self.pipe is not None:
            self.pipe.close()


async def _adopt(sock: socket.socket, peer: _Peer) -> None:
    """A connected peer socket (accepted or dialled) becomes a transport of `peer`."""
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: peer, sock)
    except OSError:
        sock.close()
        peer.connection_lost(None)


def _unwatch(sock: socket.socket) -> None:
    with contextlib.suppress(ValueError, OSError, RuntimeError):
        asyncio.get_running_loop().remove_reader(sock.fileno())
    sock.close()


def _ignore(data: bytes) -> None:
    pass


def _nothing() -> None:
    pass
