"""The builtin engine's ChannelData fast path (`natkit.turn.channel_routes`) obeys the core: on
real loopback sockets, with the engine's clock in the test's hands, a cached channel route stops
relaying the moment its permission, its channel or its allocation ends, both ways, and starts
again when the client refreshes it; hostile frames never grow its caches."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from natkit.addr import Address
from natkit.config import loads
from natkit.metrics import COUNTERS, TURN_PACKETS_TO_CLIENT, TURN_PACKETS_TO_PEER
from natkit.net import mmsg
from natkit.net.routes import Dispatcher
from natkit.net.udp import udp_reader
from natkit.stun.binding import BindingHandler
from natkit.turn.allocation import CHANNEL_LIFETIME, PERMISSION_LIFETIME
from natkit.turn.builtin import BuiltinTurn
from tests.integration.turn_client import HOST, TurnClient, code

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not mmsg.available(), reason="the fast path needs recvmmsg/sendmmsg"),
]

CHANNEL = 0x4001
CONFIG = """
version: 1
stun: {{listen: ["udp://127.0.0.1:3478"]}}
turn:
  enabled: true
  realm: natkit.test
  auth: {{users: {{alice: wonderland}}}}
  relay: {{address: 127.0.0.1, ports: "{low}-{high}"}}
  peers: {{allow: ["127.0.0.1/32"]}}
"""


class InProcessServer:
    """One UDP listener and a `BuiltinTurn` on an event loop in a thread; `now` is the clock."""

    def __init__(self) -> None:
        low = 40000 + os.getpid() % 20000
        self.engine_counters = [0] * COUNTERS
        self.now = 1000.0
        config = loads(CONFIG.format(low=low, high=low + 20))
        self.engine = BuiltinTurn(config, clock=lambda: self.now, counters=self.engine_counters)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.local = Address(HOST, self.sock.getsockname()[1])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.engine.start())
        stun_route, channel_route = self.engine.routes()
        binding = BindingHandler(primary=self.local).route()
        dispatcher = Dispatcher(binding, stun_route, channel_route)
        sockets = {self.local: self.sock}
        counts = [0] * COUNTERS
        reader = udp_reader(dispatcher, self.sock, self.local, sockets, counts, lambda: None)
        self.loop.add_reader(self.sock.fileno(), reader)
        self.started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.engine.close())
        self.loop.close()

    def sweep(self) -> None:
        """Run the engine's once-a-second sweep now, on its loop."""
        done = threading.Event()

        def run() -> None:
            self.engine._run(self.engine.relay.handle_timeout(self.now))
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(2)

    def client_entries(self) -> int:
        return sum(len(c) for c in self.engine.channels._clients.values())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def server() -> Iterator[InProcessServer]:
    srv = InProcessServer()
    srv.thread.start()
    assert srv.started.wait(5)
    yield srv
    srv.stop()


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(0.3)
    yield sock
    sock.close()


def _frame(payload: bytes, number: int = CHANNEL) -> bytes:
    return struct.pack("!HH", number, len(payload)) + payload


def _client(server: InProcessServer, peer: socket.socket) -> tuple[TurnClient, Address]:
    client = TurnClient(server.local.port, "alice", "wonderland", "natkit.test")
    client.sock.settimeout(0.3)
    assert code(client.allocate()) == 0
    peer_address = Address(*peer.getsockname())
    assert peer_address.host == HOST  # the relay only ever sends to loopback here
    assert code(client.channel_bind(CHANNEL, peer_address)) == 0
    return client, peer_address


def _relays_both_ways(client: TurnClient, peer: socket.socket, tag: bytes) -> bool:
    """One ChannelData to the peer and one datagram back; whether both arrived (as they must)."""
    client.sock.sendto(_frame(b"up " + tag), client.server)
    try:
        data, relay_address = peer.recvfrom(2048)
    except TimeoutError:
        return False
    assert data == b"up " + tag
    peer.sendto(b"down " + tag, relay_address)
    try:
        return client.sock.recv(2048) == _frame(b"down " + tag)
    except TimeoutError:
        return False


def _cached_route(
    server: InProcessServer, peer: socket.socket
) -> tuple[TurnClient, Address, Address]:
    """A client whose channel route is cached both ways (the first packet took the slow path):
    (client, peer address, relayed address)."""
    client, peer_address = _client(server, peer)
    assert _relays_both_ways(client, peer, b"warm")
    assert _relays_both_ways(client, peer, b"cached")
    assert client.relayed is not None
    return client, peer_address, client.relayed


def _nothing_relayed(client: TurnClient, peer: socket.socket, relay: Address) -> bool:
    client.sock.sendto(_frame(b"late"), client.server)
    peer.sendto(b"late", relay)
    for sock in (peer, client.sock):
        try:
            sock.recv(2048)
            return False
        except TimeoutError:
            pass
    return True


def test_routes_are_cached_and_counted(server: InProcessServer, peer: socket.socket) -> None:
    client, _ = _client(server, peer)
    for n in range(20):
        assert _relays_both_ways(client, peer, b"%d" % n)
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
    assert _nothing_relayed(client, peer, relay)  # before the sweep removed anything
    server.sweep()
    assert _nothing_relayed(client, peer, relay)
    assert code(client.permit([peer_address])) == 0  # RFC 8656 §9: the permission is back
    assert _relays_both_ways(client, peer, b"again")
    client.close()


def test_expired_channel_stops_both_ways(server: InProcessServer, peer: socket.socket) -> None:
    client, peer_address, relay = _cached_route(server, peer)
    server.now += CHANNEL_LIFETIME - 10
    assert code(client.refresh(600)) == 0
    assert code(client.permit([peer_address])) == 0  # the permission outlives the channel
    server.now += 20
    client.sock.sendto(_frame(b"late"), client.server)
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
    assert _nothing_relayed(client, peer, relay)
    assert server.client_entries() == 0
    client.close()


def test_hostile_frames_never_grow_the_cache(
    server: InProcessServer, peer: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = _client(server, peer)
    assert _relays_both_ways(client, peer, b"warm")
    unbound = sorted({*range(0x4000, 0x4800)} - {CHANNEL})
    # In rounds of 150 datagrams, fewer than the default receive buffer holds, each closed by a
    # relayed round trip: the kernel never drops the round trip for want of buffer, and every
    # round proves the route survived the frames before it.
    for start in range(0, len(unbound), 50):  # unbound numbers; short, padded frames
        for number in unbound[start : start + 50]:
            client.sock.sendto(_frame(b"x", number), client.server)
            client.sock.sendto(struct.pack("!HH", number, 9) + b"short", client.server)
            client.sock.sendto(_frame(b"abc", number) + b"\0", client.server)
        assert _relays_both_ways(client, peer, b"round %d" % start)
    for runt in (b"\x40\x01", b"\x40\x01\x00"):  # shorter than the ChannelData header
        client.sock.sendto(runt, client.server)
    stranger = TurnClient(server.local.port, "alice", "wonderland", "natkit.test")
    for start in range(0x4000, 0x4100, 128):  # ChannelData from a 5-tuple with no allocation
        for number in range(start, start + 128):
            stranger.sock.sendto(_frame(b"y", number), stranger.server)
        assert _relays_both_ways(client, peer, b"stranger %d" % start)
    assert _relays_both_ways(client, peer, b"still")
    assert server.client_entries() == 1
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []  # no traceback
    routes = server.engine.channels._clients[server.local]
    assert all(len(channels) == 1 for _, channels in routes.values())
    stranger.close()
    client.close()
