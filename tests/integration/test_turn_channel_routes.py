"""The builtin engine's ChannelData fast path (`natkit.turn.channel_routes`) obeys the core: on
real loopback sockets, with the engine's clock in the test's hands, a cached channel route stops
relaying the moment its permission, its channel or its allocation ends, both ways, and starts
again when the client refreshes it; hostile frames never grow its caches."""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator

import pytest

from natkit.addr import Address
from natkit.metrics import TURN_PACKETS_TO_CLIENT, TURN_PACKETS_TO_PEER
from natkit.net import mmsg
from natkit.turn.allocation import CHANNEL_LIFETIME, PERMISSION_LIFETIME
from tests.integration.inprocess_turn import (
    CHANNEL,
    InProcessServer,
    bound_client,
    frame,
    loopback_udp,
    nothing_relayed,
    relays_both_ways,
)
from tests.integration.turn_client import TurnClient, code

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not mmsg.available(), reason="the fast path needs recvmmsg/sendmmsg"),
]


@pytest.fixture
def server() -> Iterator[InProcessServer]:
    srv = InProcessServer()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    with loopback_udp() as sock:
        yield sock


def _cached_route(
    server: InProcessServer, peer: socket.socket
) -> tuple[TurnClient, Address, Address]:
    """A client whose channel route is cached both ways (the first packet took the slow path):
    (client, peer address, relayed address)."""
    client, peer_address = bound_client(server, peer)
    assert relays_both_ways(client, peer, b"warm")
    assert relays_both_ways(client, peer, b"cached")
    assert client.relayed is not None
    return client, peer_address, client.relayed


def test_routes_are_cached_and_counted(server: InProcessServer, peer: socket.socket) -> None:
    client, _ = bound_client(server, peer)
    for n in range(20):
        assert relays_both_ways(client, peer, b"%d" % n)
    assert server.client_entries() == 1
    assert server.engine_counters[TURN_PACKETS_TO_PEER] == 20
    assert server.engine_counters[TURN_PACKETS_TO_CLIENT] == 20
    client.close()


def test_expired_permission_stops_both_ways_until_refreshed(
    server: InProcessServer, peer: socket.socket
) -> None:
    client, peer_address, relay = _cached_route(server, peer)
    server.now += PERMISSION_LIFETIME + 1  # the channel (600 s) lives on, the permission not
    assert code(client.refresh(600)) == 0  # the allocation lives on too
    assert nothing_relayed(client, peer, relay)  # before the sweep removed anything
    server.sweep()
    assert nothing_relayed(client, peer, relay)
    assert code(client.permit([peer_address])) == 0  # RFC 8656 §9: the permission is back
    assert relays_both_ways(client, peer, b"again")
    client.close()


def test_expired_channel_stops_both_ways(server: InProcessServer, peer: socket.socket) -> None:
    client, peer_address, relay = _cached_route(server, peer)
    server.now += CHANNEL_LIFETIME - 10
    assert code(client.refresh(600)) == 0
    assert code(client.permit([peer_address])) == 0  # the permission outlives the channel
    server.now += 20
    client.sock.sendto(frame(b"late"), client.server)
    with pytest.raises(TimeoutError):
        peer.recv(2048)
    # Peer data now arrives as a Data indication (RFC 8656 §11.3), not as ChannelData.
    peer.sendto(b"as data", relay)
    assert client.sock.recv(2048)[:2] == b"\x00\x17"
    client.close()


def test_refresh_zero_ends_the_route_and_its_cache_entry(
    server: InProcessServer, peer: socket.socket
) -> None:
    client, _, relay = _cached_route(server, peer)
    assert server.client_entries() == 1
    assert code(client.refresh(0)) == 0
    assert nothing_relayed(client, peer, relay)
    assert server.client_entries() == 0
    client.close()


def test_hostile_frames_never_grow_the_cache(
    server: InProcessServer, peer: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = bound_client(server, peer)
    assert relays_both_ways(client, peer, b"warm")
    unbound = sorted({*range(0x4000, 0x4800)} - {CHANNEL})
    # In rounds of 150 datagrams, fewer than the default receive buffer holds, each closed by a
    # relayed round trip: the kernel never drops the round trip for want of buffer, and every
    # round proves the route survived the frames before it.
    for start in range(0, len(unbound), 50):  # unbound numbers; short, padded frames
        for number in unbound[start : start + 50]:
            client.sock.sendto(frame(b"x", number), client.server)
            client.sock.sendto(struct.pack("!HH", number, 9) + b"short", client.server)
            client.sock.sendto(frame(b"abc", number) + b"\0", client.server)
        assert relays_both_ways(client, peer, b"round %d" % start)
    for runt in (b"\x40\x01", b"\x40\x01\x00"):  # shorter than the ChannelData header
        client.sock.sendto(runt, client.server)
    stranger = TurnClient(server.local.port, "alice", "wonderland", "natkit.test")
    for start in range(0x4000, 0x4100, 128):  # ChannelData from a 5-tuple with no allocation
        for number in range(start, start + 128):
            stranger.sock.sendto(frame(b"y", number), stranger.server)
        assert relays_both_ways(client, peer, b"stranger %d" % start)
    assert relays_both_ways(client, peer, b"still")
    assert server.client_entries() == 1
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []  # no traceback
    routes = server.engine.channels._clients[server.local]
    assert all(len(channels) == 1 for _, channels in routes.values())
    stranger.close()
    client.close()
