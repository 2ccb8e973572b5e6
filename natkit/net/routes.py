"""What a protocol handler declares to the listeners, and the dispatcher that picks one.

A handler is a callable ``handle(data, source, local, transport, link) -> Transmit | None``:
one datagram or stream frame in, what to send back out as data (the listener sends it: on UDP
from the socket bound to `Transmit.source`, on a stream on the same connection). `link` is how
the handler can reach that client later, for data that arrives from elsewhere (a TURN peer's
datagram): it keeps the link, and the listener never learns why.

A `Route` is a handler plus what the listener must know about its traffic: whether it counts
against ``stun.rate_limit`` (all of it, only requests, or none), the largest message it takes,
and an optional fast path for batched IPv4 UDP. `Dispatcher` maps each `natkit.net.demux` kind
to a route; `serve` registers the Binding handler and, with TURN on, the TURN engine.

Handing a stream over. A handler may turn a TCP/TLS connection into a raw byte pipe (RFC 6062
§5.4: a TURN client data connection): it calls `Link.hand_over` and returns its last answer;
the listener writes that answer, then stops framing: every later byte (also what arrived behind
the frame, in the same read) goes to `receive` as it comes, with no rate limit and no idle
timeout, and what the handler writes to the returned `Pipe` goes out as is. A handed-over
connection still holds its admission slot, pinned. A `Transmit` with empty `data` answers a
request whose answer the handler sends later on the link (RFC 6062 §5.2: Connect).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from natkit.addr import Address, Transport
from natkit.net import mmsg
from natkit.net.demux import BINDING, CHANNEL_DATA, KINDS, OTHER, STUN

__all__ = [
    "Dispatcher",
    "FastV4",
    "Handle",
    "Limit",
    "Link",
    "Pipe",
    "RelayBatchV4",
    "RelayV4",
    "Route",
    "Sender",
    "Transmit",
]

Sender = Callable[[bytes, "bytes | memoryview"], None]
"""``send(head, body)``: one datagram or frame, `head` + `body`, to the client a `Link.sender` was
made for; given apart so a batching link copies both into its buffer with no concatenation."""


@dataclass(frozen=True, slots=True)
class Transmit:
    data: bytes
    destination: Address  # where to send
    source: Address  # which local address (socket) to send from; TCP/TLS: the same connection


class Link(Protocol):
    """The way back to one client: its listener's UDP socket, or its TCP/TLS connection."""

    def send(self, data: bytes, to: Address) -> None:
        """Send `data` to the client at `to` (streams ignore `to`); drops what cannot go out."""

    def sender(self, to: Address) -> Sender:
        """What sends to the client at `to` from now on, many times: on batched IPv4 UDP the
        datagrams wait in the listener's send batch until the end of the event loop's
        iteration, one sendmmsg for all (`natkit.net.udp`); elsewhere they go out at once."""

    def pin(self) -> None:
        """The client now holds state that ends with the link (RFC 8656 §7: a TCP allocation):
        a full listener must not evict it while it moves data."""

    def hand_over(self, receive: Callable[[bytes], None], closed: Callable[[], None]) -> Pipe:
        """Streams only (the module docstring): after the answer being returned, the connection
        is a raw pipe; `receive` gets every later byte, `closed` is called once when it ends,
        whichever side ends it. UDP links raise NotImplementedError."""


class Pipe(Protocol):
    """A handed-over stream connection: raw bytes both ways, with flow control."""

    def write(self, data: bytes) -> bool:
        """Queue `data` for the client (behind the answer that handed the link over); False
        once more than the high-water mark waits to go out: feed no more before `on_drained`
        calls back."""

    def on_drained(self, callback: Callable[[], None]) -> None:
        """Call `callback` once what waits to go out is below the low-water mark (not at all
        if the connection ends first)."""

    def pause_reading(self) -> None:
        """Stop passing the client's bytes to `receive` (the other side is congested)."""

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        """Write what is queued, then close; `closed` follows."""


Handle = Callable[[bytes, Address, Address, Transport, Link], "Transmit | None"]
FastV4 = Callable[[bytes, int, int, Address], "bytes | None"]
"""Batched IPv4 UDP: (data, source IP as int, source port, local) → the answer, or None to take
`Route.handle`. For the one message worth a shortcut (a plain Binding request)."""


RelayV4 = Callable[[bytes, int, int], bool]
"""Batched IPv4 UDP: (data, source IP as int, source port) → whether the route took the
datagram (relayed it on: it is never answered); False sends it to `Route.handle`. For media in
bulk (TURN ChannelData), without the text address and the call layers of `handle`."""


RelayBatchV4 = Callable[[int], int]
"""Batched IPv4 UDP: (datagrams in the listener's `RecvBatch`) → how many the route relayed
itself, each marked in the batch's `handled`; the rest take the usual path. For compiled code
that relays a whole batch in one call (`natkit.turn.pump`)."""


class Limit(enum.Enum):
    """Which of a route's messages count against the per-source ``stun.rate_limit``."""

    ALL = 1
    REQUESTS = 2  # requests only: indications and ChannelData carry media at media rates
    NONE = 0


@dataclass(frozen=True, slots=True)
class Route:
    handle: Handle
    name: str  # for logs: "binding handler", "TURN engine"
    limit: Limit = Limit.ALL
    max_size: int = 0
    """Largest datagram or frame it takes (0: the listener's default, for STUN requests)."""
    fast_v4: FastV4 | None = None
    relay_v4: Callable[[Address], RelayV4] | None = None
    """Makes the `RelayV4` of the listener socket bound to the given local address."""
    relay_batch_v4: Callable[[int, mmsg.RecvBatch], RelayBatchV4 | None] | None = None
    """Makes the `RelayBatchV4` of a listener socket (its fd, its batch), or None."""
    counted: bool = False
    """Its answers are counted in ``natkit_stun_requests_total`` (the Binding handler's)."""


@dataclass(frozen=True, slots=True)
class Dispatcher:
    """The routes of one listener, by kind. Without a `stun` route the Binding handler takes
    every STUN message (and answers what it cannot serve); without `channel_data` ChannelData
    is dropped (UDP) or ends the connection (streams); OTHER is never routed."""

    binding: Route
    stun: Route | None = None
    channel_data: Route | None = None
    on_close: Callable[[Address, Address, Transport], None] | None = None
    """A TCP/TLS connection (client, local, transport) ended."""
    by_kind: tuple[Route | None, ...] = field(init=False)

    def __post_init__(self) -> None:
        table: list[Route | None] = [None] * len(KINDS)
        table[BINDING] = self.binding
        table[STUN] = self.stun or self.binding
        table[CHANNEL_DATA] = self.channel_data
        table[OTHER] = None
        object.__setattr__(self, "by_kind", tuple(table))

    def routes(self) -> list[Route]:
        return [r for r in (self.binding, self.stun, self.channel_data) if r is not None]

    def max_size(self, default: int) -> int:
        """The largest message any route takes; `default` for routes that use the default."""
        return max(r.max_size or default for r in self.routes())
