"""Server-wide TURN quotas (natkit.turn.shared_quota) and the workers' relay port slices."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from typing import Any

import pytest

from natkit.config import ConfigError, loads
from natkit.turn import engine
from natkit.turn.shared_quota import LocalQuota, SharedQuota, table_slots

CONFIG = (
    "version: 1\nstun: {{listen: [udp://127.0.0.1:3478], workers: {workers}}}\n"
    "turn: {{enabled: true, auth: {{secret: s}}, relay: {{ports: {ports}}}}}\n"
)


def test_per_user_counts_every_workers_allocations() -> None:
    shared = SharedQuota(2, 64, per_user=3, total=100)
    w0, w1 = shared.view(0), shared.view(1)
    assert [w0.acquire("alice"), w1.acquire("alice"), w0.acquire("alice")] == [0, 0, 0]
    assert w1.acquire("alice") == 486 and w0.acquire("alice") == 486
    assert w1.acquire("bob") == 0  # per user
    w1.release("alice")
    assert w0.acquire("alice") == 0
    assert shared.active() == 4


def test_total_counts_every_worker() -> None:
    shared = SharedQuota(2, 64, per_user=10, total=2)
    w0, w1 = shared.view(0), shared.view(1)
    assert [w0.acquire("a"), w1.acquire("b")] == [0, 0]
    assert w0.acquire("c") == 508 and w1.acquire("a") == 508
    w0.release("a")
    assert w1.acquire("c") == 0


def test_a_dead_workers_share_is_released() -> None:
    shared = SharedQuota(2, 64, per_user=2, total=100)
    w0, w1 = shared.view(0), shared.view(1)
    assert [w0.acquire("alice"), w1.acquire("alice")] == [0, 0]
    assert w1.acquire("alice") == 486
    assert shared.release_worker(0) == 1
    assert shared.active() == 1
    assert w1.acquire("alice") == 0 and w1.acquire("alice") == 486


def _hold_forever(lock: Any) -> None:
    lock.acquire()
    time.sleep(60)


def test_a_worker_killed_holding_the_lock_does_not_wedge_the_table() -> None:
    """SIGKILL inside the critical section: the supervisor's release_worker frees the lock
    (it used to block forever, and every later Allocate got 508)."""
    shared = SharedQuota(2, 64, per_user=2, total=100)
    view = shared.view(1)
    assert view.acquire("alice") == 0
    holder = multiprocessing.get_context("spawn").Process(target=_hold_forever, args=(shared.lock,))
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while shared.lock.acquire(block=False):  # wait until the child holds it
            shared.lock.release()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(holder.pid or 0, signal.SIGKILL)
        holder.join(5)
        assert shared.release_worker(1) == 1
        assert shared.view(0).acquire("alice") == 0  # the table works again
    finally:
        if holder.is_alive():
            holder.kill()
        holder.join()


def test_full_table_is_508_and_ended_users_free_their_slots() -> None:
    shared = SharedQuota(1, 4, per_user=5, total=100)
    view = shared.view(0)
    users = [f"user{i}" for i in range(4)]
    assert [view.acquire(u) for u in users] == [0] * 4
    assert view.acquire("one-too-many") == 508
    assert view.acquire("user2") == 0  # a known user still has its slot
    view.release("user1")
    assert view.acquire("one-too-many") == 0  # user1's slot is a tombstone, reused
    view.release("one-too-many")
    for i in range(100):  # churn through the one free slot: slots never leak
        assert view.acquire(f"churn{i}") == 0
        view.release(f"churn{i}")
    assert sum(1 for key in shared.keys if key > 1) == 3


def test_refused_new_user_leaves_no_slot() -> None:
    shared = SharedQuota(1, 4, per_user=5, total=1)
    view = shared.view(0)
    assert view.acquire("a") == 0
    assert [view.acquire(f"u{i}") for i in range(10)] == [508] * 10
    assert sum(1 for key in shared.keys if key > 1) == 1


def test_local_quota_matches() -> None:
    quota = LocalQuota(per_user=1, total=2)
    assert [quota.acquire("a"), quota.acquire("a"), quota.acquire("b"), quota.acquire("c")] == [
        0,
        486,
        0,
        508,
    ]
    quota.release("a")
    assert quota.acquire("c") == 0


def test_table_is_twice_the_total_and_bounded() -> None:
    assert table_slots(10) == 64 and table_slots(1000) == 2048 and table_slots(10**7) == 1 << 16


def test_worker_slices_are_contiguous_disjoint_and_cover_the_range() -> None:
    config = loads(CONFIG.format(workers=3, ports="50000-50099"), "t.yaml")
    slices = [engine.worker_ports(config, i, 3) for i in range(3)]
    assert slices == [(50000, 50032), (50033, 50065), (50066, 50099)]
    settings = engine.relay_settings(config, 1, 3)
    assert settings.pool_ports == (50033, 50065) and settings.ports == (50000, 50099)
    assert engine.relay_settings(config).pool_ports == (50000, 50099)  # a relay alone: all


def test_each_worker_relay_allocates_only_from_its_slice() -> None:
    config = loads(CONFIG.format(workers=2, ports="50000-50009"), "t.yaml")
    shared = SharedQuota(2, 64, per_user=100, total=100)
    relay = engine.build_relay(config, rng=random.Random(1), worker=1, quota=shared)
    pool = relay.allocations.pools["127.0.0.1"]
    assert (pool.low, pool.high) == (50005, 50009)
    assert relay.quota.acquire("x") == 0 and shared.active() == 1


def test_fewer_ports_than_workers_is_a_load_error_with_its_line() -> None:
    with pytest.raises(ConfigError) as err:
        loads(CONFIG.format(workers=4, ports="50000-50002"), "t.yaml")
    assert str(err.value).startswith("t.yaml:3: turn.relay.ports: 50000-50002 has 3 port(s)")
