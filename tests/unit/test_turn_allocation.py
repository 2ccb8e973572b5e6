"""Allocation state: lifetimes, the channel rules and the relay port pool (RFC 8656)."""

from __future__ import annotations

import random

import pytest

from natkit.addr import Address, Transport
from natkit.turn.allocation import (
    Allocation,
    AllocationTable,
    FiveTuple,
    Limits,
    PortPool,
    grant_lifetime,
)
from natkit.turn.commands import CloseRelay

PEER = Address("8.8.8.8", 1)


def allocation(port: int = 50000, user: str = "alice") -> Allocation:
    ft = FiveTuple(Address("198.51.100.1", port), Address("192.0.2.1", 3478), Transport.UDP)
    relay = Address("192.0.2.1", port)
    return Allocation(ft, relay, relay, user, user, b"k", 600.0)


@pytest.mark.parametrize(
    ("requested", "default", "maximum", "granted"),
    [(None, 600, 3600, 600), (0, 600, 3600, 600), (30, 600, 3600, 600), (900, 600, 3600, 900),
     (7200, 600, 3600, 3600), (None, 900, 300, 300)],
)  # fmt: skip
def test_grant_lifetime(requested: int | None, default: int, maximum: int, granted: int) -> None:
    assert grant_lifetime(requested, default, maximum) == granted


def table_with(limits: Limits | None = None) -> AllocationTable:
    return AllocationTable({"192.0.2.1": PortPool(50000, 50009, random.Random(1))}, limits)


def create(table: AllocationTable, port: int = 1, user: str = "alice", expires: float = 600.0):  # type: ignore[no-untyped-def]
    ft = FiveTuple(Address("198.51.100.1", port), Address("192.0.2.1", 3478), Transport.UDP)
    created = table.create(
        ft, "192.0.2.1", False, None, username=user, user=user, key=b"k", expires=expires
    )
    assert created is not None
    return created[0]


def test_permission_lifetime() -> None:
    table = table_with()
    alloc = create(table)
    table.permit(alloc, "8.8.8.8", 0.0)
    assert alloc.permitted("8.8.8.8", 299.9) and not alloc.permitted("8.8.8.8", 300.0)
    table.sweep(300.0)
    assert alloc.permissions == {}


def test_channel_lifetime_and_quarantine() -> None:
    table = table_with()
    alloc = create(table, expires=10_000.0)
    assert alloc.can_bind(0x4000, PEER)
    table.bind(alloc, 0x4000, PEER, 0.0)
    assert alloc.channel_peer(0x4000, 299.0) == PEER
    assert alloc.channel_peer(0x4000, 300.0) is None  # permission expired first
    table.permit(alloc, PEER.host, 300.0)
    assert alloc.channel_peer(0x4000, 599.0) == PEER
    assert alloc.channel_peer(0x4000, 600.0) is None
    table.sweep(899.0)
    assert not alloc.can_bind(0x4000, Address("1.1.1.1", 1))
    assert alloc.can_bind(0x4000, PEER)
    table.sweep(900.0)
    assert alloc.channels == {} and alloc.peer_channels == {}
    assert alloc.can_bind(0x4000, Address("1.1.1.1", 1))


def test_port_pool_is_random_complete_and_even_aware() -> None:
    pool = PortPool(50000, 50009, random.Random(3))
    taken = [pool.take() for _ in range(10)]
    assert sorted(taken) == list(range(50000, 50010))  # type: ignore[type-var]
    assert taken != sorted(taken)
    assert pool.take() is None
    pool.release(50003)
    assert pool.take(even=True) is None
    pool.release(50004)
    assert pool.take(even=True) == 50004
    with pytest.raises(ValueError):
        PortPool(10, 5, random.Random())


def test_table_indexes_and_counts() -> None:
    table = table_with()
    a, b = create(table, 1), create(table, 2)
    assert len(table) == 2 and table.per_user == {"alice": 2}
    assert table.by_relay[a.relay] is a and table.by_five_tuple[b.five_tuple] is b
    moved = Address("192.0.2.1", table.pools["192.0.2.1"].take() or 0)
    table.move(a, moved, moved)
    assert table.by_relay[moved] is a
    assert table.free(a) == [CloseRelay(moved)]
    assert table.free(a) == []  # idempotent: one CloseRelay per allocation
    assert len(table) == 1 and table.per_user == {"alice": 1}
    assert table.sweep(599.0) == [] and table.sweep(600.0) == [CloseRelay(b.relay)]
    assert len(table) == 0 and table.per_user == {}
