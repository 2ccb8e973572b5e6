"""Which bound channels the kernel relays for the builtin engine (``stun.fast_path``), kept in step
with the core.

Theory of operation. After every successful ChannelBind, CreatePermission or Refresh of a UDP
allocation the engine calls `sync` with its 5-tuple: each channel whose client, listener,
relayed address and peer share one family gets a kernel entry (`natkit.fastpath.relay`) that
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

from natkit.addr import Address, FiveTuple, Transport
from natkit.fastpath.relay import ChannelRoute, KernelRelay
from natkit.metrics import (
    TURN_BYTES_TO_CLIENT,
    TURN_BYTES_TO_PEER,
    TURN_PACKETS_TO_CLIENT,
    TURN_PACKETS_TO_PEER,
)
from natkit.turn.allocation import ip_family
from natkit.turn.relay import Relay

__all__ = ["KernelChannels"]

_WILDCARDS = ("0.0.0.0", "::")


class KernelChannels:
    """The engine's side of the kernel relay: what it installed, per relay socket owner."""

    def __init__(
        self, kernel: KernelRelay, relay: Relay, counters: list[int], clock: Callable[[], float]
    ) -> None:
        self.kernel = kernel
        self.relay = relay
        self.counters = counters
        self.clock = clock  # CLOCK_MONOTONIC seconds: the kernel's expiries are on it too
        self._installed: dict[FiveTuple, dict[ChannelRoute, float]] = {}

    def sync(self, five_tuple: FiveTuple) -> None:
        """Install or refresh the kernel entries of the allocation of `five_tuple`."""
        alloc = self.relay.allocations.by_five_tuple.get(five_tuple)
        client, local = five_tuple.client, five_tuple.local
        if alloc is None or five_tuple.transport is not Transport.UDP or local.host in _WILDCARDS:
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
