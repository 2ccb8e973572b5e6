"""The UDP read path of a listener: a non-blocking socket drained in batches, each datagram rate
limited, classified and handed to its route, the answer sent as the route returns it.

A socket watched with `loop.add_reader` and drained with `recvfrom` until EAGAIN (bounded per
wake-up so one socket cannot starve the others) is several times cheaper per datagram than
`DatagramProtocol`, whose transport allocates and dispatches per packet. On IPv4, recvmmsg /
sendmmsg (`natkit.net.mmsg`) move up to 64 datagrams per system call, and a route's `fast_v4`
(the plain Binding request) answers straight from the raw source address into the send batch.
With RFC 5780 the listener has four sockets; a `Transmit` leaves from the one bound to its
`source`, so CHANGE-REQUEST answers really come from the other IP and/or port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Hashable

from natkit.addr import Address, Transport
from natkit.logs import RateLimitFilter
from natkit.metrics import error_index, ratelimited_index, request_index
from natkit.net import mmsg
from natkit.net.demux import BINDING, CHANNEL_DATA, classify, is_request
from natkit.net.ratelimit import RateLimiter
from natkit.net.routes import Dispatcher, Limit, Pipe, Sender

__all__ = ["UdpLink", "ratelimit_key", "udp_reader"]

log = logging.getLogger("natkit.net.udp")
log.addFilter(RateLimitFilter())  # a per-datagram bug must not become a log flood

_BATCH = 256  # datagrams per wake-up before yielding to the loop
_MMSG_BATCH = 64  # datagrams per recvmmsg/sendmmsg on IPv4 sockets
RECV_SIZE = 2048  # larger than any STUN request we answer; longer datagrams get truncated
_LARGE = 4096  # a route taking datagrams beyond this gets fewer, larger recvmmsg slots


def ratelimit_key(family: int) -> Callable[[str], Hashable]:
    """The rate-limit bucket of a source host. IPv4 sources are keyed by their address as an
    int (what the batched path has at hand); IPv6 sources by their /64: one host commonly owns a
    whole /64, so a per-/128 bucket would be no limit at all."""
    if family == 4:
        return lambda host: int.from_bytes(socket.inet_aton(host), "big")
    return lambda host: ipaddress.IPv6Address(host.partition("%")[0]).packed[:8]


class UdpLink:
    """The way back to a UDP client: the listener socket it wrote to (a `Link`). With `sends`
    (the listener's IPv4 `SendBatch`) what a `sender` sends waits there until the end of the
    event loop's iteration and leaves in one sendmmsg with everything else queued by then;
    a datagram larger than a slot goes out at once. Drops count in `counts[dropped]`."""

    __slots__ = ("_flush_due", "counts", "dropped", "send_errors", "sends", "sock")

    def __init__(
        self,
        sock: socket.socket,
        sends: mmsg.SendBatch | None = None,
        counts: list[int] | None = None,
        dropped: int = 0,
    ) -> None:
        self.sock = sock
        self.sends = sends
        self.counts = counts if counts is not None else [0]
        self.dropped = dropped
        self.send_errors = 0
        self._flush_due = False

    def send(self, data: bytes, to: Address) -> None:
        try:
            self.sock.sendto(data, to)
        except OSError:  # a full buffer or an ICMP error: UDP may drop, so do we
            self.send_errors += 1

    def sender(self, to: Address) -> Sender:
        sock, sends = self.sock, self.sends
        if sends is None or ":" in to.host:

            def send_now(head: bytes, body: bytes | memoryview) -> None:
                try:
                    sock.sendto(head + body if head else body, to)
                except OSError:
                    self.send_errors += 1

            return send_now
        name = mmsg.sockaddr_in(to.host, to.port)
        queue_to = sends.queue_to

        def send_batched(head: bytes, body: bytes | memoryview) -> None:
            if not self._flush_due:
                self._flush_due = True
                asyncio.get_running_loop().call_soon(self._flush_later)
            if queue_to(head, body, name):
                return
            if sends.queued == sends.batch:  # full: what waits goes now, this one joins
                self._count(sends.flush())
                if queue_to(head, body, name):
                    return
            try:  # larger than a slot
                sock.sendto(head + body if head else body, to)
            except OSError:
                self.send_errors += 1

        return send_batched

    def _flush_later(self) -> None:
        self._flush_due = False
        if self.sends is not None:
            self._count(self.sends.flush())

    def _count(self, dropped: int) -> None:
        if dropped:
            self.counts[self.dropped] += dropped

    def pin(self) -> None:
        """UDP has no connection to keep: nothing to do."""

    def hand_over(self, receive: Callable[[bytes], None], closed: Callable[[], None]) -> Pipe:
        raise NotImplementedError("a UDP link has no stream to hand over")


def udp_reader(
    dispatcher: Dispatcher,
    sock: socket.socket,
    local: Address,
    socks: dict[Address, socket.socket],
    counts: list[int],
    limiter: Callable[[], RateLimiter | None],
) -> Callable[[], None]:
    """The `loop.add_reader` callback for `sock` (bound to `local`; `socks` are the listener's
    sockets by address); `limiter()` is the current rate limiter (SIGHUP may replace it)."""
    # Everything the loop body needs is a local: attribute lookups cost per datagram.
    recvfrom = sock.recvfrom
    family = local.family
    ok = request_index("udp", family, "success")
    err = request_index("udp", family, "error")
    ignored = request_index("udp", family, "ignored")
    limited = ratelimited_index("udp")
    internal, send_failed = error_index("internal"), error_index("send")
    key = ratelimit_key(family)
    v4 = family == 4
    udp = Transport.UDP
    monotonic = time.monotonic
    new_tuple = tuple.__new__
    routes = dispatcher.by_kind
    handles = tuple(None if r is None else r.handle for r in routes)
    # Per kind: 0 not limited, 1 every message, 2 requests only.
    limits = tuple(
        1 if r is None else {Limit.ALL: 1, Limit.REQUESTS: 2}.get(r.limit, 0) for r in routes
    )
    counted = tuple(r is not None and r.counted for r in routes)
    recv_size = dispatcher.max_size(RECV_SIZE)
    batch: mmsg.MMsgSocket | None = None
    if family == 4 and mmsg.available():
        # A route that takes large datagrams (TURN relays media) gets fewer, larger slots.
        batch = mmsg.MMsgSocket(
            sock,
            batch=_MMSG_BATCH if recv_size <= _LARGE else _MMSG_BATCH // 4,
            size=recv_size,
            send_size=RECV_SIZE,
        )
    link = UdpLink(sock, None if batch is None else batch.sends, counts, send_failed)

    def counts_against(kind: int, data: bytes) -> bool:
        """Whether this message spends its source's rate-limit budget (its route says)."""
        lim = limits[kind]
        return lim == 1 or (lim == 2 and is_request(data))

    def serve_one(kind: int, data: bytes, source: Address) -> None:
        handle = handles[kind]
        if handle is None:
            return  # nothing here serves it (RFC 7983: DTLS, RTP...): drop
        try:
            tx = handle(data, source, local, udp, link)
        except Exception:
            counts[internal] += 1
            route = routes[kind]
            log.exception("%s failed on a %d-byte datagram", route and route.name, len(data))
            return
        if tx is None:
            if counted[kind]:
                counts[ignored] += 1
            return
        if not tx.data:
            return  # answered later on the link (natkit.net.routes), never an empty datagram
        if counted[kind]:
            counts[err if tx.data[1] & 0x10 else ok] += 1
        try:
            if tx.source == local:
                sock.sendto(tx.data, tx.destination)
            else:
                socks.get(tx.source, sock).sendto(tx.data, tx.destination)
        except OSError:  # full send buffer or unreachable: UDP may drop, so do we
            counts[send_failed] += 1

    def on_readable() -> None:
        rl = limiter()
        now = monotonic()
        for _ in range(_BATCH):
            try:
                data, addr = recvfrom(recv_size)
            except BlockingIOError:
                return
            except OSError:
                # ICMP port-unreachable for an earlier reply surfaces here: not our problem.
                continue
            kind = classify(data)
            if rl is not None and counts_against(kind, data) and not rl.allow(key(addr[0]), now):
                counts[limited] += 1
                continue
            # IPv4 recvfrom gives exactly (host, port): reuse it as an Address, half the cost
            # of building one; IPv6 adds flowinfo and scope id.
            serve_one(kind, data, new_tuple(Address, addr) if v4 else Address(addr[0], addr[1]))

    if batch is None:
        return on_readable
    binding = routes[BINDING]
    fast = binding.fast_v4 if binding is not None else None
    # Every kind limited alike (no TURN): the limit needs no kind, and a plain Binding request,
    # the bulk of STUN traffic, is answered without being classified at all.
    uniform = all(lim == 1 for lim in limits)
    inet_ntoa = socket.inet_ntoa
    relays = tuple(None if r is None or r.relay_v4 is None else r.relay_v4(local) for r in routes)
    slots = batch.batch
    # Compiled code may relay a whole batch first (TURN ChannelData: natkit.turn.pump); what it
    # relayed is marked in `handled` and skipped below.
    channel_data = routes[CHANNEL_DATA]
    relay_batch = (
        None
        if channel_data is None or channel_data.relay_batch_v4 is None
        else channel_data.relay_batch_v4(sock.fileno(), batch.received)
    )
    handled = batch.received.handled

    def on_readable_batched() -> None:
        # A fast-path answer joins the batch and leaves in one sendmmsg; anything else takes
        # serve_one like the unbatched path.
        rl = limiter()
        now = monotonic()
        for _ in range(_BATCH // _MMSG_BATCH):
            try:
                n = batch.recv()
            except OSError:
                continue  # ICMP errors for earlier replies, as above
            if not n:
                return
            relayed = 0 if relay_batch is None else relay_batch(n)
            for i in range(n):
                if relayed and handled[i]:
                    continue
                ip4, port = batch.source(i)
                data = batch.datagram(i)
                kind = BINDING if uniform else classify(data)
                lim = limits[kind]  # counts_against, inline: this loop is the hot path
                if (
                    rl is not None
                    and (lim == 1 or (lim == 2 and is_request(data)))
                    and not rl.allow(ip4, now)
                ):
                    counts[limited] += 1
                    continue
                if kind == BINDING and fast is not None:
                    answer = fast(data, ip4, port, local)
                    if answer is not None:
                        counts[ok] += 1
                        dropped = batch.queue(i, answer)  # others' waiting sends went first
                        if dropped:
                            counts[send_failed] += dropped
                        continue
                if uniform:
                    kind = classify(data)
                relay = relays[kind]
                if relay is not None:
                    try:
                        if relay(data, ip4, port):
                            continue
                    except Exception:  # a bug must cost one datagram, never the batch
                        counts[internal] += 1
                        log.exception("relay path failed on a %d-byte datagram", len(data))
                        continue
                source = new_tuple(Address, (inet_ntoa(ip4.to_bytes(4, "big")), port))
                serve_one(kind, data, source)
            dropped = batch.flush()
            if dropped:
                counts[send_failed] += dropped
            if n < slots:
                return  # drained: a datagram arriving now wakes the loop again

    return on_readable_batched
