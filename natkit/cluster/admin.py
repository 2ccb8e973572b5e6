"""The operator's side of a fleet: `natkit cluster status`, `revoke`, secrets and users.

Every call opens its own short-lived connection (`BACKGROUND_TIMEOUT` per call) and raises
`ClusterError` (exit status 2, one line) when Redis cannot be reached. The members pick up a
change at their next poll (`natkit.cluster.agent.POLL`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from natkit.cluster.agent import BACKGROUND_TIMEOUT, Member, connect, where
from natkit.cluster.scripts import Keys
from natkit.config.model import ClusterConfig
from natkit.errors import NatkitError

__all__ = [
    "ClusterError",
    "add_secret",
    "remove_secret",
    "remove_user",
    "revoke",
    "run",
    "set_user",
    "status",
    "unrevoke",
]

T = TypeVar("T")


class ClusterError(NatkitError):
    """Redis unreachable or not configured."""


def run(config: ClusterConfig, call: Callable[[Any, Keys], Awaitable[T]]) -> T:
    """Run `call(redis, keys)` against ``cluster.redis``; ClusterError if it cannot."""
    if config.redis is None:
        raise ClusterError("cluster.redis is not set: this config runs no fleet")

    async def main() -> T:
        client = connect(config.redis or "", BACKGROUND_TIMEOUT)
        try:
            return await asyncio.wait_for(call(client, Keys(config.prefix)), 5.0)
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except NatkitError:
        raise
    except Exception as err:  # redis-py's errors, OSError, TimeoutError
        detail = str(err) or type(err).__name__
        raise ClusterError(f"Redis at {where(config.redis)}: {detail}") from None


async def status(client: Any, keys: Keys) -> dict[str, Any]:
    """Nodes (members, load, health), quota use per user and in total, revocations."""
    members = sorted(await client.smembers(keys.members))
    async with client.pipeline(transaction=False) as pipe:
        for m in members:
            pipe.pttl(keys.alive(m))
            pipe.hgetall(keys.held(m))
            pipe.hgetall(keys.load(m))
        replies = await pipe.execute()
    nodes: dict[str, dict[str, Any]] = {}
    users: dict[str, int] = {}
    total = 0
    for i, m in enumerate(members):
        ttl, held, raw = replies[3 * i : 3 * i + 3]
        alive = ttl is not None and int(ttl) > 0
        load = Member.parse(m, raw)
        node = nodes.setdefault(load.node, {"node": load.node, "members": [], "allocations": 0,
                                            "quota_held": 0, "bps": 0, "draining": False,
                                            "healthy": True})  # fmt: skip
        count = int(held.get("total", 0)) if alive else 0
        node["members"].append({
            "member": m, "alive": alive, "lease_ms": max(int(ttl or 0), 0),
            "allocations": load.allocations, "quota_held": count, "capacity": load.capacity,
            "draining": load.draining, "bps": load.bps, "addresses": dict(load.addresses),
        })  # fmt: skip
        node["allocations"] += load.allocations if alive else 0
        node["quota_held"] += count
        node["bps"] += load.bps if alive else 0
        node["draining"] = node["draining"] or load.draining
        node["healthy"] = node["healthy"] and alive and not load.draining
        if alive:
            total += count
            for field, value in held.items():
                if field.startswith("u:"):
                    users[field[2:]] = users.get(field[2:], 0) + int(value)
    for node in nodes.values():  # full: it redirects new Allocates (cluster.capacity)
        capacity = max(m["capacity"] for m in node["members"])
        node["full"] = bool(capacity) and node["allocations"] >= capacity
    revoked = await client.hgetall(keys.revoked)
    now = time.time()
    live = {n: int(u) for n, u in revoked.items() if int(u) == 0 or int(u) > now}
    return {
        "version": 1,
        "prefix": keys.base,
        "nodes": list(nodes.values()),
        "quota": {"total": total, "users": dict(sorted(users.items()))},
        "revoked": live,
        "secrets": len(await client.smembers(keys.secrets)),
        "users": len(await client.hkeys(keys.users)),
    }


def revoke(name: str, ttl: float = 0.0) -> Callable[[Any, Keys], Awaitable[int]]:
    """Revoke user or credential `name` on every node (for `ttl` seconds; 0: until unrevoked)."""

    async def call(client: Any, keys: Keys) -> int:
        until = int(time.time() + ttl) if ttl > 0 else 0
        return int(await client.hset(keys.revoked, name, str(until)))

    return call


def unrevoke(name: str) -> Callable[[Any, Keys], Awaitable[int]]:
    async def call(client: Any, keys: Keys) -> int:
        return int(await client.hdel(keys.revoked, name))

    return call


def add_secret(secret: str) -> Callable[[Any, Keys], Awaitable[int]]:
    """A REST API secret every node accepts besides its configured one (rotation: add the new,
    hand it out, remove the old once its credentials expired)."""

    async def call(client: Any, keys: Keys) -> int:
        return int(await client.sadd(keys.secrets, secret))

    return call


def remove_secret(secret: str) -> Callable[[Any, Keys], Awaitable[int]]:
    async def call(client: Any, keys: Keys) -> int:
        return int(await client.srem(keys.secrets, secret))

    return call


def set_user(user: str, password: str) -> Callable[[Any, Keys], Awaitable[int]]:
    """A static user every node accepts (besides ``turn.auth.users``), or its new password."""

    async def call(client: Any, keys: Keys) -> int:
        return int(await client.hset(keys.users, user, password))

    return call


def remove_user(user: str) -> Callable[[Any, Keys], Awaitable[int]]:
    async def call(client: Any, keys: Keys) -> int:
        return int(await client.hdel(keys.users, user))

    return call
