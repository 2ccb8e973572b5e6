"""Link impairments without netem: the scheduling core of the lab's user-space link forwarder.

Theory of operation. This kernel has no `tc netem`, so an impaired link (one with `delay`,
`jitter` or `reorder`) is built as two veths meeting in a small namespace of its own, where a
forwarder process (`natkit.lab.forwarder`) bridges them with AF_PACKET sockets. This module is
that forwarder's brain and never touches a socket: a `Direction` takes each frame with the time
it arrived and says when it leaves. One `Direction` per way; both use the same `LinkModel`.

Per frame, in this order:

1. ARP passes at once, never lost (the lab models the IP path; a real impaired link's neighbour
   resolution is local to its modem's LAN, and a lost ARP would add seconds of kernel retries).
2. Loss: each IP frame is dropped with probability `loss` (Bernoulli, independent).
3. Queue limit: a frame that would make more than `limit` frames (or `LIMIT_BYTES`) wait is
   dropped and counted (`queue_drops`); memory stays bounded whatever the offered load.
4. Delay: `delay` plus jitter drawn uniformly from [-jitter, +jitter] (netem's default
   distribution), never below zero.
5. Order: the link is FIFO, like a real link's queue: a frame never leaves before the one that
   arrived before it, so jitter does *not* reorder (netem's does) — a frame whose draw would
   overtake waits for its predecessor, which at high packet rates lifts the mean delay a little
   above `delay`. Reordering happens only when asked: with `reorder` (a fraction), a frame is
   held back until the next frame has left and then follows it (an adjacent swap); if no frame
   follows before its own departure time it leaves then, in order. Reordering therefore needs a
   delay and traffic, exactly as netem's `reorder` does.

Time is an argument (`now`, seconds on any monotonic clock) and randomness an injected
`random.Random`, so every rule is a unit test.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

__all__ = ["LIMIT_BYTES", "Counters", "Direction", "LinkModel", "is_arp"]

LIMIT_BYTES = 16 * 1024 * 1024
"""Bytes a direction may hold (also bounds GSO frames of up to 64 KiB, which count as one)."""

_ETH_ARP = b"\x08\x06"


def is_arp(frame: bytes, header: int = 0) -> bool:
    """An Ethernet frame (after `header` bytes) carrying ARP (type 0x0806 after the MACs)."""
    return frame[header + 12 : header + 14] == _ETH_ARP


@dataclass(frozen=True)
class LinkModel:
    """One direction's impairments, in seconds and fractions (the topology's `link` parsed)."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    """Probability 0-1 that an IP frame is dropped."""
    reorder: float = 0.0
    """Probability 0-1 that a frame is overtaken by the next one."""
    limit: int = 10000
    """Frames that may wait at once; one more is dropped (`queue_drops`)."""


@dataclass
class Counters:
    """What a direction did; the forwarder reports these (`Lab.link_stats`)."""

    received: int = 0
    forwarded: int = 0
    lost: int = 0
    queue_drops: int = 0
    reordered: int = 0
    passed: int = 0
    """ARP frames let through at once."""
    max_queue: int = 0


@dataclass
class Direction:
    """Frames of one way across the link: `offer()` each arrival, `due()` what leaves now."""

    model: LinkModel
    rng: random.Random = field(default_factory=random.Random)
    counters: Counters = field(default_factory=Counters)
    header: int = 0
    """Bytes before the Ethernet header in each frame (the forwarder's virtio-net header)."""

    def __post_init__(self) -> None:
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._last = float("-inf")  # departure time of the latest frame scheduled in order
        self._held: tuple[float, bytes] | None = None  # (own departure, frame) awaiting a follower
        self._bytes = 0
        self._now_out: list[bytes] = []

    def __len__(self) -> int:
        return len(self._heap) + (self._held is not None)

    def offer(self, frame: bytes, now: float) -> None:
        """A frame arrived at `now`: pass, drop or schedule it."""
        c = self.counters
        c.received += 1
        if is_arp(frame, self.header):
            c.passed += 1
            self._now_out.append(frame)
            return
        m = self.model
        if m.loss and self.rng.random() < m.loss:
            c.lost += 1
            return
        if len(self) >= m.limit or self._bytes + len(frame) > LIMIT_BYTES:
            c.queue_drops += 1
            return
        delay = m.delay
        if m.jitter:
            delay = max(0.0, delay + self.rng.uniform(-m.jitter, m.jitter))
        leave = max(now + delay, self._last)
        self._bytes += len(frame)
        if self._held is not None:
            held_leave, held = self._held
            self._held = None
            self._push(leave, frame)
            self._last = max(leave, held_leave)
            self._push(self._last, held)  # after the follower: same time, later sequence
            c.reordered += 1
        elif m.reorder and m.delay and self.rng.random() < m.reorder:
            self._held = (leave, frame)
        else:
            self._last = leave
            self._push(leave, frame)
        c.max_queue = max(c.max_queue, len(self))

    def _push(self, leave: float, frame: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (leave, self._seq, frame))

    def next_departure(self) -> float | None:
        """When `due()` next has something to give (None: nothing waits)."""
        if self._now_out:
            return float("-inf")
        times = [self._heap[0][0]] if self._heap else []
        if self._held is not None:
            times.append(self._held[0])
        return min(times) if times else None

    def due(self, now: float) -> list[bytes]:
        """The frames whose time has come, in departure order."""
        out, self._now_out = self._now_out, []
        if self._held is not None and self._held[0] <= now:
            # No follower came in time: it leaves in order, unswapped.
            leave, frame = self._held
            self._held = None
            self._last = max(self._last, leave)
            self._push(self._last, frame)
        heap = self._heap
        while heap and heap[0][0] <= now:
            frame = heapq.heappop(heap)[2]
            self._bytes -= len(frame)
            out.append(frame)
        self.counters.forwarded += len(out)
        return out
