"""The builtin TURN engine: a thin asyncio shell that moves bytes for the sans-IO `Relay`.

Theory of operation. The listeners (`natkit.net`) route every non-Binding STUN message and every
ChannelData frame here (`routes`: TURN requests count against the rate limit, indications and
ChannelData do not) with the client's `Link`; an answer goes back as a `Transmit`, and the link
of a client that got an allocation is kept for what its peers send later. This engine owns only
relay sockets: one non-blocking UDP socket per allocation, bound within ``turn.relay.ports`` on
the relay IP, watched with `loop.add_reader` and drained in batches. Whatever the core returns
is carried out at once, in order (`natkit.turn.relay` documents the commands). A one-second
timer runs `Relay.handle_timeout` and keeps the core's Unix-time offset current (REST API
expiries are Unix times; lifetimes use the monotonic clock).

With ``stun.workers`` > 1 every worker has its own `BuiltinTurn`: SO_REUSEPORT keeps a client's
5-tuple on one worker. Each worker relays from its own slice of ``turn.relay.ports`` (a port it
cannot bind is another process's), and the quotas are counted server-wide in the supervisor's
shared table (`natkit.turn.shared_quota`).

Every error answer is a refusal (`natkit.turn.refusals`): counted in the worker's metrics row
(``natkit_turn_refusals_total{code,method,reason}``, summed over workers by the supervisor) and
logged at info with its reason, rate-limited per reason; the 401 challenge only at debug.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
import time
from collections.abc import Callable

from natkit.addr import Address, Transport, parse_hostport
from natkit.config.model import Config
from natkit.fastpath.relay import ChannelRoute, KernelRelay
from natkit.logs import RateLimitFilter
from natkit.metrics import (
    COUNTERS,
    TURN_BYTES_TO_CLIENT,
    TURN_BYTES_TO_PEER,
    TURN_CHANNELS,
    TURN_PACKETS_TO_CLIENT,
    TURN_PACKETS_TO_PEER,
    TURN_PERMISSIONS,
    TURN_PUMP_ROUTES,
    turn_allocation_index,
    turn_outcome_index,
    turn_refusal_index,
)
from natkit.net.routes import Limit, Link, Route, Sender, Transmit
from natkit.net.udp import UdpLink
from natkit.turn.allocation import Allocation, FiveTuple
from natkit.turn.channel_routes import ChannelRoutes
from natkit.turn.commands import Command, OpenRelay, SendToClient, SendToPeer
from natkit.turn.engine import HostAddressRefresh, build_relay
from natkit.turn.kernel_channels import KernelChannels
from natkit.turn.pump import FALLBACK, Pump, PumpUnavailable
from natkit.turn.refusals import AllocationLog, RefusalLog, explain, is_error_response
from natkit.turn.relay import Relay
from natkit.turn.tcp_sockets import TcpSockets

__all__ = ["BuiltinTurn"]

log = logging.getLogger("natkit.turn.builtin")
log.addFilter(RateLimitFilter())  # a per-datagram bug must not become a log flood

_BATCH = 256  # datagrams per wake-up per socket before yielding to the loop
_RECV_SIZE = 65535  # relayed datagrams may be as large as UDP allows
_MAX_FRAME = 65540  # ChannelData over TCP: 4-byte header + 65535 bytes, padded
_TICK = 1.0
_pump_warned = False  # "relaying in Python" is said once per process, not per engine
_SETTLE = 0.6  # > the workers' metrics flush interval (natkit.serve.workers)
_REFRESH_SUCCESS = b"\x01\x04"  # Refresh (0x004) success response type (RFC 8656 §18)
# Successes that change what a channel may relay: Refresh, CreatePermission, ChannelBind.
_ROUTE_SYNC = frozenset({_REFRESH_SUCCESS, b"\x01\x08", b"\x01\x09"})
_CREATED = turn_outcome_index("created")
_REFRESHED = turn_outcome_index("refreshed")
_IP_PMTUDISC_DO = 2  # linux/in.h; Python names IP_MTU_DISCOVER but not its values
# socket() / bind() failing for want of a resource of the host, not because of the port.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _dont_fragment(sock: socket.socket, family: int) -> None:
    """RFC 8656 §7.2/§14: DONT-FRAGMENT → set DF on what the relay sends (Linux options)."""
    if family == socket.AF_INET and hasattr(socket, "IP_MTU_DISCOVER"):
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
    elif family == socket.AF_INET6 and hasattr(socket, "IPV6_DONTFRAG"):
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DONTFRAG, 1)


class BuiltinTurn:
    """The asyncio adapter around one `Relay`; implements `natkit.turn.engine.TurnEngine`."""

    def __init__(
        self,
        config: Config,
        *,
        relay: Relay | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        counters: list[int] | None = None,
        kernel: KernelRelay | None = None,
    ) -> None:
        """`counters` is the worker's metrics row (`natkit.metrics.WorkerCounters.values`);
        standalone engines count in a row of their own (`self.counters`). With `kernel` (the
        kernel fast path's maps, ``stun.fast_path``) bound UDP channels are relayed there too
        (`natkit.turn.kernel_channels`)."""
        self.config = config
        self.counters = counters if counters is not None else [0] * COUNTERS
        self.refusal_log = RefusalLog(log)
        self.allocation_log = AllocationLog(log)
        self.relay = relay or build_relay(config, rng=rng)
        if config.turn.alternate_server is not None:
            self.relay.alternate = Address(*parse_hostport(config.turn.alternate_server))
        self.clock = clock
        self.host_refresh = HostAddressRefresh(self.relay.policy, now=clock())
        self._sockets: dict[Address, tuple[socket.socket, FiveTuple]] = {}
        self._opened: dict[Address, Allocation] = {}  # to tell an expiry from a deletion
        # The way back to each allocation's client (`Link.sender`), by relay socket owner.
        self._senders: dict[FiveTuple, Sender] = {}
        self._timer: asyncio.Task[None] | None = None
        self.tcp = TcpSockets(self.relay.tcp, self._run, self._refused, self.counters, clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.send_errors = 0
        self.channels = ChannelRoutes(
            self.relay, self._sockets, self._senders, self.counters, clock, self._send_failed
        )
        self.kernel: KernelChannels | None = None
        if kernel is not None:
            if clock is time.monotonic:  # the kernel's expiries are on CLOCK_MONOTONIC
                self.kernel = KernelChannels(kernel, self.relay, self.counters, clock)
            else:
                kernel.close()
        # The way each UDP allocation's client is reached: its listener socket's fd, by owner.
        self._listener_fds: dict[FiveTuple, int] = {}
        self.pump: Pump | None = None
        self.pumped: KernelChannels | None = None  # what the pump relays, kept like the kernel's
        if config.turn.pump == "auto" and clock is time.monotonic and self.channels.available():
            self._start_pump()
        # Every table of routes kept in step with the core (kernel, pump), for sync and close.
        self._route_tables = [t for t in (self.kernel, self.pumped) if t is not None]

    def _start_pump(self) -> None:
        """``turn.pump: auto``: relay bound IPv4 UDP channels in C (`natkit.turn.pump`); where
        it cannot be had, one line says why and Python relays them."""
        global _pump_warned
        try:
            self.pump = Pump(self._pump_fds)  # its table starts small and grows with the routes
        except PumpUnavailable as err:
            if not _pump_warned:
                _pump_warned = True
                log.warning(FALLBACK, err)
            return
        self.channels.pump = self.pump
        self.pumped = KernelChannels(
            self.pump, self.relay, self.counters, self.clock, wildcard_listeners=True
        )

    def _pump_fds(self, route: ChannelRoute) -> tuple[int, int] | None:
        """(listener fd, relay fd) of `route`'s allocation, for the pump."""
        entry = self._sockets.get(route.relay)
        if entry is None:
            return None
        sock, owner = entry
        listener = self._listener_fds.get(owner)
        return None if listener is None else (listener, sock.fileno())

    def _send_failed(self) -> None:
        self.send_errors += 1

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        pump_fd = self.channels.start_pump_rounds()
        if pump_fd is not None:  # every IPv4 relay socket is read through this one fd
            self._loop.add_reader(pump_fd, self.channels.on_pump_ready)
        self._sync_unix_time()
        if self._timer is None:
            self._timer = asyncio.create_task(self._tick())

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        self._run(self.relay.close())  # every allocation ends through the table
        if self.pump is not None and self._loop is not None:
            self._loop.remove_reader(self.pump.epoll_fd())
        for table in self._route_tables:
            table.close_all()
        await self.tcp.close()
        for relay in list(self._sockets):  # pragma: no cover - a socket the core forgot
            log.warning("relay socket %s had no allocation at shutdown", relay)
            self._close_relay(relay)

    async def drain(
        self, timeout: float | None = None, elsewhere: Callable[[], int] | None = None
    ) -> None:
        """Graceful drain (SIGTERM): refuse new allocations (300 with ``turn.alternate_server``,
        else 508) and keep relaying for the existing ones until they end (Refresh 0, expiry,
        connection closed) or `timeout` (``turn.drain_timeout``) passes. The listeners stay
        open: the clients' ChannelData, Refreshes and STUN Bindings keep arriving on them, also
        while `elsewhere()` (allocations of the other workers) is not 0."""
        loop = asyncio.get_running_loop()
        timeout = self.config.turn.drain_timeout if timeout is None else timeout
        self.relay.draining = True
        count = len(self.relay.allocations)
        if count:
            log.info("draining: %d allocations keep relaying for up to %.0f s", count, timeout)
        deadline = loop.time() + timeout
        # The siblings' counts reach shared memory at their next flush (0.5 s): wait that long
        # before trusting a 0 from them.
        settled = loop.time() + _SETTLE

        def relaying() -> bool:
            if self.relay.allocations:
                return True
            return elsewhere is not None and (loop.time() < settled or elsewhere() > 0)

        while relaying() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.relay.allocations:
            log.info("drain timeout: ending %d allocations", len(self.relay.allocations))

    def _sync_unix_time(self) -> None:
        self.relay.auth.unix_offset = time.time() - self.clock()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            self._sync_unix_time()
            try:
                self._run(self.relay.handle_timeout(self.clock()))
                self.tcp.tick(self.clock())  # RFC 6062 connect and bind deadlines
                self.host_refresh(self.clock())  # the own-address rule (natkit.turn.engine)
                for table in self._route_tables:
                    table.tick()  # what the kernel and the pump relayed, into the counters
                if self.pump is not None:
                    self.send_errors += self.pump.drain_dropped()
            except Exception:  # the timer must survive a bug in one sweep
                log.exception("TURN timeout sweep failed")

    # -- the TurnEngine interface: the listeners' routes ------------------------------------

    def routes(self) -> tuple[Route, Route]:
        """(STUN methods other than Binding, ChannelData) for `natkit.net.routes.Dispatcher`:
        requests count against the per-source rate limit, the media (Send indications,
        ChannelData) does not; both take the largest frames UDP and TCP can carry."""
        return (
            Route(self.handle, "TURN engine", Limit.REQUESTS, max_size=_MAX_FRAME),
            Route(
                self.channel_data,
                "TURN ChannelData path",
                Limit.NONE,
                max_size=_MAX_FRAME,
                relay_v4=self.channels.client_hook if self.channels.available() else None,
                relay_batch_v4=None if self.pump is None else self.pump.to_peers,
            ),
        )

    def handle(
        self, data: bytes, source: Address, local: Address, transport: Transport, link: Link
    ) -> Transmit | None:
        """One TURN request or indication from a client: the answer to send back, if any."""
        commands = self.relay.handle_client(data, source, local, transport, self.clock())
        if self.relay.tcp.outbox and self.tcp.run(link):
            return Transmit(b"", source, local)  # RFC 6062 §5.2: Connect is answered later
        if not commands:
            return None
        # A refusal is always one error response alone: two byte tests for everything else.
        first = commands[0]
        if len(commands) == 1 and type(first) is SendToClient:
            if is_error_response(first.data):
                self._refused(data, first.data, source)
            elif first.data[:2] == _REFRESH_SUCCESS:  # Refresh 0 also carries a CloseRelay
                self.counters[_REFRESHED] += 1
        answers: list[bytes] = []
        failed = self._run(commands, link, answers)
        if failed is not None:  # the 508 that replaced a relay socket we could not open
            self._refused(data, failed, source)
        if not answers:
            return None
        if self._route_tables and answers[-1][:2] in _ROUTE_SYNC:
            five_tuple = FiveTuple(source, local, transport)
            for table in self._route_tables:
                table.sync(five_tuple)
        for earlier in answers[:-1]:  # never more than one today; kept in order if so
            link.send(earlier, source)
        return Transmit(answers[-1], source, local)

    def _refused(self, request: bytes, response: bytes, source: Address) -> None:
        policy, draining = self.relay.policy, self.relay.draining
        refusal = explain(request, response, source, policy.is_allowed, draining=draining)
        if refusal is not None:
            self.counters[turn_refusal_index(refusal.reason, refusal.method)] += 1
            self.refusal_log(refusal, self.clock())

    def channel_data(
        self, data: bytes, client: Address, local: Address, transport: Transport, link: Link
    ) -> None:
        """A client's ChannelData (first byte 0x40-0x4F): the relay's hot path, straight to
        the peer from the allocation's relay socket, no command list, no answer."""
        try:
            route = self.relay.channel_data(data, client, local, transport, self.clock())
        except Exception:  # a bug must cost one datagram, never the listener's batch
            log.exception("TURN ChannelData path failed on a %d-byte datagram", len(data))
            return
        if route is not None:
            self.channels.send_to_peer(*route)

    def end_allocations(self, doomed: Callable[[Allocation], bool]) -> int:
        """End every allocation `doomed` picks (a revoked user's: `natkit.serve.clustered`),
        through the table like every other end, sockets and kernel entries included; how many
        ended."""
        table = self.relay.allocations
        picked = [alloc for alloc in table.by_five_tuple.values() if doomed(alloc)]
        for alloc in picked:
            self._run(list(table.free(alloc)))
        return len(picked)

    def connection_lost(self, source: Address, local: Address, transport: Transport) -> None:
        five_tuple = FiveTuple(source, local, transport)
        self._run(self.relay.connection_lost(five_tuple, self.clock()))

    @property
    def allocation_count(self) -> int:
        return len(self.relay.allocations)

    # -- commands --------------------------------------------------------------------------

    def _run(
        self, commands: list[Command], link: Link | None = None, answers: list[bytes] | None = None
    ) -> bytes | None:
        """Carry out `commands`; the error response sent instead of them when an `OpenRelay`
        failed for good (for the refusal count), else None. With `link` (a client's request)
        what goes to the client is collected in `answers`: it goes back the way it came."""
        for cmd in commands:
            try:
                if isinstance(cmd, SendToPeer):
                    entry = self._sockets.get(cmd.relay)
                    if entry is not None:
                        entry[0].sendto(cmd.data, cmd.peer)
                        self.counters[TURN_PACKETS_TO_PEER] += 1
                        self.counters[TURN_BYTES_TO_PEER] += len(cmd.data)
                elif isinstance(cmd, SendToClient):
                    if answers is not None:
                        answers.append(cmd.data)
                        continue
                    sender = self._senders.get(cmd.to)
                    if sender is not None:
                        try:
                            sender(b"", cmd.data)
                        except RuntimeError:  # uvloop: the stream client's transport closed
                            self.send_errors += 1
                elif isinstance(cmd, OpenRelay):
                    exhausted = self._open_relay(cmd, link)
                    if exhausted is not None:
                        # The rest of this batch announces the relay that failed: replace it.
                        now = self.clock()
                        instead = self.relay.relay_unavailable(cmd.relay, now, exhausted=exhausted)
                        failed = self._run(instead, link, answers)
                        last = instead[-1] if instead else None
                        if failed is None and isinstance(last, SendToClient):
                            failed = last.data if is_error_response(last.data) else None
                        return failed
                else:
                    self._close_relay(cmd.relay)
            except OSError:  # full send buffer, unreachable peer: UDP may drop, so do we
                self.send_errors += 1
        return None

    def _open_relay(self, cmd: OpenRelay, link: Link | None) -> bool | None:
        """Bind the relay socket: None when it is open, else whether the host ran out of a
        resource (file descriptors: `exhausted`) rather than the port being taken."""
        if self.relay.tcp.is_tcp(cmd.relay):  # RFC 6062: a TCP allocation listens instead
            failed = self.tcp.listen(cmd.relay, cmd.owner)
            if failed is None:
                self._announce(cmd, link)
            return failed
        family = socket.AF_INET6 if cmd.relay.family == 6 else socket.AF_INET
        sock: socket.socket | None = None
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(cmd.relay)
            if cmd.dont_fragment:
                _dont_fragment(sock, family)
        except OSError as err:
            if sock is not None:
                sock.close()
            if err.errno in _EXHAUSTED:
                # RFC 8656 §7.2: 508 Insufficient Capacity; the operator must hear of it.
                log.warning(
                    "no relay socket for %s: %s (answering 508; raise the file descriptor "
                    "limit, e.g. LimitNOFILE= or ulimit -n)",
                    cmd.relay, err.strerror or err,
                )  # fmt: skip
                return True
            log.debug("relay %s unavailable: %s", cmd.relay, err)
            return False
        self._sockets[cmd.relay] = (sock, cmd.owner)
        self._announce(cmd, link)
        assert self._loop is not None, "BuiltinTurn.start() was not awaited"
        if family == socket.AF_INET and self.channels.watch(sock, cmd.relay):
            return None  # the pump reads it with every other one (ChannelRoutes.on_pump_ready)
        if family == socket.AF_INET and self.channels.available():
            reader = self.channels.peer_reader(sock, cmd.relay)
        else:
            reader = self._peer_reader(sock, cmd.relay)
        self._loop.add_reader(sock.fileno(), reader)
        return None

    def _announce(self, cmd: OpenRelay, link: Link | None) -> None:
        """The relay of `cmd` is open: count and log the allocation, keep the way back."""
        alloc = self.relay.allocations.by_relay.get(cmd.relay)
        # A dual allocation's second leg (its own owner) is the same allocation: counted and
        # logged once, with its first leg; so is its end.
        if alloc is not None and alloc.owner == alloc.five_tuple:
            self._opened[cmd.relay] = alloc
            self.counters[_CREATED] += 1
            self.allocation_log("created", alloc, self.clock())
        if link is not None:  # what the peer reader sends to this client with
            link.pin()  # a TCP allocation ends with its connection: keep it from eviction
            self._senders[cmd.owner] = link.sender(cmd.owner.client)
            if isinstance(link, UdpLink):
                self._listener_fds[cmd.owner] = link.sock.fileno()

    def _close_relay(self, relay: Address) -> None:
        entry = self._sockets.pop(relay, None)
        if entry is not None:
            sock, owner = entry
            for table in self._route_tables:
                table.close(owner)  # before the port (and the fd) can serve another allocation
            self._unwatch(sock)
        else:  # RFC 6062: a TCP allocation's listening socket and connections
            tcp_owner = self.tcp.close_relay(relay)
            if tcp_owner is None:
                return
            owner = tcp_owner
        self._senders.pop(owner, None)
        self._listener_fds.pop(owner, None)
        self.channels.forget(owner)
        alloc = self._opened.pop(relay, None)
        if alloc is not None:
            now = self.clock()
            outcome = "expired" if alloc.expires <= now else "deleted"
            self.counters[turn_outcome_index(outcome)] += 1
            self.allocation_log(outcome, alloc, now)

    def sync_gauges(self) -> None:
        """Write the allocation, permission and channel gauges into the metrics row; the worker
        calls it before each flush (a walk over the allocations, never per packet)."""
        counts: dict[tuple[Transport, int], int] = {}
        permissions = channels = 0
        for alloc in self.relay.allocations.by_five_tuple.values():
            key = (alloc.five_tuple.transport, alloc.family)
            counts[key] = counts.get(key, 0) + 1
            permissions += len(alloc.permissions)
            channels += len(alloc.channels)
        row = self.counters
        for transport in Transport:
            for family in (4, 6):
                row[turn_allocation_index(transport.value, family)] = counts.get(
                    (transport, family), 0
                )
        row[TURN_PERMISSIONS] = permissions
        row[TURN_CHANNELS] = channels
        row[TURN_PUMP_ROUTES] = 0 if self.pumped is None else self.pumped.installed()

    def _unwatch(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd >= 0 and not self.channels.unwatch(fd) and self._loop is not None:
            self._loop.remove_reader(fd)
        sock.close()

    def _peer_reader(self, sock: socket.socket, relay: Address) -> Callable[[], None]:
        recvfrom, route, clock = sock.recvfrom, self.relay.peer_data, self.clock
        senders, counters = self._senders, self.counters

        def on_readable() -> None:
            now = clock()
            for _ in range(_BATCH):
                try:
                    data, addr = recvfrom(_RECV_SIZE)
                except BlockingIOError:
                    return
                except OSError:  # ICMP errors from earlier sends surface here
                    continue
                # IPv6 gives (host, port, flowinfo, scope id): the core keys peers by the
                # first two (else a bound channel's peer would get Data indications).
                out = route(relay, data, addr if len(addr) == 2 else addr[:2], now)
                if out is not None:
                    send = senders.get(out[1])
                    if send is not None:
                        try:
                            send(b"", out[0])
                        except (OSError, RuntimeError):  # RuntimeError: a closed transport
                            self.send_errors += 1
                            continue
                        counters[TURN_PACKETS_TO_CLIENT] += 1
                        counters[TURN_BYTES_TO_CLIENT] += len(data)

        return on_readable
