"""Which connections a server admits, sans-IO: per-source and global caps, idle eviction.

Theory of operation. Every accepted TCP connection asks `ConnectionTable.admit` for a slot. A
connection is first READING (its request head and body have not fully arrived), then SERVING
(routed; a long-poll GET stays here for up to `poll_timeout`), then it leaves the table
(`release`) while its answer is flushed. The decision is data, for the asyncio shell to carry out:

- a source that already holds `max_per_source` slots is refused (429): one address cannot hold
  the service, however many connections it opens;
- when all `max_connections` slots are taken, the oldest READING connection is evicted for the
  newcomer: an idle, unread connection is the cheapest thing to give up and the likeliest to be
  an attacker's (a legitimate request arrives within milliseconds of its connect);
- only when every slot is SERVING (real requests in progress) is the newcomer refused (503).

For the rendezvous (`natkit.signal.http`) a refusal is still an HTTP answer: the shell writes it
and drains what the client sends, because closing a socket with unread input makes the kernel
send a reset that destroys the answer. The STUN server's TCP/TLS listeners use the same table
(`natkit.net.stream`): READING there means idle or mid-frame, and the `busy` predicate of
`admit` keeps connections that relay for a TURN allocation. Shared by both services, so it lives
below them (the layering in DESIGN.md: no arrow points up or sideways).

IPv6 sources are keyed by their /64, as in `natkit.net.udp`: one host commonly owns a whole
/64, so a per-/128 cap would be no cap at all.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["Admission", "ConnectionTable", "LogLimiter", "Phase", "source_key"]


class Phase(enum.Enum):
    READING = "reading"
    SERVING = "serving"


@dataclass(frozen=True, slots=True)
class Admission:
    """`admit`'s verdict: `status` 0 means admitted (after closing `evict`, if any)."""

    status: int = 0
    reason: str = ""
    evict: Hashable | None = None


class ConnectionTable:
    """The live connections by id, oldest first, with a count per source."""

    def __init__(self, max_connections: int = 256, max_per_source: int = 32) -> None:
        if max_connections < 1 or max_per_source < 1:
            raise ValueError("max_connections and max_per_source must be >= 1")
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        # id -> [source, phase]; dicts keep insertion order, so the first READING one is oldest.
        self._conns: dict[Hashable, tuple[str, Phase]] = {}
        self._per_source: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def held(self, source: str) -> int:
        return self._per_source.get(source, 0)

    def admit(
        self, conn: Hashable, source: str, busy: Callable[[Hashable], bool] | None = None
    ) -> Admission:
        """Give `conn` (from `source`) a slot, possibly by evicting an idle one, or refuse it.

        `busy`, if given, is asked about each READING candidate before it is evicted: the STUN
        server keeps a connection that relays for a TURN allocation (`natkit.net.stream`)."""
        if self.held(source) >= self.max_per_source:
            return Admission(429, "too many connections from this address")
        evict = None
        if len(self._conns) >= self.max_connections:
            evict = next(
                (
                    c
                    for c, (_, ph) in self._conns.items()
                    if ph is Phase.READING and (busy is None or not busy(c))
                ),
                None,
            )
            if evict is None:
                return Admission(503, "server busy; retry later")
            self.release(evict)
        self._conns[conn] = (source, Phase.READING)
        self._per_source[source] = self.held(source) + 1
        return Admission(evict=evict)

    def serving(self, conn: Hashable) -> None:
        """`conn`'s request has fully arrived: it is no longer evictable."""
        entry = self._conns.get(conn)
        if entry is not None:
            self._conns[conn] = (entry[0], Phase.SERVING)

    def release(self, conn: Hashable) -> None:
        """Free `conn`'s slot; a connection already evicted or released is ignored."""
        entry = self._conns.pop(conn, None)
        if entry is not None:
            left = self._per_source[entry[0]] - 1
            if left:
                self._per_source[entry[0]] = left
            else:
                del self._per_source[entry[0]]


def source_key(peername: object) -> str:
    """The address a cap counts against: the IPv4 address, or the /64 of an IPv6 one."""
    host = peername[0] if isinstance(peername, tuple) and peername else peername
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LogLimiter:
    """At most one log line per key every `interval` seconds, saying how many were folded in.

    Refusals come in floods; one line per refused connection would let an attacker fill the disk.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._log = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def warning(self, key: str, message: str, now: float) -> bool:
        """Log `message` unless `key` was logged less than `interval` ago; True when logged."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._folded[key] = self._folded.get(key, 0) + 1
            return False
        folded = self._folded.pop(key, 0)
        suffix = (
            f" (and {folded} more in the last {now - last:.0f} s)"
            if folded and last is not None
            else ""
        )
        self._log.warning("%s%s", message, suffix)
        self._last[key] = now
        return True
