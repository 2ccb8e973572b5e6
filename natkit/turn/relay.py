"""The built-in TURN server core, sans-IO (RFC 8656; RFC 6062 TCP relays: `natkit.turn.tcp_relay`).

Theory of operation (the shape of firezone's relay). The caller owns every socket and the clock;
`Relay` owns the state and the rules. Three entry points take bytes, the addresses they moved
between and `now`, and return a list of commands for the caller to carry out, in order:

- `handle_client(data, client, local, transport, now)`: a STUN message or ChannelData from a
  client on one of the server's listeners (`local`; over TCP each frame separately);
- `handle_peer(relay, data, peer, now)`: a datagram a relay socket received from a peer;
- `handle_timeout(now)`: call about once a second; frees expired allocations;
- and notifications: `connection_lost` (a TCP client went away: its allocation goes too,
  §7), `relay_unavailable` (the adapter could not bind an `OpenRelay` address, or had no file
  descriptor for it: `exhausted`) and `close` (shutdown: every relay is closed).

Commands: `SendToClient` (on the listener 5-tuple), `SendToPeer` (from a relay socket),
`OpenRelay` (bind a relay socket; always followed by the Allocate response that announces it —
if the bind fails, drop the rest of that batch and run `relay_unavailable(...)`'s commands
instead) and `CloseRelay` (`natkit.turn.commands`). An Allocate may open two sockets (an
EVEN-PORT pair, a dual allocation) or close and reopen one (a RESERVATION-TOKEN claim), all
before its response (`natkit.turn.allocate`). Every `OpenRelay` the core issues is matched by
exactly one `CloseRelay` when its allocation, leg or reservation ends, whatever ends it
(`AllocationTable.free`, `end_leg`, `ReservationTable.end`). Each socket has an `owner` of its
own (`Allocation.owner`): an adapter may key per-socket state, such as the reply for peer
data, by owner, and drop it on that socket's CloseRelay.

Rules enforced here: long-term auth, MD5 or SHA-256, USERHASH (`natkit.turn.auth`), the peer policy
plus relay to relay (`natkit.turn.relay_peers`, 403), quotas (486 per user, 508 in total or when
no port is free), the per-allocation limits (``turn.limits``: peers per CreatePermission,
permissions and channels per allocation, 508), lifetimes and the channel rules
(`natkit.turn.allocation`), a peer's family picking a dual allocation's relay (443 without
one), Refresh per family (§8). The Allocate rules: `natkit.turn.allocate`. Answers and their
amplification bound (3.5x for a request without MESSAGE-INTEGRITY; `_hopeless` picks the
requests not worth a challenge): `natkit.turn.answers`.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import cast

from natkit.addr import Address, Transport
from natkit.net.demux import CHANNEL_DATA, OTHER, classify
from natkit.stun.attributes import AttrValue
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.errors import StunDecodeError
from natkit.stun.framing import build_channel_data
from natkit.stun.message import Message, parse_message
from natkit.turn import answers
from natkit.turn.allocate import Allocator, family_of
from natkit.turn.allocation import (
    Allocation,
    AllocationTable,
    FiveTuple,
    PortPool,
    grant_lifetime,
    ip_family,
)
from natkit.turn.answers import AMPLIFICATION_LIMIT
from natkit.turn.auth import Authenticator, AuthError, Credentials, Sha256SignedKey, signed
from natkit.turn.commands import CloseRelay, Command, OpenRelay, SendToClient, SendToPeer
from natkit.turn.peers import PeerPolicy
from natkit.turn.relay_peers import PeerRules
from natkit.turn.settings import RelaySettings
from natkit.turn.shared_quota import LocalQuota, Quota
from natkit.turn.tcp_relay import TcpRelay

__all__ = [
    "AMPLIFICATION_LIMIT",
    "CloseRelay",
    "Command",
    "OpenRelay",
    "Relay",
    "RelaySettings",
    "SendToClient",
    "SendToPeer",
]

_CHANNEL_HEADER = struct.Struct("!HH")  # ChannelData: channel number, length (§12.4)


_Handler = Callable[[Message, FiveTuple, Credentials, float], list["Command"]]


class Relay:
    """One TURN server's allocations and rules; see the module docstring."""

    def __init__(
        self,
        settings: RelaySettings,
        auth: Authenticator,
        policy: PeerPolicy,
        rng: random.Random | None = None,
        quota: Quota | None = None,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.policy = policy
        self.rng = rng or random.SystemRandom()
        # This worker's own slice of the relay ports (`pool_ports`): no two workers ever pick
        # the same port, so a bind failure means another process holds it.
        low, high = settings.pool_ports or settings.ports
        pools = {ip: PortPool(low, high, self.rng) for ip in settings.relay_ips.values()}
        self.quota: Quota = quota or LocalQuota(settings.quota_per_user, settings.quota_total)
        self.allocations = AllocationTable(pools, settings.limits, self.quota)
        self.peers = PeerRules(
            policy, [*settings.relay_ips.values(), *settings.external_ips.values()], settings.ports
        )
        # The Allocate rules (natkit.turn.allocate); `_opening` is its batch in flight.
        self.allocator = Allocator(
            settings, self.allocations, self.quota, self.rng, self._response, self._error
        )
        self._opening = self.allocator.opening
        self.draining = False  # a graceful drain: new Allocates get `answers.drain`
        self.alternate: Address | None = None  # its ALTERNATE-SERVER (None: 508)
        self._methods: dict[int, _Handler] = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
        }
        # RFC 6062 TCP relays: their state and rules (natkit.turn.tcp_relay).
        self.tcp = TcpRelay(self.allocations, self.peers, software=settings.software,
                            rng=self.rng, limit=settings.tcp_connections)  # fmt: skip
        self._methods[Method.CONNECT] = self.tcp.connect
        self._methods[Method.CONNECTION_BIND] = self.tcp.connection_bind

    # -- entry points ----------------------------------------------------------------------

    def handle_client(
        self, data: bytes, client: Address, local: Address, transport: Transport, now: float
    ) -> list[Command]:
        if not data:
            return []
        if self._opening:
            self._opening.clear()  # relay_unavailable comes before the next datagram
        kind = classify(data)
        if kind == CHANNEL_DATA:  # the hot path
            route = self.channel_data(data, client, local, transport, now)
            return [] if route is None else [SendToPeer(*route)]
        if kind == OTHER:
            return []
        try:
            msg = parse_message(data)
        except StunDecodeError:
            return []
        if msg.legacy:
            return []  # TURN needs the magic cookie; RFC 3489 has no relay methods
        five_tuple = FiveTuple(client, local, transport)
        if msg.message_class is MessageClass.REQUEST:
            return self._request(msg, five_tuple, now)
        if msg.message_class is MessageClass.INDICATION and msg.method == Method.SEND:
            return self._send(msg, five_tuple, now)
        return []

    def handle_peer(self, relay: Address, data: bytes, peer: Address, now: float) -> list[Command]:
        out = self.peer_data(relay, data, peer, now)
        return [] if out is None else [SendToClient(*out)]

    # -- the per-packet fast paths ---------------------------------------------------------
    # What `handle_client` (ChannelData) and `handle_peer` do, without building command lists
    # or NamedTuples: a relay moves every packet through one of these, and in CPython each
    # object built per packet costs as much as the dict lookups that apply the rules. Plain
    # (host, port) tuples are accepted where an `Address` only keys a lookup (equal, same hash).

    def channel_data(
        self,
        data: bytes,
        client: tuple[str, int],
        local: Address,
        transport: Transport,
        now: float,
    ) -> tuple[Address, bytes, Address] | None:
        """A client's ChannelData (first byte 0x40-0x4F): (relay, payload, peer) to send from
        the relay socket, or None to drop it (RFC 8656 §12.6: unknown, unbound or malformed)."""
        if self._opening:
            self._opening.clear()  # as in handle_client
        alloc = self.allocations.by_five_tuple.get(cast(FiveTuple, (client, local, transport)))
        if alloc is None:
            return None
        size = len(data) - 4
        if size < 0:
            return None
        length = data[2] << 8 | data[3]
        # §12.4/§12.5: the length must fit; trailing bytes only as padding to a multiple of 4.
        if size != length and (size < length or size - length != -length % 4):
            return None
        peer = alloc.channel_peer(data[0] << 8 | data[1], now)
        if peer is None:
            return None
        if alloc.other is not None:  # a dual allocation: out of the peer's family's relay
            leg = alloc.leg(ip_family(peer.host))
            return None if leg is None else (leg.relay, bytes(data[4 : 4 + length]), peer)
        return alloc.relay, bytes(data[4 : 4 + length]), peer

    def peer_data(
        self, relay: Address, data: bytes, peer: tuple[str, int], now: float
    ) -> tuple[bytes, FiveTuple] | None:
        """A datagram from `peer` on `relay`: (frame, client 5-tuple) to send, or None."""
        alloc = self.allocations.by_relay.get(relay)
        # RFC 8656 §11.3, §12.6: without a permission for the peer's IP, drop silently.
        if alloc is None or not alloc.permitted(peer[0], now):
            return None
        channel = alloc.peer_channels.get(cast(Address, peer))
        if channel is not None and channel.expires > now:
            if alloc.five_tuple.transport is Transport.UDP:
                if len(data) > 0xFFFF:
                    return None  # cannot happen over UDP/IPv4; build_channel_data would raise
                frame = _CHANNEL_HEADER.pack(channel.number, len(data)) + data
            else:  # §12.5: over TCP ChannelData is padded to a multiple of 4 bytes.
                frame = build_channel_data(channel.number, data, pad=True)
        else:
            tid = self.rng.getrandbits(96).to_bytes(12, "big")
            attrs: list[tuple[int, AttrValue]] = [
                (AttrType.XOR_PEER_ADDRESS, Address(peer[0], peer[1])),
                (AttrType.DATA, data),
            ]
            frame = Message(Method.DATA, MessageClass.INDICATION, tid, attrs).encode()
        return frame, alloc.owner

    def handle_timeout(self, now: float) -> list[Command]:
        for pool in self.allocations.pools.values():
            pool.unblock(now)
        return list(self.allocations.sweep(now))

    def connection_lost(self, five_tuple: FiveTuple, now: float) -> list[Command]:
        """RFC 8656 §7 (TCP/TLS): the allocation lives only as long as its connection."""
        alloc = self.allocations.by_five_tuple.get(five_tuple)
        return [] if alloc is None else list(self.allocations.free(alloc))

    def close(self) -> list[Command]:
        """Shutdown: a `CloseRelay` for every allocation."""
        self._opening.clear()
        return list(self.allocations.close_all())

    def relay_unavailable(
        self, relay: Address, now: float, *, exhausted: bool = False
    ) -> list[Command]:
        """The adapter could not bind `relay`: try another port, or answer 508 (§7.2;
        `natkit.turn.allocate` says what happens to pairs, reservations and dual allocations).

        `exhausted`: the host is out of a resource (file descriptors, buffers), not this port:
        508 at once (Insufficient Capacity), and the port goes back to the pool unblocked."""
        return self.allocator.unavailable(relay, now, exhausted)

    # -- requests --------------------------------------------------------------------------

    def _request(self, msg: Message, five_tuple: FiveTuple, now: float) -> list[Command]:
        handler = self._methods.get(msg.method)
        if handler is None:
            # Binding belongs to the STUN server's handler; other methods are unknown here.
            return [] if msg.method == Method.BINDING else [self._error(msg, five_tuple, 400)]
        if not signed(msg):
            code = self._hopeless(msg, five_tuple, now)
            if code:
                return [self._error(msg, five_tuple, code)]
        creds = self.auth.check(msg, five_tuple.client.host, now)
        if isinstance(creds, AuthError):
            return [self._auth_error(msg, five_tuple, creds, now)]
        unknown = msg.unknown_required
        if unknown:  # RFC 8489 §6.3.1
            extra: list[tuple[int, AttrValue]] = [(AttrType.UNKNOWN_ATTRIBUTES, tuple(unknown))]
            return [self._error(msg, five_tuple, 420, creds.key, extra)]
        return handler(msg, five_tuple, creds, now)

    def _hopeless(self, msg: Message, five_tuple: FiveTuple, now: float) -> int:
        """The error an unsigned request gets whatever its credentials, or 0 (challenge it)."""
        method = msg.method
        if method == Method.ALLOCATE:
            return 0 if _int(msg.get(AttrType.REQUESTED_TRANSPORT)) is not None else 400
        if method == Method.CONNECTION_BIND:  # RFC 6062 §5.4: on a connection of no allocation
            return 0 if AttrType.CONNECTION_ID in msg else 400
        if (method == Method.CREATE_PERMISSION and AttrType.XOR_PEER_ADDRESS not in msg) or (
            method == Method.CHANNEL_BIND
            and not (AttrType.XOR_PEER_ADDRESS in msg and AttrType.CHANNEL_NUMBER in msg)
        ):
            return 400
        alloc = self.allocations.by_five_tuple.get(five_tuple)
        return 437 if alloc is None or not alloc.alive(now) else 0

    def _allocate(
        self, msg: Message, five_tuple: FiveTuple, creds: Credentials, now: float
    ) -> list[Command]:
        # An allocation whose lifetime is over (and not yet swept) is freed here, its
        # CloseRelay first: the new one may be given the same port.
        existing, closed = self.allocations.live(five_tuple, now)
        if existing is not None:
            if existing.transaction_id == msg.transaction_id:  # §7.2: a retransmission
                return [self.allocator.success(msg, existing, now)]
            return [self._error(msg, five_tuple, 437, creds.key)]
        if self.draining:
            software = self.settings.software
            return [*closed, answers.drain(msg, five_tuple, creds.key, self.alternate, software)]
        code = self.tcp.allocate_error(msg, five_tuple)  # RFC 6062 §5.1
        if code:
            return [*closed, self._error(msg, five_tuple, code, creds.key)]
        made = self.allocator.allocate(msg, five_tuple, creds, now)
        alloc = self.allocations.by_five_tuple.get(five_tuple)
        if alloc is not None:
            self.tcp.mark(msg, alloc)  # a TCP allocation if it asked for one
        return [*closed, *made]

    def _owned(
        self, msg: Message, five_tuple: FiveTuple, creds: Credentials, now: float
    ) -> Allocation | list[Command]:
        """The 5-tuple's live allocation, or the 437/441 answer (RFC 8656 §8, §10, §11),
        after the CloseRelay of an allocation found expired."""
        alloc, closed = self.allocations.live(five_tuple, now)
        if alloc is None:
            return [*closed, self._error(msg, five_tuple, 437, creds.key)]
        if alloc.username != creds.username:
            return [self._error(msg, five_tuple, 441, creds.key)]
        return alloc

    def _refresh(
        self, msg: Message, five_tuple: FiveTuple, creds: Credentials, now: float
    ) -> list[Command]:
        alloc = self._owned(msg, five_tuple, creds, now)
        if not isinstance(alloc, Allocation):
            return alloc
        # §8: REQUESTED-ADDRESS-FAMILY names one leg of a dual allocation (443 if it has no
        # leg of that family); without it the Refresh is for every leg.
        legs = alloc.legs()
        if AttrType.REQUESTED_ADDRESS_FAMILY in msg:
            leg = alloc.leg(family_of(msg.get(AttrType.REQUESTED_ADDRESS_FAMILY)) or 0)
            if leg is None:
                return [self._error(msg, five_tuple, 443, creds.key)]
            legs = [leg]
        requested = _int(msg.get(AttrType.LIFETIME))
        if requested == 0:  # §8: a zero lifetime deletes the allocation (or that leg) now
            table = self.allocations
            closed = [cmd for leg in legs for cmd in table.end_leg(leg)]
            response = self._response(msg, five_tuple, creds.key, [(AttrType.LIFETIME, 0)])
            return [response, *closed]
        lifetime = grant_lifetime(requested, *self._lifetimes)
        for leg in legs:
            self.allocations.refresh(leg, now + lifetime)
        return [self._response(msg, five_tuple, creds.key, [(AttrType.LIFETIME, lifetime)])]

    def _peer_error(self, alloc: Allocation, peer: AttrValue | None, port: bool = False) -> int:
        """400 malformed, 443 family mismatch (§10, §12.2), 403 refused (§9, `PeerRules`)."""
        if not isinstance(peer, Address):
            return 400
        if alloc.leg(ip_family(peer.host)) is None:  # no relay of the peer's family
            return 443
        return self.peers.error(peer, port)

    def _create_permission(
        self, msg: Message, five_tuple: FiveTuple, creds: Credentials, now: float
    ) -> list[Command]:
        alloc = self._owned(msg, five_tuple, creds, now)
        if not isinstance(alloc, Allocation):
            return alloc
        peers = [v for t, v in msg.attributes if t == AttrType.XOR_PEER_ADDRESS]
        for peer in peers or [b""]:  # none at all is a 400 too
            code = self._peer_error(alloc, peer)
            if code:  # §10: all or nothing
                return [self._error(msg, five_tuple, code, creds.key)]
        table = self.allocations
        ips = {cast(Address, peer).host for peer in peers}
        if len(peers) > self.settings.peers_per_request or not table.can_permit(alloc, ips):
            return [self._error(msg, five_tuple, 508, creds.key)]  # turn.limits: capacity
        for ip in ips:
            table.permit(alloc, ip, now)
        return [self._response(msg, five_tuple, creds.key, [])]

    def _channel_bind(
        self, msg: Message, five_tuple: FiveTuple, creds: Credentials, now: float
    ) -> list[Command]:
        alloc = self._owned(msg, five_tuple, creds, now)
        if not isinstance(alloc, Allocation):
            return alloc
        number = _int(msg.get(AttrType.CHANNEL_NUMBER))
        peer = msg.get(AttrType.XOR_PEER_ADDRESS)
        code = self._peer_error(alloc, peer, port=True)
        if number is None or not 0x4000 <= number <= 0x4FFF:
            code = 400
        if self.tcp.is_tcp(alloc.relay):
            code = 400  # RFC 6062 §6: a TCP allocation has no channels (no UDP socket to relay)
        if code:
            return [self._error(msg, five_tuple, code, creds.key)]
        assert isinstance(peer, Address) and number is not None
        if not alloc.can_bind(number, peer):  # §12.2: number or peer already bound otherwise
            return [self._error(msg, five_tuple, 400, creds.key)]
        if not self.allocations.can_bind(alloc, number, peer):
            return [self._error(msg, five_tuple, 508, creds.key)]  # turn.limits: capacity
        self.allocations.bind(alloc, number, peer, now)
        return [self._response(msg, five_tuple, creds.key, [])]

    def _send(self, msg: Message, five_tuple: FiveTuple, now: float) -> list[Command]:
        """Send indication (§11.2): no answer ever; dropped unless permitted."""
        alloc = self.allocations.by_five_tuple.get(five_tuple)
        if alloc is None or self.tcp.is_tcp(alloc.relay):  # RFC 6062: no Send on TCP relays
            return []
        peer, payload = msg.get(AttrType.XOR_PEER_ADDRESS), msg.get(AttrType.DATA)
        if not isinstance(peer, Address) or not isinstance(payload, bytes):
            return []
        leg = alloc.leg(ip_family(peer.host))  # the relay of the peer's family (dual: §7.2)
        if leg is None or leg.expires <= now or not alloc.permitted(peer.host, now):
            return []
        if not self.peers.port_allowed(peer):
            return []  # a permission to our own relay IP covers only the relay ports
        return [SendToPeer(leg.relay, payload, peer)]

    # -- responses -------------------------------------------------------------------------

    @property
    def _lifetimes(self) -> tuple[int, int]:
        return self.settings.lifetime_default, self.settings.lifetime_max

    def _response(
        self,
        msg: Message,
        five_tuple: FiveTuple,
        key: bytes | None,
        attrs: list[tuple[int, AttrValue]],
    ) -> SendToClient:
        return answers.response(msg, five_tuple, key, attrs, self.settings.software)

    def _error(
        self,
        msg: Message,
        five_tuple: FiveTuple,
        code: int,
        key: bytes | None = None,
        extra: list[tuple[int, AttrValue]] | None = None,
    ) -> SendToClient:
        return answers.error(msg, five_tuple, code, key, extra or [], self.settings.software)

    def _auth_error(
        self, msg: Message, five_tuple: FiveTuple, err: AuthError, now: float
    ) -> SendToClient:
        if not err.nonce:
            return self._error(msg, five_tuple, err.code)
        # RFC 8489 §9.2.4: REALM, a fresh NONCE, PASSWORD-ALGORITHMS; the RFC 5389 form only
        # for an MD5-only client's allocation (`answers.challenge` says why).
        ip = five_tuple.client.host
        alloc = self.allocations.by_five_tuple.get(five_tuple)
        md5_only = alloc is not None and not isinstance(alloc.key, Sha256SignedKey)
        legacy = self.auth.challenge(ip, now, legacy=True) if md5_only else None
        full = self.auth.challenge(ip, now)
        return answers.challenge(msg, five_tuple, err.code, full, legacy, self.settings.software)


def _int(value: AttrValue | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
