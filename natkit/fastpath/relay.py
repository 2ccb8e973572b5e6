"""The TURN half of the kernel fast path: ChannelData relayed in tc-BPF, entries kept by the engine.

Theory of operation. For a bound channel of a UDP allocation whose client, listener, relayed
address and peer are all of one family, the builtin engine (`natkit.turn.builtin`) asks
`KernelRelay.install` for two entries in every attachment's maps (the program on each interface
has its own): client → peer, keyed by the client's 5-tuple and the channel number, and peer →
client, keyed by the peer and the relayed address. Each carries where the datagram goes, the
egress interface (the kernel's route to that address, asked over netlink) and an expiry on
CLOCK_MONOTONIC (the clock `time.monotonic` reads): the end of the channel or of the peer's
permission, whichever comes first, so the kernel stops on time by itself. A refresh installs
again with the new expiry; the allocation's end removes them (`remove`). What the kernel relayed
is counted per entry; `drain_counts` returns what is new since the last call, for the engine's
metrics. Each entry names the worker process that installed it: when a worker dies the
supervisor `purge`s its entries before their ports can serve anyone else. Everything the
program leaves alone reaches the engine as before.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from dataclasses import dataclass

from natkit.addr import Address
from natkit.fastpath import bpf

__all__ = ["ChannelRoute", "KernelRelay", "route_interface"]

log = logging.getLogger("natkit.fastpath")

_CHAN_KEY = struct.Struct("=BBHHH16s16s")  # struct chan_key (ports, channel: network order)
_PEER_KEY = struct.Struct("=B3xHH16s16s")  # struct peer_key
_ROUTE = struct.Struct("=16s16sHHHHIIQQQ")  # struct route
_RTM_GETROUTE, _RTM_NEWROUTE, _NLMSG_ERROR = 26, 24, 2
_RTA_DST, _RTA_OIF = 1, 4


def _raw(host: str) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(family, host.partition("%")[0]).ljust(16, b"\0")


def route_interface(host: str) -> int | None:
    """The ifindex the kernel routes `host` out of (RTM_GETROUTE over netlink), or None."""
    v6 = ":" in host
    family = socket.AF_INET6 if v6 else socket.AF_INET
    dst = socket.inet_pton(family, host.partition("%")[0])
    attr = struct.pack("=HH", 4 + len(dst), _RTA_DST) + dst
    rtmsg = struct.pack("=BBBBBBBBI", family, len(dst) * 8, 0, 0, 0, 0, 0, 0, 0)
    body = rtmsg + attr
    header = struct.pack("=IHHII", 16 + len(body), _RTM_GETROUTE, 1, 1, 0)  # NLM_F_REQUEST
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(1.0)
        sock.send(header + body)
        reply = sock.recv(65536)
    if len(reply) < 28:
        return None
    _, kind = struct.unpack_from("=IH", reply)
    if kind != _RTM_NEWROUTE:
        return None
    offset = 16 + 12
    while offset + 4 <= len(reply):
        size, attr_type = struct.unpack_from("=HH", reply, offset)
        if size < 4:
            break
        if attr_type == _RTA_OIF and size >= 8:
            (oif,) = struct.unpack_from("=I", reply, offset + 4)
            return int(oif)
        offset += (size + 3) & ~3
    return None


@dataclass(frozen=True)
class ChannelRoute:
    """One bound channel as the kernel sees it (all addresses of one family)."""

    client: Address
    local: Address
    """The listener address the client's datagrams arrive on (not a wildcard)."""
    relay: Address
    peer: Address
    channel: int

    def keys(self) -> tuple[bytes, bytes]:
        family = 6 if ":" in self.client.host else 4
        chan = _CHAN_KEY.pack(
            family, 0, socket.htons(self.channel), socket.htons(self.client.port),
            socket.htons(self.local.port), _raw(self.client.host), _raw(self.local.host),
        )  # fmt: skip
        peer = _PEER_KEY.pack(
            family, socket.htons(self.peer.port), socket.htons(self.relay.port),
            _raw(self.peer.host), _raw(self.relay.host),
        )  # fmt: skip
        return chan, peer


def _route(src: Address, dst: Address, channel: int, oif: int, expires_ns: int) -> bytes:
    return _ROUTE.pack(
        _raw(src.host), _raw(dst.host), socket.htons(src.port), socket.htons(dst.port),
        socket.htons(channel), 0, oif, os.getpid(), expires_ns, 0, 0,
    )  # fmt: skip


class KernelRelay:
    """The channel and peer maps of every attachment (`program_ids`), open in this process."""

    def __init__(self, program_ids: tuple[int, ...]) -> None:
        self._maps: list[tuple[bpf.Map, bpf.Map]] = []
        self._opened: list[bpf.Map] = []
        for prog_id in program_ids:
            maps = bpf.program_maps(prog_id)
            self._opened += maps.values()
            self._maps.append((maps["natkit_chans"], maps["natkit_peers"]))
        self._oif: dict[str, int | None] = {}
        self._seen: dict[bytes, tuple[int, int]] = {}  # key → (packets, bytes) last read

    def _interface(self, host: str) -> int | None:
        if host not in self._oif:
            if len(self._oif) >= 4096:
                self._oif.clear()
            try:
                self._oif[host] = route_interface(host)
            except OSError:
                self._oif[host] = None
        return self._oif[host]

    def install(self, route: ChannelRoute, expires_ns: int) -> bool:
        """Install (or refresh) both entries of `route` until `expires_ns`; False when the
        kernel cannot take it (no route out, a full map): user space keeps relaying it."""
        to_peer_oif = self._interface(route.peer.host)
        to_client_oif = self._interface(route.client.host)
        if not to_peer_oif or not to_client_oif:
            return False
        chan_key, peer_key = route.keys()
        to_peer = _route(route.relay, route.peer, route.channel, to_peer_oif, expires_ns)
        to_client = _route(route.local, route.client, route.channel, to_client_oif, expires_ns)
        try:
            for chans, peers in self._maps:
                chans.update(chan_key, to_peer)
                peers.update(peer_key, to_client)
        except bpf.BpfError as err:
            log.warning("kernel fast path: a channel left to user space: %s", err)
            self.remove(route)
            return False
        return True

    def remove(self, route: ChannelRoute) -> None:
        for key, index in zip(route.keys(), (0, 1), strict=True):
            for pair in self._maps:
                pair[index].delete(key)
            self._seen.pop(key, None)

    def drain_counts(self, routes: list[ChannelRoute]) -> tuple[int, int, int, int]:
        """(packets, bytes) to peers and (packets, bytes) to clients the kernel relayed for
        `routes` since the last call."""
        totals = [0, 0, 0, 0]
        for route in routes:
            for key, index in zip(route.keys(), (0, 1), strict=True):
                packets = octets = 0
                for pair in self._maps:
                    raw = pair[index].lookup(key)
                    if raw is not None:
                        fields = _ROUTE.unpack(raw[: _ROUTE.size])
                        packets, octets = packets + fields[9], octets + fields[10]
                before = self._seen.get(key, (0, 0))
                self._seen[key] = (packets, octets)
                totals[2 * index] += max(0, packets - before[0])
                totals[2 * index + 1] += max(0, octets - before[1])
        return totals[0], totals[1], totals[2], totals[3]

    def purge(self, owner_pid: int) -> int:
        """Remove every entry the process `owner_pid` installed (a worker that died: its relay
        sockets are gone, and their ports may serve other allocations next); how many."""
        removed = 0
        for pair in self._maps:
            for table in pair:
                for key in table.list_keys():
                    raw = table.lookup(key)
                    if raw is not None and _ROUTE.unpack(raw[: _ROUTE.size])[7] == owner_pid:
                        removed += table.delete(key)
        return removed

    def close(self) -> None:
        for opened in self._opened:
            opened.close()
        self._opened.clear()
        self._maps.clear()
