"""One fleet member's link to Redis: quota decisions, heartbeats, and what the fleet shares.

Theory of operation. Each worker process of a node runs one `ClusterAgent` (member
``NODE/WORKER``) with its own Redis connection (redis-py's asyncio client). Every `POLL`
seconds it heartbeats (`scripts.BEAT`: renews its lease, publishes its load) and reads what the
fleet shares: the revocation list, the REST secrets and static users set live, and the other
members' load (for redirects). A change is handed to `on_change` at once, so a revocation
reaches every member within one poll (≤ 0.5 s, the issue asks ≤ 2 s).

Budgets. `acquire` (the one call on a request path: an Allocate waits for it) is bounded by
``cluster.timeout``; background calls by `BACKGROUND_TIMEOUT`. All writes go through one
lock, in order, so a resync (`scripts.SYNC`, the member's full truth from `ClusterQuota`) is never
overtaken by an older increment. A write whose outcome is unknown (timeout, broken connection)
marks the member *dirty*: the next heartbeat resyncs.

Redis unreachable: the first failure logs one warning and marks the member offline; the quota
then applies the fail policy (`natkit.cluster.quota`). The heartbeat keeps trying every poll;
the first success resyncs and logs one line. ChannelData and every other request never wait on
any of this: only an Allocate asks, and only for up to the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from natkit.cluster.quota import ClusterQuota
from natkit.cluster.scripts import ACQUIRE, BEAT, LEAVE, NOT_REGISTERED, RELEASE, SYNC, Keys
from natkit.config.model import ClusterConfig

__all__ = ["BACKGROUND_TIMEOUT", "POLL", "ClusterAgent", "Member", "Shared", "connect", "where"]

log = logging.getLogger("natkit.cluster")

POLL = 0.5  # seconds between heartbeats (and reads of the shared state)
BACKGROUND_TIMEOUT = 1.0  # seconds a heartbeat, sync or release may take


def where(url: str) -> str:
    """The Redis URL without credentials, for logs and errors."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.scheme}://{parts.hostname or '?'}:{parts.port or 6379}"


def connect(url: str, timeout: float) -> Any:
    """A redis-py asyncio client for `url` that never retries on its own (the callers have
    budgets) and answers str."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis.asyncio.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


@dataclass(frozen=True, slots=True)
class Member:
    """Another member's load, as it last published it (`scripts.BEAT`)."""

    member: str
    node: str
    allocations: int
    capacity: int
    draining: bool
    addresses: Mapping[str, str]
    """Transport ("udp", "tcp", "tls") → "IP:PORT" its clients reach it at."""
    domain: str
    bps: int

    @property
    def full(self) -> bool:
        return self.capacity > 0 and self.allocations >= self.capacity

    @classmethod
    def parse(cls, member: str, raw: Mapping[str, str]) -> Member:
        addresses = {t: raw[t] for t in ("udp", "tcp", "tls") if raw.get(t)}
        return cls(
            member,
            raw.get("node", member.partition("/")[0]),
            _int(raw.get("allocations")),
            _int(raw.get("capacity")),
            raw.get("draining") == "1",
            addresses,
            raw.get("domain", ""),
            _int(raw.get("bps")),
        )


@dataclass(frozen=True, slots=True)
class Shared:
    """What the fleet shares that each member applies: revocations and credentials."""

    revoked: frozenset[str] = frozenset()
    users: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


class ClusterAgent:
    """See the module docstring."""

    def __init__(
        self,
        config: ClusterConfig,
        member: str,
        quota: ClusterQuota,
        *,
        load: Callable[[], Mapping[str, str]],
        on_change: Callable[[Shared], None] | None = None,
    ) -> None:
        assert config.redis is not None
        self.config, self.member, self.quota = config, member, quota
        self.keys = Keys(config.prefix)
        self.load, self.on_change = load, on_change
        self.online = False
        self.dirty = True  # nothing written yet: the first heartbeat syncs
        self.shared = Shared()
        self.peers: tuple[Member, ...] = ()
        self.outages = 0
        self.errors = 0
        self._redis = connect(config.redis, BACKGROUND_TIMEOUT)
        self._acquire = self._redis.register_script(ACQUIRE)
        self._release_script = self._redis.register_script(RELEASE)
        self._sync_script = self._redis.register_script(SYNC)
        self._beat_script = self._redis.register_script(BEAT)
        self._leave = self._redis.register_script(LEAVE)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._warned = False
        quota.on_release = self.release

    @property
    def lease_ms(self) -> str:
        return str(int(self.config.lease * 1000))

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the fleet (or note that Redis is unreachable) and start heartbeating."""
        await self.poll()
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop heartbeating and leave: a clean stop frees this member's share at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._pending):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, BACKGROUND_TIMEOUT)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._leave(args=[self.keys.base, self.member]), BACKGROUND_TIMEOUT
            )
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            await self.poll()

    async def poll(self) -> None:
        """One heartbeat and one read of the shared state; marks the member on- or offline."""
        try:
            async with self._lock:
                await asyncio.wait_for(self._beat(), BACKGROUND_TIMEOUT)
            await asyncio.wait_for(self._read(), BACKGROUND_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # redis-py's errors, OSError, TimeoutError: all mean "down"
            self._down(err)
            return
        if not self.online:
            self.online = True
            if self._warned:
                log.warning(
                    "cluster: Redis at %s reachable again; resynced %d allocation(s) of %s",
                    where(self.config.redis or ""), self.quota.active, self.member,
                )  # fmt: skip
            else:
                log.info("cluster: %s joined the fleet at %s", self.member,
                         where(self.config.redis or ""))  # fmt: skip
            self._warned = False

    def _down(self, err: BaseException) -> None:
        self.errors += 1
        self.dirty = True
        if self.online or not self._warned:
            self.outages += 1
            policy = (
                "admitting new allocations on local quotas (cluster.fail_open: true)"
                if self.config.fail_open
                else "refusing new allocations with 508 (cluster.fail_open: false)"
            )
            log.warning(
                "cluster: Redis at %s unreachable (%s); %s, existing allocations keep relaying",
                where(self.config.redis or ""), type(err).__name__ + _detail(err), policy,
            )  # fmt: skip
            self._warned = True
        self.online = False

    # -- writes (under the lock, in order) -------------------------------------------------

    async def _beat(self) -> None:
        if self.dirty:
            await self._sync()
        fields: list[str] = []
        for key, value in self.load().items():
            fields += [key, value]
        held = await self._beat_script(args=[self.keys.base, self.member, self.lease_ms, *fields])
        if not held:  # the lease ran out (partition, Redis restart): write the truth again
            await self._sync()

    async def _sync(self) -> None:
        pairs: list[str] = []
        for user, count in self.quota.snapshot().items():
            pairs += [user, str(count)]
        await self._sync_script(args=[self.keys.base, self.member, self.lease_ms, *pairs])
        self.dirty = False

    async def acquire(self, user: str, units: int) -> int | None:
        """The fleet's verdict on `units` more allocations of `user`: 0 (counted for this
        member), 486 or 508; None when Redis did not answer within ``cluster.timeout``."""
        if not self.online:
            return None
        try:
            return await asyncio.wait_for(self._acquire_locked(user, units), self.config.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # Unknown whether Redis counted it: the next heartbeat resyncs. A slow answer is
            # not an outage (the heartbeat decides that); a refused connection is.
            self.dirty = True
            self.errors += 1
            if not isinstance(err, TimeoutError):
                self._down(err)
            return None

    async def _acquire_locked(self, user: str, units: int) -> int:
        quota = self.quota
        args = [self.keys.base, self.member, user, str(units), str(quota.per_user),
                str(quota.total)]  # fmt: skip
        async with self._lock:
            code = int(await self._acquire(args=args))
            if code == NOT_REGISTERED:
                await self._sync()
                code = int(await self._acquire(args=args))
        return code

    def release(self, user: str, units: int) -> None:
        """`units` allocations of `user` ended here: tell Redis, in the background."""
        if not self.online:
            self.dirty = True  # the resync when Redis returns counts it
            return
        task = asyncio.get_running_loop().create_task(self._release(user, units))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, user: str, units: int) -> None:
        args = [self.keys.base, self.member, user, str(units)]
        try:
            async with self._lock:
                code = await asyncio.wait_for(self._release_script(args=args), BACKGROUND_TIMEOUT)
                if code == NOT_REGISTERED:
                    self.dirty = True
        except asyncio.CancelledError:
            raise
        except Exception:
            self.dirty = True
            self.errors += 1

    # -- reads -----------------------------------------------------------------------------

    async def _read(self) -> None:
        keys, now = self.keys, time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.revoked)
            pipe.hgetall(keys.users)
            pipe.smembers(keys.secrets)
            pipe.smembers(keys.members)
            revoked, users, secrets, members = await pipe.execute()
        ordered = sorted(m for m in members if m != self.member)
        async with self._redis.pipeline(transaction=False) as pipe:
            for member in ordered:
                pipe.exists(keys.alive(member))
                pipe.hgetall(keys.load(member))
            replies = await pipe.execute()
        peers = []
        for i, member in enumerate(ordered):
            alive, raw = replies[2 * i], replies[2 * i + 1]
            if alive and raw:
                peers.append(Member.parse(member, raw))
        self.peers = tuple(peers)
        live = frozenset(n for n, until in revoked.items() if _int(until) == 0 or _int(until) > now)
        shared = Shared(live, dict(users), tuple(sorted(secrets)))
        if shared != self.shared:
            self.shared = shared
            if self.on_change is not None:
                self.on_change(shared)


def _detail(err: BaseException) -> str:
    text = str(err)
    return f": {text}" if text else ""
