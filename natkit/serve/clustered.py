"""The builtin TURN engine as one member of a fleet (``cluster.redis``): a `TurnEngine` that
wraps `BuiltinTurn` and asks the fleet before each Allocate.

Theory of operation. Only the Allocate request ever waits on Redis. `handle` lets every other
message straight through to the engine (and the ChannelData route is the engine's own, not
wrapped at all). An authenticated Allocate on a 5-tuple without an allocation is held back:
the answer is sent later on the client's link (an empty `Transmit`, as RFC 6062 Connect is),
once `ClusterAgent.acquire` has the fleet's verdict or ``cluster.timeout`` passed. The verdict
goes into the `ClusterQuota` the relay core asks synchronously, and the Allocate is then handed
to the engine as if it had just arrived (`natkit.cluster.quota` tells the rest). A
retransmission while the verdict is pending is dropped: the client retransmits again.

Redirection (RFC 8489 §10, RFC 8656 §7.2). A node that is draining (SIGTERM) or full
(``cluster.capacity`` allocations) answers a new Allocate with 300 Try Alternate, signed, with
ALTERNATE-SERVER naming the least-loaded healthy node's address for the same transport (and
ALTERNATE-DOMAIN, its ``cluster.domain``, over TLS), or lets the engine answer as it does alone
when no node is healthy (its ``turn.alternate_server`` or 508).

Revocation. When the fleet's list names a user or credential, the authenticator refuses it
(401 on its next request, `natkit.turn.auth`) and its allocations end at once
(`end_allocations`, the hook this wrapper needs from the engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Mapping

from natkit.addr import Address, Transport, format_hostport, parse_hostport
from natkit.cluster.agent import ClusterAgent, Member, Shared
from natkit.cluster.quota import ClusterQuota
from natkit.config.model import Config
from natkit.metrics import (
    CLUSTER_MEMBERS,
    CLUSTER_ONLINE,
    TURN_BYTES_TO_CLIENT,
    TURN_BYTES_TO_PEER,
    cluster_index,
)
from natkit.net.routes import Link, Route, Transmit
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.errors import StunDecodeError
from natkit.stun.message import Message, parse_message
from natkit.turn import answers
from natkit.turn.allocation import FiveTuple
from natkit.turn.auth import AuthError, signed
from natkit.turn.builtin import BuiltinTurn

__all__ = ["ClusteredTurn", "end_allocations", "member_name", "pick_alternate"]

log = logging.getLogger("natkit.serve.cluster")

_ALLOCATE_REQUEST = b"\x00\x03"  # Allocate (0x003) request: RFC 8656 §18
_MAX_PENDING = 1024  # Allocates awaiting the fleet at once; more are dropped (clients retransmit)


def member_name(config: Config, worker: int) -> str:
    """``NODE/WORKER``: ``cluster.node_id`` (default: the host name) and the worker index."""
    return f"{config.cluster.node_id or socket.gethostname()}/{worker}"


def end_allocations(engine: BuiltinTurn, names: frozenset[str]) -> int:
    """End every allocation whose user or credential is in `names`, sockets and all; returns
    how many ended (`BuiltinTurn.end_allocations`)."""
    return engine.end_allocations(lambda a: a.user in names or a.username in names)


def pick_alternate(peers: tuple[Member, ...], own_node: str, transport: str) -> Member | None:
    """The least-loaded healthy node other than ours with an address for `transport`; of its
    members, the least loaded."""
    nodes: dict[str, list[Member]] = {}
    for m in peers:
        if m.node != own_node:
            nodes.setdefault(m.node, []).append(m)
    best: tuple[int, str, Member] | None = None
    for node, members in nodes.items():
        total = sum(m.allocations for m in members)
        capacity = max(m.capacity for m in members)
        if any(m.draining for m in members) or (capacity and total >= capacity):
            continue
        usable = [m for m in members if transport in m.addresses]
        if not usable:
            continue
        member = min(usable, key=lambda m: (m.allocations, m.member))
        if best is None or (total, node) < best[:2]:
            best = (total, node, member)
    return None if best is None else best[2]


def _addresses(config: Config) -> dict[str, str]:
    """Transport → "IP:PORT" of this node's listeners as the others name them."""
    found: dict[str, str] = {}
    for uri in config.stun.listen:
        host = config.cluster.advertise or uri.host
        if ipaddress.ip_address(host).is_unspecified:
            continue  # a wildcard listener and no cluster.advertise: not redirectable
        found.setdefault(uri.transport.value, format_hostport(host, uri.port))
    return found


class ClusteredTurn:
    """A `natkit.turn.engine.TurnEngine`: `BuiltinTurn` plus the fleet (module docstring)."""

    def __init__(self, config: Config, inner: BuiltinTurn, worker: int = 0) -> None:
        self.config, self.inner = config, inner
        self.relay = inner.relay
        cluster = config.cluster
        self.node = cluster.node_id or socket.gethostname()
        counting = self.relay.quota
        if not isinstance(counting, ClusterQuota):  # built by create_engine with ours
            raise TypeError("ClusteredTurn needs a relay built with a ClusterQuota")
        self.quota = counting
        self.agent = ClusterAgent(
            cluster, member_name(config, worker), self.quota, load=self._load,
            on_change=self._apply,
        )  # fmt: skip
        self.addresses = _addresses(config)
        self._pending: set[FiveTuple] = set()
        self._lost: set[FiveTuple] = set()  # TCP/TLS clients gone while the fleet decided
        self._tasks: set[asyncio.Task[None]] = set()
        self._bytes = (0, time.monotonic())
        self.bps = 0
        self.redirects = 0
        self.revoked_ended = 0
        self.base_users = dict(config.turn.auth.users)
        self.base_secrets = [config.turn.auth.secret] if config.turn.auth.secret else []
        self._users: Mapping[str, str] = self.base_users
        self._written: dict[str, int] = {}  # counter values already added to the metrics row

    # -- TurnEngine ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.inner.start()
        await self.agent.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.inner.close()  # every allocation ends: the quota releases reach Redis
        await self.agent.close()

    async def drain(
        self, timeout: float | None = None, elsewhere: Callable[[], int] | None = None
    ) -> None:
        self.relay.draining = True
        await self.agent.poll()  # tell the fleet at once: no one redirects here any more
        await self.inner.drain(timeout, elsewhere)

    def routes(self) -> tuple[Route, Route]:
        stun, channel_data = self.inner.routes()
        route = Route(self.handle, "TURN engine (cluster)", stun.limit, max_size=stun.max_size)
        return route, channel_data  # ChannelData never passes through here

    def connection_lost(self, source: Address, local: Address, transport: Transport) -> None:
        five_tuple = FiveTuple(source, local, transport)
        if five_tuple in self._pending:  # no allocation may be made for it any more (§7)
            self._lost.add(five_tuple)
        self.inner.connection_lost(source, local, transport)

    def sync_gauges(self) -> None:
        """The engine's gauges, and the fleet's (`natkit.metrics`: natkit_cluster_*)."""
        self.inner.sync_gauges()
        row, agent, quota = self.inner.counters, self.agent, self.quota
        row[CLUSTER_MEMBERS] = 1
        row[CLUSTER_ONLINE] = 1 if agent.online else 0
        for name, value in (
            ("local_admitted", quota.local_admitted),
            ("local_refused", quota.local_refused),
            ("redirects", self.redirects),
            ("revoked_ended", self.revoked_ended),
            ("redis_errors", agent.errors),
            ("outages", agent.outages),
        ):
            # Deltas: the row's counters outlive a worker restart (natkit.metrics), ours not.
            row[cluster_index(name)] += value - self._written.get(name, 0)
            self._written[name] = value

    @property
    def allocation_count(self) -> int:
        return self.inner.allocation_count

    # -- the request path ------------------------------------------------------------------

    def handle(
        self, data: bytes, source: Address, local: Address, transport: Transport, link: Link
    ) -> Transmit | None:
        if data[:2] != _ALLOCATE_REQUEST:
            return self.inner.handle(data, source, local, transport, link)
        try:
            msg = parse_message(data)
        except StunDecodeError:
            return self.inner.handle(data, source, local, transport, link)
        held = self._hold(msg, source, local, transport)
        if held is None:
            return self.inner.handle(data, source, local, transport, link)
        user, units, key = held
        five_tuple = FiveTuple(source, local, transport)
        # Only with a current view of the fleet: while Redis is away the last one may name a
        # node that died since (draining then falls back to the engine's own answer).
        if self.agent.online and self._full_or_draining():
            redirect = self._redirect(msg, five_tuple, key)
            if redirect is not None:
                return Transmit(redirect, source, local)
        if not units or not self.agent.online:
            return self.inner.handle(data, source, local, transport, link)  # local quotas
        if five_tuple in self._pending or len(self._pending) >= _MAX_PENDING:
            return None  # a retransmission while the fleet decides (or a flood): dropped
        self._pending.add(five_tuple)
        task = asyncio.get_running_loop().create_task(
            self._admit(data, five_tuple, user, units, link)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Transmit(b"", source, local)  # answered on the link once decided

    def _hold(
        self, msg: Message, source: Address, local: Address, transport: Transport
    ) -> tuple[str, int, bytes] | None:
        """(user, quota units, key) of an Allocate the fleet must see first, or None: the
        engine answers it alone (unauthenticated, refused, retransmitted, 437)."""
        if msg.message_class is not MessageClass.REQUEST or msg.method != Method.ALLOCATE:
            return None
        if not signed(msg):
            return None
        now = self.inner.clock()
        creds = self.relay.auth.check(msg, source.host, now)
        if isinstance(creds, AuthError):
            return None
        # A look only: `AllocationTable.live` would free an expired one, and its CloseRelay is
        # the engine's to carry out (it does, when it handles this Allocate).
        existing = self.relay.allocations.by_five_tuple.get(FiveTuple(source, local, transport))
        if existing is not None and existing.alive(now):
            return None
        # A RESERVATION-TOKEN claim takes the reservation's unit; R=1 takes two (a pair).
        units = 0 if AttrType.RESERVATION_TOKEN in msg else 2 if msg.get(AttrType.EVEN_PORT) else 1
        return creds.user, units, creds.key

    async def _admit(
        self, data: bytes, five_tuple: FiveTuple, user: str, units: int, link: Link
    ) -> None:
        try:
            code = await self.agent.acquire(user, units)
            if five_tuple in self._lost:  # the client went away meanwhile: nothing to make
                if code == 0:
                    self.agent.release(user, units)
                return
            if code == 0:
                self.quota.grant(user, units)
            elif code is not None:
                self.quota.refuse(user, code)
            source, local, transport = five_tuple
            try:
                answer = self.inner.handle(data, source, local, transport, link)
            finally:
                left = self.quota.settle(user)
                if left:
                    self.agent.release(user, left)
            if answer is not None and answer.data:
                with contextlib.suppress(OSError, RuntimeError):  # a closed stream
                    link.send(answer.data, source)
        finally:
            self._pending.discard(five_tuple)
            self._lost.discard(five_tuple)

    # -- redirection -----------------------------------------------------------------------

    def _node_allocations(self) -> int:
        own = self.inner.allocation_count
        return own + sum(m.allocations for m in self.agent.peers if m.node == self.node)

    def _full_or_draining(self) -> bool:
        capacity = self.config.cluster.capacity
        return self.relay.draining or (capacity > 0 and self._node_allocations() >= capacity)

    def _redirect(self, msg: Message, five_tuple: FiveTuple, key: bytes) -> bytes | None:
        transport = five_tuple.transport.value
        target = pick_alternate(self.agent.peers, self.node, transport)
        if target is None:
            return None
        host, port = parse_hostport(target.addresses[transport])
        attrs: list[tuple[int, object]] = [(AttrType.ALTERNATE_SERVER, Address(host, port))]
        if five_tuple.transport is Transport.TLS and target.domain:
            attrs.append((AttrType.ALTERNATE_DOMAIN, target.domain))  # RFC 8489 §14.16
        self.redirects += 1
        software = self.relay.settings.software
        return answers.error(msg, five_tuple, 300, key, attrs, software).data  # type: ignore[arg-type]

    # -- what the fleet shares ---------------------------------------------------------------

    def _load(self) -> Mapping[str, str]:
        now = time.monotonic()
        moved = self.inner.counters[TURN_BYTES_TO_PEER] + self.inner.counters[TURN_BYTES_TO_CLIENT]
        before, then = self._bytes
        if now - then >= 1.0:
            self.bps, self._bytes = int(8 * (moved - before) / (now - then)), (moved, now)
        load = {
            "node": self.node,
            "allocations": str(self.inner.allocation_count),
            "capacity": str(self.config.cluster.capacity),
            "draining": "1" if self.relay.draining else "0",
            "bps": str(self.bps),
            "domain": self.config.cluster.domain or "",
            "local_admitted": str(self.quota.local_admitted),
            "redirects": str(self.redirects),
        }
        load.update(self.addresses)
        return load

    def _apply(self, shared: Shared) -> None:
        auth = self.relay.auth
        users = {**self.base_users, **shared.users}
        secrets = [*self.base_secrets, *shared.secrets]
        if users != self._users or tuple(dict.fromkeys(secrets)) != auth.secrets:
            auth.replace(users, secrets)
            self._users = users
            log.info("cluster: now serving %d static user(s) and %d REST secret(s)",
                     len(users), len(auth.secrets))  # fmt: skip
        new = shared.revoked - auth.revoked
        auth.revoked = shared.revoked
        if new:
            ended = end_allocations(self.inner, new)
            self.revoked_ended += ended
            log.warning("cluster: revoked %s; ended %d allocation(s)", ", ".join(sorted(new)),
                        ended)  # fmt: skip
