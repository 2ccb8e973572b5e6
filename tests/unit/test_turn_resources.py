"""What an allocation holds and when it lets go (issue 11, items 1 and 3), sans-IO.

- Every path that ends an allocation yields exactly one CloseRelay for the relay socket its
  OpenRelay asked for: expiry at the sweep, expiry noticed by a request, Refresh 0, a
  re-allocation over an expired allocation (the leak: that one yielded none), the loss of a
  TCP connection, shutdown.
- ``turn.limits``: peers per CreatePermission, permissions and channels per allocation (508).
- The sweep's work is O(expired): it examines no entry that is not due, however many live.
"""

from __future__ import annotations

import random
import tracemalloc
from collections import Counter

from natkit.addr import Address, Transport
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.message import parse_message
from natkit.turn.allocation import AllocationTable, FiveTuple, Limits, PortPool
from natkit.turn.commands import CloseRelay, Command, OpenRelay, SendToClient
from tests.unit.test_turn_relay_client import Client, error_code, make_relay

A = AttrType


class Ledger:
    """Counts OpenRelay / CloseRelay per relay address over every command list."""

    def __init__(self) -> None:
        self.opened: Counter[Address] = Counter()
        self.closed: Counter[Address] = Counter()

    def __call__(self, commands: list[Command]) -> list[Command]:
        for cmd in commands:
            if isinstance(cmd, OpenRelay):
                assert self.opened[cmd.relay] == self.closed[cmd.relay], f"{cmd} while open"
                self.opened[cmd.relay] += 1
            elif isinstance(cmd, CloseRelay):
                self.closed[cmd.relay] += 1
                assert self.closed[cmd.relay] <= self.opened[cmd.relay], f"{cmd} twice"
        return commands


def test_reallocating_over_an_expired_allocation_closes_its_relay_first() -> None:
    relay = make_relay(ports=(50000, 50000))  # one port: the new allocation needs the old one's
    client = Client(relay)
    client.allocate()
    old = client.relayed()
    client.now += 600  # the lifetime is over; the 1 s sweep has not run yet
    assert client.allocate().message_class is MessageClass.SUCCESS
    kinds = [type(c) for c in client.last]
    assert kinds == [CloseRelay, OpenRelay, SendToClient], client.last
    assert client.last[0] == CloseRelay(old) and client.last[1].relay == old  # type: ignore[union-attr]


def test_every_end_of_an_allocation_yields_exactly_one_close_relay() -> None:
    relay = make_relay()
    ledger = Ledger()
    clients = [Client(relay, address=Address("198.51.100.7", 40000 + i)) for i in range(6)]
    tcp = Client(relay, address=Address("198.51.100.8", 1), transport=Transport.TCP)
    for client in [*clients, tcp]:
        client.allocate()
        ledger(client.last)
    now = clients[0].now + 600
    _swept, lookup, refresh0, realloc, kept, shut = clients
    for client in clients:
        client.now = now
    ledger(relay.handle_timeout(now - 1))  # nothing due yet
    assert sum(ledger.closed.values()) == 0
    # Expiry noticed by a request: 437, and the socket goes now.
    looked_up = lookup.relayed()
    assert error_code(lookup.request(Method.REFRESH, [])) == 437
    assert CloseRelay(looked_up) in ledger(lookup.last)
    # Refresh 0 (refreshed first, so it is live).
    refresh0.now = kept.now = shut.now = now - 10
    assert refresh0.request(Method.REFRESH, [(A.LIFETIME, 1200)]).get(A.LIFETIME) == 1200
    assert kept.request(Method.REFRESH, [(A.LIFETIME, 1200)]).get(A.LIFETIME) == 1200
    assert shut.request(Method.REFRESH, [(A.LIFETIME, 1200)]).get(A.LIFETIME) == 1200
    ledger(refresh0.last + kept.last + shut.last)
    refresh0.request(Method.REFRESH, [(A.LIFETIME, 0)])
    ledger(refresh0.last)
    # Re-allocation over an expired one.
    realloc.allocate()
    ledger(realloc.last)
    # TCP connection loss.
    ledger(relay.connection_lost(FiveTuple(tcp.address, tcp.local, Transport.TCP), now))
    # The sweep: `sweep` expired; `realloc`'s new allocation and `kept` live on.
    ledger(relay.handle_timeout(now + 1))
    assert len(relay.allocations) == 3  # realloc's new one, kept, shut
    ledger(relay.handle_timeout(now + 1))  # a second sweep frees nothing twice
    ledger(relay.close())  # shutdown
    assert len(relay.allocations) == 0
    assert ledger.opened == ledger.closed and sum(ledger.opened.values()) == 8
    assert all(pool.take() is not None for pool in relay.allocations.pools.values())


def test_relay_exhausted_is_508_at_once_and_keeps_the_port() -> None:
    relay = make_relay(ports=(50000, 50000))
    client = Client(relay)
    client.allocate()
    opened = client.last[0]
    assert isinstance(opened, OpenRelay)
    answer = relay.relay_unavailable(opened.relay, client.now, exhausted=True)
    assert len(answer) == 1 and error_code(parse_message(answer[0].data)) == 508  # type: ignore[union-attr]
    assert len(relay.allocations) == 0 and not relay.allocations.per_user
    assert client.allocate().message_class is MessageClass.SUCCESS  # the port is not blocked


def _peers(count: int, start: int = 0) -> list[tuple[int, object]]:
    return [(A.XOR_PEER_ADDRESS, Address(f"8.8.{i // 250}.{i % 250 + 1}", 9))
            for i in range(start, start + count)]  # fmt: skip


def test_peers_per_create_permission_are_capped() -> None:
    client = Client(make_relay(peers_per_request=3))
    client.allocate()
    assert error_code(client.request(Method.CREATE_PERMISSION, _peers(4))) == 508  # type: ignore[arg-type]
    alloc = client.relay.allocations.by_five_tuple[(client.address, client.local, client.transport)]  # type: ignore[index]
    assert alloc.permissions == {}  # all or nothing
    assert error_code(client.request(Method.CREATE_PERMISSION, _peers(3))) is None  # type: ignore[arg-type]


def test_permissions_and_channels_per_allocation_are_capped() -> None:
    client = Client(make_relay(limits=Limits(permissions=4, channels=2)))
    client.allocate()
    assert error_code(client.request(Method.CREATE_PERMISSION, _peers(3))) is None  # type: ignore[arg-type]
    assert error_code(client.request(Method.CREATE_PERMISSION, _peers(3, 2))) == 508  # type: ignore[arg-type]
    assert error_code(client.request(Method.CREATE_PERMISSION, _peers(1, 3))) is None  # type: ignore[arg-type]
    assert error_code(client.request(Method.CREATE_PERMISSION, _peers(3))) is None  # refresh only  # type: ignore[arg-type]
    peer = Address("8.8.0.1", 9)  # permitted already: a channel to it needs no new permission
    for number in (0x4000, 0x4001):
        bind = [(A.CHANNEL_NUMBER, number), (A.XOR_PEER_ADDRESS, Address(peer.host, number))]
        assert error_code(client.request(Method.CHANNEL_BIND, bind)) is None  # type: ignore[arg-type]
    bind = [(A.CHANNEL_NUMBER, 0x4002), (A.XOR_PEER_ADDRESS, Address(peer.host, 7))]
    assert error_code(client.request(Method.CHANNEL_BIND, bind)) == 508  # type: ignore[arg-type]
    bind = [(A.CHANNEL_NUMBER, 0x4000), (A.XOR_PEER_ADDRESS, Address(peer.host, 0x4000))]
    assert error_code(client.request(Method.CHANNEL_BIND, bind)) is None  # a refresh  # type: ignore[arg-type]


def test_a_permission_flood_holds_bounded_memory() -> None:
    client = Client(make_relay())  # defaults: 10 peers a request, 64 permissions
    client.allocate()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(500):  # 5,000 distinct peers offered
            client.request(Method.CREATE_PERMISSION, _peers(10, 10 * i))  # type: ignore[arg-type]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    alloc = client.relay.allocations.by_five_tuple[(client.address, client.local, client.transport)]  # type: ignore[index]
    assert 54 < len(alloc.permissions) <= 64  # requests are all or nothing, 10 at a time
    assert len(client.relay.allocations._heap) <= 1 + 64
    assert after - before < 64 * 1024, after - before  # 64 entries, not 5,000


def test_the_sweep_examines_only_what_is_due() -> None:
    table = AllocationTable({"192.0.2.1": PortPool(50000, 50009, random.Random(1))},
                            Limits(permissions=100_000))  # fmt: skip
    ft = FiveTuple(Address("198.51.100.1", 1), Address("192.0.2.1", 3478), Transport.UDP)
    created = table.create(ft, "192.0.2.1", False, None, username="a", user="a", key=b"k",
                           expires=10_000.0)  # fmt: skip
    assert created is not None
    alloc = created[0]
    for i in range(100_000):
        table.permit(alloc, f"2001:db8::{i:x}", 0.0)
    for second in range(1, 300):
        table.sweep(float(second))
    assert table.examined == 0  # 100k live entries, none due: none looked at
    table.permit(alloc, "2001:db8::1", 200.0)  # refreshed: not due at 300
    table.sweep(300.0)
    assert table.examined == 100_000 and len(alloc.permissions) == 1
    table.sweep(301.0)
    assert table.examined == 100_000


def test_a_shortened_lifetime_expires_on_time() -> None:
    client = Client(make_relay())
    client.allocate(lifetime=3600)
    client.now += 10
    assert client.request(Method.REFRESH, [(A.LIFETIME, 600)]).get(A.LIFETIME) == 600
    relayed = client.relayed()
    assert client.relay.handle_timeout(client.now + 599) == []
    assert client.relay.handle_timeout(client.now + 600) == [CloseRelay(relayed)]
    assert client.relay.handle_timeout(client.now + 3600) == []


def test_limits_are_config_keys_with_a_checked_range() -> None:
    import pytest

    from natkit.config import loads
    from natkit.errors import ConfigError

    config = loads("version: 1\nturn: {limits: {permissions_per_allocation: 8}}\n", "n.yaml")
    assert config.turn.limits.permissions_per_allocation == 8
    with pytest.raises(ConfigError, match=r"channels_per_allocation.*1-4096"):
        loads("version: 1\nturn: {limits: {channels_per_allocation: 5000}}\n", "n.yaml")


def test_a_port_that_could_not_be_bound_is_blocked_for_a_minute() -> None:
    relay = make_relay(ports=(50000, 50000))
    client = Client(relay)
    client.allocate()
    opened = client.last[0]
    assert isinstance(opened, OpenRelay)
    answer = relay.relay_unavailable(opened.relay, client.now)  # the only port: 508
    assert error_code(parse_message(answer[0].data)) == 508  # type: ignore[union-attr]
    assert error_code(client.allocate()) == 508  # still blocked
    relay.handle_timeout(client.now + 60)
    assert client.allocate().message_class is MessageClass.SUCCESS
