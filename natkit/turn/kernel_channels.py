"""Which bound channels the kernel (``stun.fast_path``) or the relay pump (``turn.pump``,
`natkit.turn.pump`) relays for the builtin engine, kept in step with the core.

Theory of operation. After every successful ChannelBind, CreatePermission or Refresh of a UDP
allocation the engine calls `sync` with its 5-tuple: each channel whose client, listener,
relayed address and peer share one family gets an entry in the table (`natkit.fastpath.relay`,
or the pump's) that
ends with the channel, the peer's permission or the allocation, whichever ends first, so a
lapse needs no action to stop the kernel on time; an entry is rewritten only when that end
moved. When a relay socket closes (`close`, with its owner: Refresh 0, expiry, shutdown) its
entries go at once, before the port can serve another allocation. `tick` (once a second)
adds what the kernel relayed to the engine's TURN counters and drops lapsed entries. The
kernel declines what it cannot do well (a CHECKSUM_PARTIAL datagram from this host, over the
MTU, padded ChannelData): those reach the engine as before, so correctness never depends on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from natkit.addr import Address, FiveTuple, Transport
from natkit.fastpath.relay import ChannelRoute
from natkit.metrics import (
    TURN_BYTES_TO_CLIENT,
    TURN_BYTES_TO_PEER,
    TURN_PACKETS_TO_CLIENT,
    TURN_PACKETS_TO_PEER,
)
from natkit.turn.allocation import ip_family
from natkit.turn.relay import Relay

__all__ = ["KernelChannels", "RouteTable"]

_WILDCARDS = ("0.0.0.0", "::")


class RouteTable(Protocol):
    """Where channel routes are relayed outside the core: `natkit.fastpath.relay.KernelRelay`
    (tc-BPF maps) or `natkit.turn.pump.Pump` (C in the worker)."""

    def install(self, route: ChannelRoute, expires_ns: int) -> bool: ...

    def remove(self, route: ChannelRoute) -> None: ...

    def drain_counts(self, routes: list[ChannelRoute]) -> tuple[int, int, int, int]: ...

    def close(self) -> None: ...


class KernelChannels:
    """The engine's side of a `RouteTable`: what it installed, per relay socket owner. The
    kernel needs a listener bound to one address; the pump (`wildcard_listeners`) knows the
    listener by its socket and also serves listeners bound to 0.0.0.0."""

    def __init__(
        self,
        kernel: RouteTable,
        relay: Relay,
        counters: list[int],
        clock: Callable[[], float],
        *,
        wildcard_listeners: bool = False,
    ) -> None:
        self.kernel = kernel
        self._wildcards = () if wildcard_listeners else _WILDCARDS
        self.relay = relay
        self.counters = counters
        self.clock = clock  # CLOCK_MONOTONIC seconds: the kernel's expiries are on it too
        self._installed: dict[FiveTuple, dict[ChannelRoute, float]] = {}

    def sync(self, five_tuple: FiveTuple) -> None:
        """Install or refresh the kernel entries of the allocation of `five_tuple`."""
        alloc = self.relay.allocations.by_five_tuple.get(five_tuple)
        client, local = five_tuple.client, five_tuple.local
        if alloc is None or five_tuple.transport is not Transport.UDP:
            return
        if local.host in self._wildcards:
            return
        family = ip_family(client.host)
        now = self.clock()
        for leg in alloc.legs():
            if ip_family(leg.relay.host) != family or ip_family(local.host) != family:
                continue
            installed = self._installed.setdefault(leg.owner, {})
            for number, channel in alloc.channels.items():
                peer = channel.peer
                if ip_family(peer.host) != family:
                    continue
                until = min(channel.expires, alloc.permissions.get(peer.host, 0.0), leg.expires)
                route = ChannelRoute(Address(*client), Address(*local), leg.relay, peer, number)
                if until <= now or installed.get(route) == until:
                    continue
                if self.kernel.install(route, int(until * 1e9)):
                    installed[route] = until

    def close(self, owner: FiveTuple) -> None:
        """The relay socket of `owner` closed: its entries go now (counted first)."""
        installed = self._installed.pop(owner, None)
        if not installed:
            return
        self._count(list(installed))
        for route in installed:
            self.kernel.remove(route)

    def tick(self) -> None:
        """Count what the kernel relayed; drop the entries whose end has passed."""
        now = self.clock()
        for owner, installed in list(self._installed.items()):
            self._count(list(installed))
            for route, until in list(installed.items()):
                if until <= now:
                    self.kernel.remove(route)
                    del installed[route]
            if not installed:
                del self._installed[owner]

    def _count(self, routes: list[ChannelRoute]) -> None:
        to_peer, peer_bytes, to_client, client_bytes = self.kernel.drain_counts(routes)
        counters = self.counters
        counters[TURN_PACKETS_TO_PEER] += to_peer
        counters[TURN_BYTES_TO_PEER] += peer_bytes
        counters[TURN_PACKETS_TO_CLIENT] += to_client
        counters[TURN_BYTES_TO_CLIENT] += client_bytes

    def installed(self) -> int:
        """Kernel entries in use (each one channel, both directions)."""
        return sum(len(routes) for routes in self._installed.values())

    def close_all(self) -> None:
        for owner in list(self._installed):
            self.close(owner)
        self.kernel.close()
