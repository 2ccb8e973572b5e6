"""Relay ports of one relay IP, sans-IO: which are free, taken, or blocked for a while.

Each worker has its own `PortPool` per relay IP over its own slice of ``turn.relay.ports``
(`natkit.turn.engine.worker_ports`): no two workers pick the same port, so a bind failure means
another process holds it (`block`). Picks are random (RFC 8656 §7.2 wants relayed ports hard to
guess, RFC 6056), falling back to a scan when the slice is nearly full. An EVEN-PORT pair (N
even, N+1, §7.2) comes from the same slice: both ports inside it.
"""

from __future__ import annotations

import random

__all__ = ["PortPool"]

_RANDOM_TRIES = 16  # random picks before the scan


class PortPool:
    """Free relay ports of one IP within LOW-HIGH."""

    __slots__ = ("_blocked", "_used", "high", "low", "rng")

    def __init__(self, low: int, high: int, rng: random.Random) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad relay port range {low}-{high}")
        self.low, self.high, self.rng = low, high, rng
        self._used: set[int] = set()
        self._blocked: dict[int, float] = {}  # port → until when it is not offered

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def take(self, even: bool = False) -> int | None:
        """A free port (an even one for EVEN-PORT, §7.2), marked used; None when none is left."""
        if len(self._used) >= self.size:
            return None
        for _ in range(_RANDOM_TRIES):
            port = self.rng.randint(self.low, self.high)
            if even:
                port &= ~1
            if port >= self.low and port not in self._used:
                self._used.add(port)
                return port
        start = self.rng.randint(self.low, self.high)
        for offset in range(self.size):
            port = self.low + (start - self.low + offset) % self.size
            if port not in self._used and not (even and port & 1):
                self._used.add(port)
                return port
        return None

    def take_pair(self) -> int | None:
        """An even port N with N+1 free too, both marked used (EVEN-PORT with the R bit,
        §7.2: N for the allocation, N+1 reserved); None when no such pair is left."""
        first = self.low + (self.low & 1)  # the lowest even port of the slice
        pairs = (self.high - first + 1) // 2  # even N with N+1 <= high
        if pairs <= 0 or len(self._used) + 2 > self.size:
            return None
        used = self._used
        for _ in range(_RANDOM_TRIES):
            port = first + 2 * self.rng.randrange(pairs)
            if port not in used and port + 1 not in used:
                used.update((port, port + 1))
                return port
        start = self.rng.randrange(pairs)
        for offset in range(pairs):
            port = first + 2 * ((start + offset) % pairs)
            if port not in used and port + 1 not in used:
                used.update((port, port + 1))
                return port
        return None

    def release(self, port: int) -> None:
        if port not in self._blocked:
            self._used.discard(port)

    def block(self, port: int, until: float) -> None:
        """`port` could not be bound (another process holds it): not offered before `until`."""
        self._used.add(port)
        self._blocked[port] = until

    def unblock(self, now: float) -> None:
        """Offer again the ports whose block is over (the relay's timer calls this)."""
        if self._blocked:
            for port in [p for p, until in self._blocked.items() if until <= now]:
                del self._blocked[port]
                self._used.discard(port)
