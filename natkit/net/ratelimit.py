"""Per-source token bucket, sans-IO: the caller passes the source key and the current time.

Theory of operation: each source IP owns a bucket of at most `burst` tokens that refills at
`rate` tokens per second; a request costs one token and is dropped when none is left. The check
runs on the raw datagram *before* any parsing, so a flood costs one dict lookup per packet.

Memory is bounded by `max_sources`. The table is a dict kept in least-recently-used order (a hit
moves its key to the end). When it is full, the least recently used source is evicted: a source
idle for `burst / rate` seconds has a full bucket again, which is exactly what a fresh entry gets,
so evicting idle sources forgets nothing. Only under a spoofed-source flood wider than
`max_sources` does eviction hand a busy source a fresh bucket; the limit then degrades to
`burst` per eviction cycle per source rather than memory growing without bound.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets keyed by source (an IP string or bytes); time is always an argument."""

    __slots__ = ("_buckets", "burst", "dropped", "evicted", "max_sources", "rate")

    def __init__(self, rate: float, burst: float, max_sources: int = 100_000) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be > 0, burst >= 1, max_sources >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_sources = max_sources
        # key -> [tokens, time of last refill]; a list so the hot path mutates in place.
        self._buckets: dict[Hashable, list[float]] = {}
        self.dropped = 0
        """Requests refused since creation (a monotonic counter for metrics)."""
        self.evicted = 0
        """Sources forgotten to stay within `max_sources`."""

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: Hashable, now: float) -> bool:
        """Take one token from `key`'s bucket at time `now` (seconds, monotonic)."""
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            if len(buckets) >= self.max_sources:
                # dicts iterate in insertion order: the first key is the least recently used.
                del buckets[next(iter(buckets))]
                self.evicted += 1
            buckets[key] = [self.burst - 1.0, now]
            return True
        buckets[key] = bucket  # re-insert: now the most recently used
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        self.dropped += 1
        return False

    def reconfigure(self, rate: float, burst: float, max_sources: int) -> None:
        """Apply new limits (SIGHUP) keeping every source's state; shrink the table if needed."""
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be > 0, burst >= 1, max_sources >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_sources = max_sources
        buckets = self._buckets
        while len(buckets) > max_sources:
            del buckets[next(iter(buckets))]
            self.evicted += 1
        for bucket in buckets.values():
            bucket[0] = min(bucket[0], self.burst)
