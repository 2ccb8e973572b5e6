"""TURN allocation quotas (``turn.quota.per_user``, ``turn.quota.total``), exact server-wide.

Theory of operation. SO_REUSEPORT spreads a user's 5-tuples over the workers, so a quota each
worker counted alone would grant up to `workers` times the limit (issue 12 #2). The supervisor
therefore creates one `SharedQuota` in anonymous shared memory (like the metrics array,
`natkit.metrics.SharedCounters`) and hands it to every worker it spawns; each worker's relay
asks it once per Allocate and once per allocation end, never per packet.

Layout: a fixed-size open-addressing hash table of user slots (a 64-bit hash of the user name →
one allocation count per worker), plus one total per worker, under one process-shared lock. The
counts are kept per worker so that the supervisor can zero a dead worker's share when it
respawns it (`release_worker`): a crashed worker's allocations died with its sockets, and must
not hold quota forever. A slot whose counts all reach zero becomes a tombstone, reused by the
next new user, so the table holds only users with live allocations; when it is full anyway, an
Allocate gets 508 (Insufficient Capacity) and a log line says why.

`LocalQuota` is the same interface for a relay without a supervisor (tests, `natkit turn check`).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import multiprocessing
from typing import Any, Protocol

__all__ = ["LocalQuota", "Quota", "QuotaView", "SharedQuota", "table_slots"]

log = logging.getLogger("natkit.turn.quota")

_EMPTY, _TOMBSTONE = 0, 1
_MAX_SLOTS = 1 << 16
_LOCK_TIMEOUT = 1.0  # seconds: a worker killed while holding the lock must not wedge the rest


class Quota(Protocol):
    def acquire(self, user: str) -> int:
        """Count one more allocation for `user`: 0, or the error code that refuses it."""

    def release(self, user: str) -> None:
        """One allocation of `user` ended."""


class LocalQuota:
    """Quotas of one relay alone (no workers to share them with)."""

    def __init__(self, per_user: int, total: int) -> None:
        self.per_user, self.total = per_user, total
        self.counts: dict[str, int] = {}
        self.active = 0

    def acquire(self, user: str) -> int:
        if self.counts.get(user, 0) >= self.per_user:
            return 486
        if self.active >= self.total:
            return 508
        self.counts[user] = self.counts.get(user, 0) + 1
        self.active += 1
        return 0

    def release(self, user: str) -> None:
        count = self.counts.get(user, 0) - 1
        if count > 0:
            self.counts[user] = count
        else:
            self.counts.pop(user, None)
        self.active = max(0, self.active - 1)


def table_slots(total: int) -> int:
    """Slots for `turn.quota.total` allocations: twice as many (short probes), bounded."""
    slots = 64
    while slots < 2 * total and slots < _MAX_SLOTS:
        slots *= 2
    return slots


def _user_hash(user: str) -> int:
    value = int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "big")
    return value if value > _TOMBSTONE else value + 2  # 0 and 1 mark empty and free slots


class SharedQuota:
    """The shared table (created by the supervisor before it spawns workers; picklable into a
    spawned worker, which takes its `view`)."""

    def __init__(self, workers: int, slots: int, per_user: int, total: int) -> None:
        self.workers, self.slots = workers, slots
        self.per_user, self.total = per_user, total
        self.keys: Any = multiprocessing.RawArray(ctypes.c_uint64, slots)
        self.counts: Any = multiprocessing.RawArray(ctypes.c_int32, slots * workers)
        self.totals: Any = multiprocessing.RawArray(ctypes.c_int64, workers)
        self.lock: Any = multiprocessing.get_context("spawn").Lock()

    def view(self, worker: int) -> QuotaView:
        return QuotaView(self, worker)

    def active(self) -> int:
        """Allocations counted server-wide (every worker's share)."""
        return int(sum(self.totals))

    def user_count(self, slot: int) -> int:
        base = slot * self.workers
        return int(sum(self.counts[base : base + self.workers]))

    def find(self, key: int, insert: bool) -> int | None:
        """The slot of `key` (call with the lock held); with `insert`, a new one if absent."""
        free: int | None = None
        start = key % self.slots
        for step in range(self.slots):
            slot = (start + step) % self.slots
            found = self.keys[slot]
            if found == key:
                return slot
            if found == _TOMBSTONE and free is None:
                free = slot
            elif found == _EMPTY:
                free = slot if free is None else free
                break
        if insert and free is not None:
            self.keys[free] = key
            self.counts[free * self.workers : (free + 1) * self.workers] = [0] * self.workers
            return free
        return None

    def _forget_if_unused(self, slot: int) -> None:
        if self.user_count(slot) <= 0:
            self.keys[slot] = _TOMBSTONE

    def release_worker(self, worker: int) -> int:
        """Zero `worker`'s share (it died, and its allocations with it); returns how many
        allocations that freed. Called by the supervisor once `worker` has exited."""
        if not self.lock.acquire(timeout=_LOCK_TIMEOUT):
            # Held far beyond any critical section (microseconds): by the worker that just died,
            # which never will release it. A multiprocessing Lock may be released by any
            # process; the dead worker's half-done update only touched its own column, zeroed
            # below.
            log.warning("worker %d died holding the TURN quota lock: released", worker)
            self.lock.release()
            if not self.lock.acquire(timeout=_LOCK_TIMEOUT):
                log.error("TURN quota lock still held after worker %d died", worker)
                return 0
        try:
            freed = int(self.totals[worker])
            self.totals[worker] = 0
            for slot in range(self.slots):
                if self.keys[slot] > _TOMBSTONE:
                    self.counts[slot * self.workers + worker] = 0
                    self._forget_if_unused(slot)
        finally:
            self.lock.release()
        return freed


class QuotaView:
    """One worker's handle on the shared table: its increments land in its own column."""

    def __init__(self, shared: SharedQuota, worker: int) -> None:
        self.shared, self.worker = shared, worker

    def acquire(self, user: str) -> int:
        s, key = self.shared, _user_hash(user)
        if not s.lock.acquire(timeout=_LOCK_TIMEOUT):
            log.error("TURN quota table lock not released (a worker died holding it?): 508")
            return 508
        try:
            slot = s.find(key, insert=True)
            if slot is None:
                log.error(
                    "TURN quota table full (%d users with allocations): 508; "
                    "raise turn.quota.total to size it",
                    s.slots,
                )
                return 508
            code = 0
            if s.user_count(slot) >= s.per_user:
                code = 486
            elif s.active() >= s.total:
                code = 508
            if code:
                s._forget_if_unused(slot)
                return code
            s.counts[slot * s.workers + self.worker] += 1
            s.totals[self.worker] += 1
            return 0
        finally:
            s.lock.release()

    def release(self, user: str) -> None:
        s = self.shared
        with s.lock:
            slot = s.find(_user_hash(user), insert=False)
            if slot is not None and s.counts[slot * s.workers + self.worker] > 0:
                s.counts[slot * s.workers + self.worker] -= 1
                s._forget_if_unused(slot)
            if s.totals[self.worker] > 0:
                s.totals[self.worker] -= 1
