"""The builtin engine's ChannelData fast path on IPv4 UDP: the core's channel routes, cached and
re-checked per packet, with batched socket I/O both ways.

Theory of operation. A relayed packet on a bound channel needs three facts: the channel (its
number, peer and expiry), the permission of the peer's IP (its expiry) and the socket it leaves
on. `Relay.channel_data` / `Relay.peer_data` find them through string-keyed lookups and the
text address of the source; here the first packet of a route takes that slow path, and its
result is cached under the raw source (IPv4 address and port as ints, as recvmmsg reads them)
together with the very objects the core keeps: the `Channel`, the leg's `Allocation` and its
permission dict. Every later packet re-checks them against `now` (channel expiry, permission
expiry, the leg not freed), so the cache can never relay what the core would refuse: a refresh
moves an expiry in place, an expiry or a free fails the check and the packet takes the slow
path again, which re-caches or drops it (RFC 8656 §12.6). Nothing here changes the core's state.

- Client → peer: `client_hook(local)` is the listener's `natkit.net.routes.RelayV4` for
  ChannelData; the payload leaves from the relay socket. Its cache holds one entry per client
  (5-tuple: listener address, client IP and port), dropped with the allocation (`forget`).
- Peer → client: `peer_reader` drains a relay socket with recvmmsg into one `RecvBatch` shared by
  every relay socket of the worker and hands each frame to the client's `Sender`, which queues it
  in the listener's send batch (one sendmmsg per event-loop iteration, `natkit.net.udp`). Its
  cache lives and dies with the reader. With the relay pump (`natkit.turn.pump`) the engine
  `watch`es its IPv4 relay sockets instead: the event loop watches the pump's one epoll fd,
  `on_pump_ready` has the pump read and relay every ready socket in one call, and what it did
  not relay goes through the same per-socket processing (`_peer_batch`).
Each cache holds at most what the core allows (``turn.limits.channels`` per allocation) plus the
stale entries of channels that ended, and is cleared when it outgrows twice that.
Anything else (TCP and TLS clients, IPv6, Send and Data indications, unbound channels) keeps
the slow path in `natkit.turn.builtin`.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

from natkit.addr import Address, FiveTuple, Transport
from natkit.metrics import (
    TURN_BYTES_TO_CLIENT,
    TURN_BYTES_TO_PEER,
    TURN_PACKETS_TO_CLIENT,
    TURN_PACKETS_TO_PEER,
)
from natkit.net import mmsg
from natkit.net.routes import RelayV4, Sender
from natkit.turn.allocation import Allocation, Channel
from natkit.turn.pump import Pump
from natkit.turn.relay import Relay

__all__ = ["ChannelRoutes"]

_READS = 16  # recvmmsg calls per relay socket per wake-up before yielding to the loop
_POLL_BUDGET = 64  # recvmmsg calls per pump round (natkit.turn.pump: pump_poll)
_ROUNDS = 16  # pump rounds handed back to Python per wake-up before yielding to the loop
_SLOTS = 16  # datagrams per recvmmsg on relay sockets
_SLOT_SIZE = 65535  # a peer's datagram may be as large as UDP allows
_HEADER = struct.Struct("!HH")  # ChannelData: channel number, length (RFC 8656 §12.4)

# (channel, the leg it leaves on, that leg's permissions, the peer's text IP, the send call, peer)
_ToPeer = tuple[Channel, Allocation, dict[str, float], str, Callable[..., int], Address]
# (channel, the allocation's permissions, the peer's text IP, the client's sender); no freed
# check: the reader goes with the relay socket
_ToClient = tuple[Channel, dict[str, float], str, Sender]


class ChannelRoutes:
    """The fast path of one `BuiltinTurn` (module docstring): `sockets` are its relay sockets
    by relayed address, `senders` the way back to each allocation's client by owner."""

    def __init__(
        self,
        relay: Relay,
        sockets: dict[Address, tuple[socket.socket, FiveTuple]],
        senders: dict[FiveTuple, Sender],
        counters: list[int],
        clock: Callable[[], float],
        on_send_error: Callable[[], None],
    ) -> None:
        self.relay = relay
        self.sockets = sockets
        self.senders = senders
        self.counters = counters
        self.clock = clock
        self.on_send_error = on_send_error
        self._cap = 2 * relay.allocations.limits.channels + 8
        # listener address → (client IP << 16 | port) → (allocation, channel number → route)
        self._clients: dict[Address, dict[int, tuple[Allocation, dict[int, _ToPeer]]]] = {}
        self._batch: mmsg.RecvBatch | None = None
        self.pump: Pump | None = None
        """The compiled relay (`natkit.turn.pump`) when the engine runs one: relay sockets are
        read through it, and it relays installed routes before this path sees them."""
        self._watched: dict[int, Callable[[int, int, float], None]] = {}  # relay fd → process
        self._poll: tuple[Callable[[], int], Any] | None = None

    @staticmethod
    def available() -> bool:
        return mmsg.available()

    # -- client → peer ---------------------------------------------------------------------

    def client_hook(self, local: Address) -> RelayV4:
        """The `RelayV4` for ChannelData arriving on the listener bound to `local`."""
        clients = self._clients.setdefault(local, {})
        counters, clock = self.counters, self.clock

        def relay_v4(data: bytes, ip4: int, port: int) -> bool:
            size = len(data) - 4
            if size < 0:
                return True  # shorter than its header (RFC 8656 §12.4): dropped
            length = data[2] << 8 | data[3]
            entry = clients.get(ip4 << 16 | port)
            if entry is not None and size == length:  # a padded frame takes the slow path
                route = entry[1].get(data[0] << 8 | data[1])
                if route is not None:
                    channel, leg, permissions, host, sendto, peer = route
                    now = clock()
                    if channel.expires > now and not leg.freed and permissions.get(host, 0.0) > now:
                        try:
                            sendto(memoryview(data)[4:], peer)
                        except OSError:  # a full buffer or an ICMP error: UDP may drop
                            self.on_send_error()
                            return True
                        counters[TURN_PACKETS_TO_PEER] += 1
                        counters[TURN_BYTES_TO_PEER] += size
                        return True
            self._client_slow(local, clients, data, ip4, port)
            return True

        return relay_v4

    def _client_slow(
        self,
        local: Address,
        clients: dict[int, tuple[Allocation, dict[int, _ToPeer]]],
        data: bytes,
        ip4: int,
        port: int,
    ) -> None:
        """The core's `channel_data`, then the route cached if the channel is bound."""
        client = Address(socket.inet_ntoa(ip4.to_bytes(4, "big")), port)
        now = self.clock()
        route = self.relay.channel_data(data, client, local, Transport.UDP, now)
        if route is None:
            return
        relay_address, payload, peer = route
        sendto = self.send_to_peer(relay_address, payload, peer)
        if sendto is None:
            return
        tables = self.relay.allocations
        alloc = tables.by_five_tuple.get(FiveTuple(client, local, Transport.UDP))
        leg = tables.by_relay.get(relay_address)
        channel = None if alloc is None else alloc.channels.get(data[0] << 8 | data[1])
        if alloc is None or leg is None or channel is None:
            return
        key = ip4 << 16 | port
        cached = clients.get(key)
        if cached is None or cached[0] is not alloc or len(cached[1]) >= self._cap:
            cached = (alloc, {})
            clients[key] = cached
        cached[1][channel.number] = (channel, leg, leg.permissions, peer.host, sendto, peer)

    def send_to_peer(
        self, relay_address: Address, payload: bytes, peer: Address
    ) -> Callable[..., int] | None:
        """Send what the core routed (`Relay.channel_data`) from its relay socket, counted; the
        socket's `sendto` (for the cache), or None when nothing went out."""
        entry = self.sockets.get(relay_address)
        if entry is None:
            return None
        sendto = entry[0].sendto
        try:
            sendto(payload, peer)
        except OSError:  # a full buffer or an ICMP error: UDP may drop, so do we
            self.on_send_error()
            return None
        counters = self.counters  # two list increments: the whole cost of the metric
        counters[TURN_PACKETS_TO_PEER] += 1
        counters[TURN_BYTES_TO_PEER] += len(payload)
        return sendto

    def forget(self, owner: FiveTuple) -> None:
        """The allocation of `owner` ended: drop its client entry."""
        client = owner.client
        clients = self._clients.get(owner.local)
        if clients is None or ":" in client.host:
            return
        key = int.from_bytes(socket.inet_aton(client.host), "big") << 16 | client.port
        entry = clients.get(key)
        if entry is not None and entry[0].five_tuple == owner:
            del clients[key]

    # -- peer → client ---------------------------------------------------------------------

    def _shared_batch(self) -> mmsg.RecvBatch:
        if self._batch is None:
            self._batch = mmsg.RecvBatch(batch=_SLOTS, size=_SLOT_SIZE)
        return self._batch

    def _peer_batch(self, relay_address: Address) -> Callable[[int, int, float], None]:
        """What relays the datagrams one read of the relay socket bound to `relay_address` left
        in the shared batch: ``process(n, relayed, now)``, where `relayed` > 0 says the pump
        relayed those marked in `handled` (skipped here)."""
        batch = self._shared_batch()
        source, length_of, handled = batch.source, batch.length, batch.handled
        buffer, slot = batch.buffer, batch.size
        routes: dict[int, _ToClient] = {}
        counters, header = self.counters, _HEADER.pack

        def process(n: int, relayed: int, now: float) -> None:
            for i in range(n):
                if relayed and handled[i]:
                    continue
                ip4, port = source(i)
                size = length_of(i)
                route = routes.get(ip4 << 16 | port)
                if route is not None:
                    channel, permissions, host, send = route
                    if channel.expires > now and permissions.get(host, 0.0) > now:
                        start = i * slot
                        send(header(channel.number, size), buffer[start : start + size])
                        counters[TURN_PACKETS_TO_CLIENT] += 1
                        counters[TURN_BYTES_TO_CLIENT] += size
                        continue
                self._peer_slow(relay_address, routes, batch.datagram(i), ip4, port, now)

        return process

    def peer_reader(self, sock: socket.socket, relay_address: Address) -> Callable[[], None]:
        """The `loop.add_reader` callback of the IPv4 relay socket `sock` bound to
        `relay_address` (read through the pump's `from_peer` when there is one)."""
        batch = self._shared_batch()
        fd, recv, clock = sock.fileno(), batch.recv, self.clock
        process = self._peer_batch(relay_address)
        pumped = None if self.pump is None else self.pump.from_peer(fd, batch)

        def on_readable() -> None:
            now = clock()
            for _ in range(_READS):
                relayed = 0
                if pumped is not None:  # read and relayed in C (natkit.turn.pump)
                    result = pumped()
                    if result < 0:
                        continue  # ICMP errors from earlier sends surface here
                    n, relayed = result & 255, result >> 8
                    if not n:
                        return
                else:
                    try:
                        n = recv(fd)
                    except OSError:  # ICMP errors from earlier sends surface here
                        continue
                process(n, relayed, now)
                if n < _SLOTS:
                    return  # drained: the next datagram wakes the loop again

        return on_readable

    # -- peer → client through the pump's epoll set ------------------------------------------

    def watch(self, sock: socket.socket, relay_address: Address) -> bool:
        """Serve the IPv4 relay socket `sock` in the pump's rounds (`on_pump_ready`); False
        when there is no pump or it refused the socket (then `peer_reader` it is)."""
        if self.pump is None or not self.pump.watch(sock.fileno()):
            return False
        self._watched[sock.fileno()] = self._peer_batch(relay_address)
        return True

    def unwatch(self, fd: int) -> bool:
        """Whether `fd` was watched (now no longer: call it before the socket closes)."""
        if self._watched.pop(fd, None) is None:
            return False
        if self.pump is not None:
            self.pump.unwatch(fd)
        return True

    def on_pump_ready(self) -> None:
        """The `loop.add_reader` callback of the pump's epoll fd: one call relays what every
        ready relay socket holds; what it did not relay goes to that socket's `_peer_batch`."""
        if self._poll is None:
            return
        poll, ready = self._poll
        watched, now = self._watched, self.clock()
        for _ in range(_ROUNDS):
            result = poll()
            if result <= 0:
                return  # nothing ready, or the budget spent: the loop calls again
            process = watched.get(ready[0])
            if process is not None:
                process(result & 255, result >> 8, now)

    def start_pump_rounds(self) -> int | None:
        """The fd the event loop must watch for `on_pump_ready`, or None without a pump."""
        if self.pump is None:
            return None
        self._poll = self.pump.poller(self._shared_batch(), _POLL_BUDGET)
        return self.pump.epoll_fd()

    def _peer_slow(
        self,
        relay_address: Address,
        routes: dict[int, _ToClient],
        data: bytes,
        ip4: int,
        port: int,
        now: float,
    ) -> None:
        """The core's `peer_data` (a Data indication, or a drop), then the route cached if the
        peer has a channel and the client is on UDP."""
        host = socket.inet_ntoa(ip4.to_bytes(4, "big"))
        out = self.relay.peer_data(relay_address, data, (host, port), now)
        if out is None:
            return
        frame, owner = out
        send = self.senders.get(owner)
        if send is None:
            return
        send(b"", frame)
        self.counters[TURN_PACKETS_TO_CLIENT] += 1
        self.counters[TURN_BYTES_TO_CLIENT] += len(data)
        alloc = self.relay.allocations.by_relay.get(relay_address)
        if alloc is None or alloc.five_tuple.transport is not Transport.UDP:
            return  # over TCP ChannelData is padded (§12.5): the slow path builds it
        channel = alloc.peer_channels.get(Address(host, port))
        if channel is not None and channel.expires > now:
            if len(routes) >= self._cap:
                routes.clear()
            routes[ip4 << 16 | port] = (channel, alloc.permissions, host, send)
