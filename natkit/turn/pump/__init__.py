"""The relay pump: ChannelData of bound IPv4 UDP channels relayed by compiled code
(``relay_pump.c``) in the worker's own thread, loaded with ctypes.

Theory of operation. Python's cost per relayed datagram (a few µs of interpreter time on top of
the kernel's) is what kept the builtin engine behind coturn; the pump does the per-datagram
part in C and leaves Python one call per batch. It keeps no TURN state of its own: the engine
installs a route per bound channel (`install`, from `natkit.turn.kernel_channels`, exactly as
for the kernel fast path) that ends by itself at the end of the channel, of the peer's
permission or of the allocation, whichever comes first, and removes it before the relay
socket closes. `to_peers` relays the exact ChannelData frames of a listener's recvmmsg batch
(`natkit.net.udp` calls it first, then handles the rest); `from_peer` reads a relay socket and
relays what comes from bound peers (`natkit.turn.channel_routes` handles the rest), and
`poller` does that for every relay socket given to `watch` that is ready, through one epoll fd
the event loop watches (one Python call per round, not one per socket). Anything
the pump does not relay, the Python path decides as before, so correctness never depends on it.

The library is built by `make install` next to its source, else on first use with the C
compiler into a cache (``$NATKIT_PUMP_DIR``, else ``~/.cache/natkit/pump``); `load` says why
it cannot be had (no compiler, not Linux), and the engine then relays in Python.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path

from natkit import compiled
from natkit.fastpath.relay import ChannelRoute
from natkit.net import mmsg

__all__ = ["FALLBACK", "SOURCE", "Pump", "PumpUnavailable", "build_library", "load"]

SOURCE = Path(__file__).with_name("relay_pump.c")
_TO_PEER, _TO_CLIENT = 0, 1
_U32 = struct.Struct("=I")
_LIBRARY: ctypes.CDLL | None = None

# (listener fd, relay fd) of a route's allocation, or None when it has no UDP client here
Fds = Callable[[ChannelRoute], "tuple[int, int] | None"]


class PumpUnavailable(RuntimeError):
    """The pump cannot run here: the message says why."""


FALLBACK = "turn.pump: auto: relaying in Python (set turn.pump: off to say so): %s"
"""The one warning line where ``auto`` cannot have the pump (its argument: the reason)."""


def _compiler() -> str | None:
    found = (shutil.which(name) for name in ("cc", "gcc", "clang"))
    return os.environ.get("CC") or next((path for path in found if path), None)


def build_library(directory: Path | None = None) -> Path:
    """The compiled library: the one `make install` built next to the source, else one in the
    cache, compiled now if needed (named by the source's hash)."""
    compiler = _compiler()
    if compiler is None:
        raise PumpUnavailable("no C compiler to build it; apt-get install gcc")

    def argv(output: Path) -> list[str]:
        return [compiler, "-O2", "-shared", "-fPIC", "-o", str(output), str(SOURCE)]

    try:
        return compiled.build(SOURCE, ".so", argv, compiled.cache_dir("NATKIT_PUMP_DIR", "pump"),
                              directory)  # fmt: skip
    except compiled.CompileError as err:
        raise PumpUnavailable(
            f"compiling {SOURCE.name} with {compiler} failed ({err}); is gcc installed?"
        ) from None


def load() -> ctypes.CDLL:
    """The pump's library, built if needed; PumpUnavailable says why not."""
    global _LIBRARY
    if _LIBRARY is not None:
        return _LIBRARY
    if not sys.platform.startswith("linux") or not mmsg.available():
        raise PumpUnavailable("it needs Linux (recvmmsg/sendmmsg)")
    try:
        lib = ctypes.CDLL(str(build_library()))
    except OSError as err:
        raise PumpUnavailable(f"loading it failed: {err}") from None
    u32, i32, u64, ptr = ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p
    lib.pump_new.argtypes, lib.pump_new.restype = (u64, u32), ptr
    lib.pump_free.argtypes, lib.pump_free.restype = (ptr,), None
    lib.pump_set.argtypes = (ptr, i32, i32, u32, u32, u32, i32, u32, u32, u64)
    lib.pump_del.argtypes = (ptr, i32, i32, u32, u32, u32)
    lib.pump_counts.argtypes = (ptr, i32, i32, u32, u32, u32, ptr)
    lib.pump_dropped.argtypes, lib.pump_dropped.restype = (ptr,), u64
    lib.pump_size.argtypes, lib.pump_size.restype = (ptr,), u32
    lib.pump_epoll_fd.argtypes, lib.pump_epoll_fd.restype = (ptr,), i32
    lib.pump_watch.argtypes, lib.pump_watch.restype = (ptr, i32), i32
    lib.pump_unwatch.argtypes, lib.pump_unwatch.restype = (ptr, i32), i32
    # The two per-batch calls take no argtypes: callers pass small ints and c_void_p objects
    # made once, half the cost of a call with converters.
    lib.pump_to_peers.restype = i32
    lib.pump_from_peer.restype = i32
    lib.pump_poll.restype = i32
    _LIBRARY = lib
    return lib


def _ip(host: str) -> int:
    """An IPv4 address as the C side holds it: its network-order bytes as a native u32."""
    value: int = _U32.unpack(socket.inet_aton(host))[0]
    return value


# A route's two keys for the C table: (direction, fd in, source IP, source port, channel)
_Keys = tuple[tuple[int, int, int, int, int], tuple[int, int, int, int, int]]


class Pump:
    """One worker's route table in C (the `natkit.turn.kernel_channels` table interface:
    `install`, `remove`, `drain_counts`, `close`) and its two batch calls. `fds` finds the
    sockets of a route."""

    def __init__(self, fds: Fds, capacity: int = 1024) -> None:
        self._lib = load()
        handle = self._lib.pump_new(int.from_bytes(os.urandom(8), "big"), capacity)
        if not handle:
            raise PumpUnavailable("out of memory for its route table")
        self._handle = ctypes.c_void_p(handle)
        self._fds = fds
        self._keys: dict[ChannelRoute, _Keys] = {}
        self._seen: dict[tuple[int, int, int, int, int], tuple[int, int]] = {}
        self._counts = (ctypes.c_uint64 * 2)()
        self._dropped = 0

    # -- the table (control plane) ---------------------------------------------------------

    def install(self, route: ChannelRoute, expires_ns: int) -> bool:
        """Install (or refresh) both directions of `route` until `expires_ns`; False when the
        pump cannot take it (IPv6, a socket not found, no memory): Python relays it."""
        if ":" in route.client.host or ":" in route.peer.host or ":" in route.relay.host:
            return False
        fds = self._fds(route)
        if fds is None or self._handle.value is None:
            return False
        listener_fd, relay_fd = fds
        client_ip, client_port = _ip(route.client.host), socket.htons(route.client.port)
        peer_ip, peer_port = _ip(route.peer.host), socket.htons(route.peer.port)
        keys: _Keys = (
            (_TO_PEER, listener_fd, client_ip, client_port, route.channel),
            (_TO_CLIENT, relay_fd, peer_ip, peer_port, route.channel),  # not in its C key
        )
        old = self._keys.get(route)
        if old is not None and old != keys:
            self.remove(route)
        lib, handle = self._lib, self._handle
        if (
            lib.pump_set(handle, *keys[0], relay_fd, peer_ip, peer_port, expires_ns) != 0
            or lib.pump_set(handle, *keys[1], listener_fd, client_ip, client_port, expires_ns) != 0
        ):
            self._keys[route] = keys
            self.remove(route)
            return False
        self._keys[route] = keys
        return True

    def remove(self, route: ChannelRoute) -> None:
        keys = self._keys.pop(route, None)
        if keys is None or self._handle.value is None:
            return
        for key in keys:
            self._lib.pump_del(self._handle, *key)
            self._seen.pop(key, None)

    def drain_counts(self, routes: list[ChannelRoute]) -> tuple[int, int, int, int]:
        """(packets, bytes) to peers and (packets, bytes) to clients the pump relayed for
        `routes` since the last call."""
        totals = [0, 0, 0, 0]
        counts = self._counts
        for route in routes:
            keys = self._keys.get(route)
            if keys is None or self._handle.value is None:
                continue
            for index, key in enumerate(keys):
                if not self._lib.pump_counts(self._handle, *key, counts):
                    continue
                before = self._seen.get(key, (0, 0))
                self._seen[key] = (counts[0], counts[1])
                totals[2 * index] += max(0, counts[0] - before[0])
                totals[2 * index + 1] += max(0, counts[1] - before[1])
        return totals[0], totals[1], totals[2], totals[3]

    def drain_dropped(self) -> int:
        """Datagrams a send did not take since the last call (full buffers, ICMP errors)."""
        if self._handle.value is None:
            return 0
        total = int(self._lib.pump_dropped(self._handle))
        new, self._dropped = total - self._dropped, total
        return new

    def size(self) -> int:
        """Directions installed (two per route)."""
        return 0 if self._handle.value is None else int(self._lib.pump_size(self._handle))

    def close(self) -> None:
        if self._handle.value is not None:
            self._lib.pump_free(self._handle)
            self._handle = ctypes.c_void_p(None)
        self._keys.clear()
        self._seen.clear()

    # -- the data path ---------------------------------------------------------------------

    def to_peers(self, listener_fd: int, batch: mmsg.RecvBatch) -> Callable[[int], int]:
        """The call for a listener's batch: ``relayed = call(n)`` after ``n = batch.recv(fd)``;
        `batch.handled[i]` marks each datagram relayed."""
        call, handle = self._lib.pump_to_peers, self._handle
        msgs, handled = batch.msgs_ptr, batch.handled_ptr

        def to_peers(n: int) -> int:
            relayed: int = call(handle, listener_fd, msgs, n, handled)
            return relayed

        return to_peers

    def from_peer(self, relay_fd: int, batch: mmsg.RecvBatch) -> Callable[[], int]:
        """The call for a relay socket: ``r = call()`` reads it into `batch` and relays; ``r &
        255`` datagrams were read (0: none waiting), ``r >> 8`` relayed (marked in
        `batch.handled`); negative: an error (-errno)."""
        call, handle = self._lib.pump_from_peer, self._handle
        msgs, handled, slots = batch.msgs_ptr, batch.handled_ptr, batch.batch

        def from_peer() -> int:
            result: int = call(handle, relay_fd, msgs, slots, handled)
            return result

        return from_peer

    # -- every relay socket through one fd (pump_poll) -------------------------------------

    def epoll_fd(self) -> int:
        """The fd the event loop watches for all the relay sockets given to `watch`."""
        if self._handle.value is None:
            return -1  # closed
        return int(self._lib.pump_epoll_fd(self._handle))

    def watch(self, relay_fd: int) -> bool:
        """Serve the relay socket `relay_fd` in `poller`'s rounds; False if epoll refused it."""
        return self._handle.value is not None and self._lib.pump_watch(self._handle, relay_fd) == 0

    def unwatch(self, relay_fd: int) -> None:
        """Before the socket closes (its fd number may be reused at once)."""
        if self._handle.value is not None:
            self._lib.pump_unwatch(self._handle, relay_fd)

    def poller(
        self, batch: mmsg.RecvBatch, budget: int
    ) -> tuple[Callable[[], int], ctypes.Array[ctypes.c_int32]]:
        """``r = call()``: relays what every ready watched socket holds, at most `budget`
        recvmmsg calls; 0: none is ready; -1: the budget is spent (more may be ready); else
        ``r & 255`` datagrams were read from the socket ``fd[0]`` into `batch` and ``r >> 8``
        relayed (marked in `batch.handled`): the caller takes the rest, then calls again."""
        call, handle = self._lib.pump_poll, self._handle
        ready = (ctypes.c_int32 * 1)()
        msgs, handled, slots = batch.msgs_ptr, batch.handled_ptr, batch.batch
        ready_ptr = ctypes.c_void_p(ctypes.addressof(ready))

        def poll() -> int:
            result: int = call(handle, msgs, slots, handled, ready_ptr, budget)
            return result

        return poll, ready


def main() -> int:
    """Build the library next to its source (what make install runs; skipped with a note when
    no compiler is there: serve then builds it on first use, or relays in Python)."""
    return compiled.report("relay pump", lambda: build_library(SOURCE.parent), PumpUnavailable)
