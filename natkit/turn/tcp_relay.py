"""RFC 6062 TCP relays, sans-IO: TCP allocations, Connect, ConnectionBind, ConnectionAttempt.

Theory of operation. A TCP allocation is an ordinary `Allocation` of the table (quota, lifetime,
permissions, its 5-tuple and relay indexes, `free`) that `Relay` made for an Allocate with
REQUESTED-TRANSPORT 6 over TCP or TLS and `mark`ed here; its relayed transport address is a
listening TCP socket instead of a UDP one (the adapter asks `is_tcp` when it carries out the
`OpenRelay`). Each TCP connection between the relay and a peer is a `TcpConnection` named by a
random 32-bit CONNECTION-ID, in one of three states:

    Connect (§5.2) ──> CONNECTING ──connected──> PENDING ──ConnectionBind (§5.4)──> BOUND
    peer connects to the relayed address (§5.3) ───────────^        │ 30 s: dropped
                                     447 on failure or timeout ──┘ (either side closing: dropped)

BOUND joins the peer data connection to a client data connection: a new TCP/TLS connection
of the client that sent ConnectionBind, which from then on is a raw byte pipe
(`natkit.net.routes.Link.hand_over`). The bytes never pass through here.

The caller's duties. The request handlers (`connect`, `connection_bind`, registered in
`Relay`'s method table) answer through `Relay` like every request, and leave what the adapter
must do in `outbox` (`Dial`, `Splice`, `Drop`): drain it after every client request (`Splice`
needs that request's link). The adapter reports what happens on its sockets (`connected`,
`failed`, `incoming`, `closed`, `released` when a TCP allocation's `CloseRelay` comes) and
calls `tick` about once a second for the deadlines; each returns commands (`SendToClient` for
the control connection, `Drop`) to carry out in order. Every connection leaves the table by
exactly one `Drop`, whatever ends it (a failed dial, either side closing, a deadline, the end
of its allocation, shutdown): the adapter frees a connection's sockets on its `Drop` only.

Rules (RFC 6062): §5.1 a TCP allocation only over TCP/TLS, never with DONT-FRAGMENT,
EVEN-PORT, RESERVATION-TOKEN (nor ADDITIONAL-ADDRESS-FAMILY: dual allocations are UDP ones),
400; §5.2 Connect: 437 without a TCP allocation on this 5-tuple (441 another user's), 400
without a valid XOR-PEER-ADDRESS, 443 another family, 403 the peer policy (relay to relay as
for UDP, `natkit.turn.relay_peers`: a relay port of ours), 446 while a connection to the same
peer is connecting, pending or bound, 508 past ``turn.limits.tcp_connections_per_allocation``,
then the dial from the relayed address, 447 when it fails or `connect_timeout` passes (at least
30 s, §5.2); no permission is needed to connect out, none is installed; §5.3 an incoming
connection only from a peer IP with a permission (else closed at once, also past the limit or
when the peer already has a connection), announced by a ConnectionAttempt indication on the
control connection; §5.2/§5.3 unbound connections are dropped `bind_timeout` (30 s) after they
were established; §5.4 ConnectionBind only on a TCP/TLS connection without an allocation, with
the CONNECTION-ID of a pending connection (else 400), by the allocation's user (else 441);
§5.5 the allocation ending (expiry, Refresh 0, its control connection lost) drops all of its
connections. Data a peer sends before the bind is buffered by the adapter up to
`PENDING_LIMIT`, then the adapter stops reading it: the kernel's receive window closes
(§5.3: "adjusts its advertised TCP receive window").
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from typing import NamedTuple

from natkit.addr import Address, FiveTuple, Transport
from natkit.stun.attributes import AttrValue
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.message import Message
from natkit.turn import answers
from natkit.turn.allocation import Allocation, AllocationTable
from natkit.turn.auth import Credentials
from natkit.turn.commands import Command, SendToClient
from natkit.turn.relay_peers import PeerRules

__all__ = [
    "BIND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "DEFAULT_TCP_CONNECTIONS",
    "PENDING_LIMIT",
    "TCP_PROTOCOL",
    "Answer",
    "Dial",
    "Drop",
    "Splice",
    "State",
    "TcpCommand",
    "TcpConnection",
    "TcpRelay",
]

TCP_PROTOCOL = 6  # REQUESTED-TRANSPORT value for TCP (RFC 6062 §6.2)
CONNECT_TIMEOUT = 30.0  # §5.2: "The timeout value MUST be at least 30 seconds."
BIND_TIMEOUT = 30.0  # §5.2, §5.3: no ConnectionBind within 30 s closes the peer connection
PENDING_LIMIT = 1 << 16  # peer bytes buffered before the bind; then the peer is not read
DEFAULT_TCP_CONNECTIONS = 32  # ``turn.limits.tcp_connections_per_allocation``
_NOT_FOR_TCP = (
    AttrType.DONT_FRAGMENT,
    AttrType.EVEN_PORT,
    AttrType.RESERVATION_TOKEN,
    AttrType.ADDITIONAL_ADDRESS_FAMILY,
)


class State(enum.Enum):
    CONNECTING = 1  # dialling the peer for a Connect (§5.2)
    PENDING = 2  # connected, waiting for its ConnectionBind (§5.2, §5.3)
    BOUND = 3  # joined to a client data connection (§5.4)


@dataclass(slots=True, eq=False)
class TcpConnection:
    cid: int
    alloc: Allocation
    peer: Address
    state: State
    deadline: float
    """CONNECTING: when the dial fails (447); PENDING: when it is dropped unbound; BOUND: inf."""
    request: Message | None = None
    """The Connect being answered (CONNECTING only)."""
    key: bytes | None = None
    """The key that signs its answer (the Connect's credentials)."""
    client: FiveTuple | None = None
    """The client data connection (BOUND only)."""


class Answer(NamedTuple):
    """The answer to a Connect, sent later (success or 447) on the control connection;
    `request` is the Connect itself (what a refusal is explained from)."""

    reply: SendToClient
    request: bytes


class Dial(NamedTuple):
    """Connect from `relay` (the relayed address, beside its listening socket) to `peer`; report
    `connected` or `failed`. A `Drop` of `cid` cancels it."""

    cid: int
    relay: Address
    peer: Address


class Splice(NamedTuple):
    """Hand the link of the request just answered over (`Link.hand_over`) and join it to the
    peer data connection `cid`, with the peer bytes buffered so far first."""

    cid: int


class Drop(NamedTuple):
    """Close everything of connection `cid`: the dial, the peer data connection, the client data
    connection bound to it."""

    cid: int


TcpCommand = SendToClient | Answer | Dial | Splice | Drop


class TcpRelay:
    """The TCP connections of one relay's TCP allocations; see the module docstring."""

    def __init__(
        self,
        table: AllocationTable,
        peers: PeerRules,
        *,
        software: str,
        rng: random.Random,
        limit: int = DEFAULT_TCP_CONNECTIONS,
    ) -> None:
        self.table = table
        self.peers = peers
        self.software = software
        self.rng = rng
        self.limit = limit
        """Connections per TCP allocation, in every state (``turn.limits``)."""
        self.connect_timeout = CONNECT_TIMEOUT
        self.bind_timeout = BIND_TIMEOUT
        self.outbox: list[TcpCommand] = []
        """What the request handlers left for the adapter (drain it after every request)."""
        self.connections: dict[int, TcpConnection] = {}
        self._by_alloc: dict[Allocation, dict[Address, TcpConnection]] = {}
        self._relays: dict[Address, Allocation] = {}  # listening relayed address → allocation
        self._waiting: dict[int, TcpConnection] = {}  # CONNECTING or PENDING: have a deadline

    # -- Allocate (§5.1) -------------------------------------------------------------------

    def allocate_error(self, msg: Message, five_tuple: FiveTuple) -> int:
        """The §5.1 error of an Allocate asking for a TCP relay, or 0 (any other Allocate too)."""
        if msg.get(AttrType.REQUESTED_TRANSPORT) != TCP_PROTOCOL:
            return 0
        if five_tuple.transport is Transport.UDP:
            return 400  # §5.1: "If the client connection transport is not TCP or TLS"
        return 400 if any(attr in msg for attr in _NOT_FOR_TCP) else 0

    def mark(self, msg: Message, alloc: Allocation) -> None:
        """`alloc` was just made for `msg`: a TCP allocation if it asked for one."""
        if msg.get(AttrType.REQUESTED_TRANSPORT) == TCP_PROTOCOL:
            self._by_alloc[alloc] = {}

    def is_tcp(self, relay: Address) -> bool:
        """Whether the `OpenRelay` of `relay` is a TCP allocation's (a listening socket)."""
        return self.table.by_relay.get(relay) in self._by_alloc

    def listening(self, relay: Address) -> None:
        """The adapter listens on `relay` now (its `released` will come with the CloseRelay)."""
        alloc = self.table.by_relay.get(relay)
        if alloc is not None:
            self._relays[relay] = alloc

    # -- requests --------------------------------------------------------------------------

    def connect(
        self, msg: Message, five_tuple: FiveTuple, creds: Credentials, now: float
    ) -> list[Command]:
        """§5.2: checks, then a `Dial`; the answer comes with `connected` or `failed`."""
        alloc, closed = self.table.live(five_tuple, now)
        conns = None if alloc is None else self._by_alloc.get(alloc)
        if alloc is None or conns is None:  # no allocation, or a UDP one
            return [*closed, self._error(msg, five_tuple, 437, creds.key)]
        if alloc.username != creds.username:
            return [self._error(msg, five_tuple, 441, creds.key)]
        code = self._peer_error(alloc, msg.get(AttrType.XOR_PEER_ADDRESS), conns)
        if code:
            return [self._error(msg, five_tuple, code, creds.key)]
        peer = msg.get(AttrType.XOR_PEER_ADDRESS)
        assert isinstance(peer, Address)
        conn = self._add(alloc, peer, State.CONNECTING, now + self.connect_timeout)
        conn.request, conn.key = msg, creds.key
        self.outbox.append(Dial(conn.cid, alloc.relay, peer))
        return []

    def _peer_error(
        self, alloc: Allocation, peer: AttrValue | None, conns: dict[Address, TcpConnection]
    ) -> int:
        if not isinstance(peer, Address) or peer.port == 0:
            return 400
        if peer.family != alloc.family:
            return 443
        code = self.peers.error(peer, port=True)  # a transport address: relay ports only
        if code:
            return code
        if peer in conns:
            return 446
        return 508 if len(conns) >= self.limit else 0

    def connection_bind(
        self, msg: Message, five_tuple: FiveTuple, creds: Credentials, now: float
    ) -> list[Command]:
        """§5.4: the connection it arrived on becomes the client data connection (`Splice`)."""
        cid = msg.get(AttrType.CONNECTION_ID)
        conn = self.connections.get(cid) if isinstance(cid, int) else None
        if (
            five_tuple.transport is Transport.UDP
            or five_tuple in self.table.by_five_tuple  # a control connection stays one
            or conn is None
            or conn.state is not State.PENDING
            or conn.alloc.expires <= now
        ):
            return [self._error(msg, five_tuple, 400, creds.key)]
        if conn.alloc.username != creds.username:
            return [self._error(msg, five_tuple, 441, creds.key)]
        conn.state, conn.deadline, conn.client = State.BOUND, math.inf, five_tuple
        del self._waiting[conn.cid]
        self.outbox.append(Splice(conn.cid))
        return [answers.response(msg, five_tuple, creds.key, [], self.software)]

    # -- what the adapter reports ----------------------------------------------------------

    def connected(self, cid: int, now: float) -> list[TcpCommand]:
        """The dial of `cid` succeeded: the Connect success with its CONNECTION-ID (§5.2)."""
        conn = self.connections.get(cid)
        if conn is None or conn.state is not State.CONNECTING or conn.request is None:
            return [Drop(cid)]
        conn.state, conn.deadline = State.PENDING, now + self.bind_timeout
        msg, conn.request = conn.request, None
        attrs: list[tuple[int, AttrValue]] = [(AttrType.CONNECTION_ID, cid)]
        reply = answers.response(msg, conn.alloc.five_tuple, conn.key, attrs, self.software)
        return [Answer(reply, msg.raw)]

    def failed(self, cid: int) -> list[TcpCommand]:
        """The dial of `cid` failed: 447 (§5.2)."""
        conn = self.connections.get(cid)
        if conn is None:
            return [Drop(cid)]
        return self._failed(conn)

    def incoming(
        self, relay: Address, peer: Address, now: float
    ) -> tuple[int, list[TcpCommand]] | None:
        """A peer connected to the relayed address `relay` (§5.3): its CONNECTION-ID and the
        ConnectionAttempt to send, or None to close it at once."""
        alloc = self._relays.get(relay)
        conns = None if alloc is None else self._by_alloc.get(alloc)
        if alloc is None or conns is None or alloc.freed or alloc.expires <= now:
            return None
        if not alloc.permitted(peer.host, now) or peer in conns or len(conns) >= self.limit:
            return None
        conn = self._add(alloc, peer, State.PENDING, now + self.bind_timeout)
        tid = self.rng.getrandbits(96).to_bytes(12, "big")
        attrs: list[tuple[int, AttrValue]] = [
            (AttrType.CONNECTION_ID, conn.cid),
            (AttrType.XOR_PEER_ADDRESS, peer),
        ]
        indication = Message(Method.CONNECTION_ATTEMPT, MessageClass.INDICATION, tid, attrs)
        return conn.cid, [SendToClient(indication.encode(), alloc.five_tuple)]

    def closed(self, cid: int) -> list[TcpCommand]:
        """A side of `cid` (peer or client data connection) closed: §5.5, the other goes too."""
        conn = self.connections.get(cid)
        return [] if conn is None else self._remove(conn)

    def released(self, relay: Address) -> list[TcpCommand]:
        """The allocation of `relay` ended (its `CloseRelay`): every connection goes (§5.5)."""
        alloc = self._relays.pop(relay, None)
        conns = None if alloc is None else self._by_alloc.pop(alloc, None)
        return [] if conns is None else self._drop_all(conns)

    def tick(self, now: float) -> list[TcpCommand]:
        """Deadlines: a dial taking longer than `connect_timeout` fails (447), a connection
        unbound after `bind_timeout` is dropped; marks of allocations freed before they ever
        listened (their relay could not be bound) are forgotten."""
        out: list[TcpCommand] = []
        for conn in [c for c in self._waiting.values() if c.deadline <= now]:
            out += self._failed(conn) if conn.state is State.CONNECTING else self._remove(conn)
        for alloc in [a for a in self._by_alloc if a.freed and a.relay not in self._relays]:
            out += self._drop_all(self._by_alloc.pop(alloc))
        return out

    def close(self) -> list[TcpCommand]:
        """Shutdown: a `Drop` for every connection left."""
        self._relays.clear()
        return [cmd for conns in self._by_alloc.values() for cmd in self._drop_all(conns)]

    # -- the table -------------------------------------------------------------------------

    def _add(
        self, alloc: Allocation, peer: Address, state: State, deadline: float
    ) -> TcpConnection:
        cid = self.rng.getrandbits(32)
        while not cid or cid in self.connections:
            cid = self.rng.getrandbits(32)
        conn = TcpConnection(cid, alloc, peer, state, deadline)
        self.connections[cid] = conn
        self._waiting[cid] = conn
        self._by_alloc[alloc][peer] = conn
        return conn

    def _remove(self, conn: TcpConnection) -> list[TcpCommand]:
        if self.connections.pop(conn.cid, None) is None:
            return []
        self._waiting.pop(conn.cid, None)
        conns = self._by_alloc.get(conn.alloc)
        if conns is not None and conns.get(conn.peer) is conn:
            del conns[conn.peer]
        return [Drop(conn.cid)]

    def _drop_all(self, conns: dict[Address, TcpConnection]) -> list[TcpCommand]:
        return [cmd for conn in list(conns.values()) for cmd in self._remove(conn)]

    def _failed(self, conn: TcpConnection) -> list[TcpCommand]:
        msg, key = conn.request, conn.key
        out = self._remove(conn)
        if msg is not None:
            out.insert(0, Answer(self._error(msg, conn.alloc.five_tuple, 447, key), msg.raw))
        return out

    def _error(self, msg: Message, to: FiveTuple, code: int, key: bytes | None) -> SendToClient:
        return answers.error(msg, to, code, key, [], self.software)
