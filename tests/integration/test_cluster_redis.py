"""natkit.cluster against a real redis-server on loopback: exact quotas over members, leases,
the fail policy and resync, the shared revocations and credentials. No natkit serve here
(tests/netns/test_cluster_fleet.py runs the fleet)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.cluster import admin
from natkit.cluster.agent import ClusterAgent, Shared
from natkit.cluster.quota import ClusterQuota
from natkit.config.model import ClusterConfig
from natkit.testing import free_port, self_signed_certificate
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer("127.0.0.1", free_port("tcp")) as server:
        yield server


def _agent(config: ClusterConfig, member: str, per_user: int = 5, total: int = 100) -> ClusterAgent:
    quota = ClusterQuota(per_user, total, config.fail_open)
    return ClusterAgent(config, member, quota, load=lambda: {"allocations": "0"})


async def _take(agent: ClusterAgent, user: str) -> int | None:
    code = await agent.acquire(user, 1)
    if code == 0:
        agent.quota.grant(user, 1)
        assert agent.quota.acquire(user) == 0
        agent.quota.settle(user)
    return code


def test_quota_is_exact_across_members_and_a_dead_members_share_expires(
    redis: RedisServer,
) -> None:
    config = ClusterConfig(redis=redis.url, lease=1.0, prefix="h17q")

    async def main() -> None:
        agents = [_agent(config, f"n{i}/0") for i in range(3)]
        for agent in agents:
            await agent.start()
        # 9 concurrent Allocates for one user over three members: exactly 5 admitted.
        codes = await asyncio.gather(*(_take(agents[i % 3], "alice") for i in range(9)))
        assert sorted(c for c in codes) == [0] * 5 + [486] * 4
        assert sum(a.quota.active for a in agents) == 5
        # A member dies without a word (its heartbeat stops, no LEAVE): its share is held for
        # the lease, then free.
        dead = next(a for a in agents if a.quota.active)
        assert dead._task is not None
        dead._task.cancel()
        live = [a for a in agents if a is not dead]
        assert await _take(live[0], "alice") == 486
        await asyncio.sleep(1.3)
        for _ in range(dead.quota.active):
            assert await _take(live[0], "alice") == 0
        assert await _take(live[0], "alice") == 486
        # A release reaches Redis: the unit is free for another member.
        live[0].quota.release("alice")
        await asyncio.sleep(0.1)
        assert await _take(live[1], "alice") == 0
        for agent in live:
            await agent.close()
        await dead._redis.aclose()

    asyncio.run(main())


def test_total_quota_and_clean_leave(redis: RedisServer) -> None:
    config = ClusterConfig(redis=redis.url, prefix="h17t")

    async def main() -> None:
        a, b = _agent(config, "a/0", total=3), _agent(config, "b/0", total=3)
        await a.start()
        await b.start()
        assert [await _take(a, "u1"), await _take(b, "u2"), await _take(a, "u3")] == [0, 0, 0]
        assert await _take(b, "u4") == 508
        await a.close()  # a clean stop frees its share at once
        assert await _take(b, "u4") == 0
        await b.close()

    asyncio.run(main())


def test_redis_down_fail_open_then_resync(redis: RedisServer) -> None:
    config = ClusterConfig(redis=redis.url, prefix="h17f", timeout=0.1)

    async def main() -> None:
        a = _agent(config, "a/0", per_user=2)
        await a.start()
        assert await _take(a, "bob") == 0
        redis.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await a.acquire("bob", 1) is None  # no verdict, and quickly
        assert loop.time() - started < 0.5
        await a.poll()
        assert not a.online and a.outages == 1
        # Fail-open: local quotas (2 per user on this member alone).
        assert a.quota.acquire("bob") == 0
        assert a.quota.acquire("bob") == 486
        assert a.quota.local_admitted == 1
        redis.start()
        await a.poll()
        assert a.online
        report = await _status(config)
        assert report["quota"]["users"] == {"bob": 2}
        await a.close()

    asyncio.run(main())


def test_fail_closed_refuses_without_redis(redis: RedisServer) -> None:
    config = ClusterConfig(redis=redis.url, prefix="h17c", fail_open=False)
    quota = ClusterQuota(5, 100, fail_open=False)
    assert quota.acquire("carol") == 508  # no verdict: fail-closed
    assert quota.local_refused == 1

    async def main() -> None:
        a = ClusterAgent(config, "a/0", quota, load=dict)
        await a.start()
        assert await _take(a, "carol") == 0
        await a.close()

    asyncio.run(main())


def test_revocations_and_credentials_reach_members(redis: RedisServer) -> None:
    config = ClusterConfig(redis=redis.url, prefix="h17r")
    seen: list[Shared] = []

    async def main() -> None:
        quota = ClusterQuota(5, 100, True)
        agent = ClusterAgent(config, "a/0", quota, load=dict, on_change=seen.append)
        await agent.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, admin.run, config, admin.revoke("mallory"))
        await loop.run_in_executor(None, admin.run, config, admin.add_secret("s2"))
        await loop.run_in_executor(None, admin.run, config, admin.set_user("dave", "pw"))
        await asyncio.sleep(0.8)  # one poll
        assert seen[-1] == Shared(frozenset({"mallory"}), {"dave": "pw"}, ("s2",))
        report = await _status(config)
        assert report["revoked"] == {"mallory": 0} and report["secrets"] == 1
        assert [n["node"] for n in report["nodes"]] == ["a"]
        await agent.close()

    asyncio.run(main())


async def _status(config: ClusterConfig) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    report: dict[str, object] = await loop.run_in_executor(None, admin.run, config, admin.status)
    return report


def test_unreachable_redis_is_one_line_error() -> None:
    config = dataclasses.replace(ClusterConfig(), redis=f"redis://127.0.0.1:{free_port('tcp')}")
    with pytest.raises(admin.ClusterError, match=r"^Redis at redis://127\.0\.0\.1:\d+: "):
        admin.run(config, admin.status)


def test_rediss_with_a_password_and_a_verified_certificate(tmp_path: Path) -> None:
    """cluster.redis over TLS with AUTH (Debian's redis-server is built with TLS): the CA and
    options ride in the URL's query, as redis-py reads them."""
    cert, key = self_signed_certificate(tmp_path, "localhost")
    with RedisServer("127.0.0.1", free_port("tcp"), tls=(cert, key), password="pw") as server:
        assert server.url.startswith("rediss://:pw@")
        config = ClusterConfig(redis=server.url, prefix="h17tls")
        wrong = ClusterConfig(redis=server.url.replace(":pw@", ":nope@"), prefix="h17tls")

        async def main() -> None:
            agent = _agent(config, "a/0")
            await agent.start()
            assert agent.online and await _take(agent, "alice") == 0
            await agent.close()
            bad = _agent(wrong, "b/0")
            await bad.start()
            assert not bad.online and bad.outages == 1  # refused: fail policy, logged once
            await bad.close()

        asyncio.run(main())
