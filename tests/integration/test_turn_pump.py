"""The relay pump (`natkit.turn.pump`, ``turn.pump: auto``) on real loopback sockets: it relays
bound IPv4 UDP channels both ways and counts them, a route ends by itself at its expiry and
with its allocation, and everything it must not relay (hostile frames, strangers, a truncated
datagram) is left to the Python path untouched. Its C table is checked against a dict."""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.addr import Address
from natkit.config import loads
from natkit.fastpath.relay import ChannelRoute
from natkit.metrics import TURN_PACKETS_TO_CLIENT, TURN_PACKETS_TO_PEER
from natkit.net import mmsg
from natkit.serve.kernel import resolve_pump
from natkit.testing import wait_until
from natkit.turn import pump as pump_module
from natkit.turn.pump import Pump, PumpUnavailable
from tests.integration.inprocess_turn import (
    CHANNEL,
    InProcessServer,
    bound_client,
    frame,
    loopback_udp,
    nothing_relayed,
    relays_both_ways,
)
from tests.integration.turn_client import HOST, code

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not mmsg.available(), reason="the pump needs recvmmsg/sendmmsg"),
]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[InProcessServer]:
    """The engine on the real clock, its pump as the test asks (default auto)."""
    srv = InProcessServer(fake_clock=False, pump=getattr(request, "param", "auto"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    with loopback_udp() as sock:
        yield sock


def test_the_pump_relays_bound_channels_both_ways_and_counts_them(
    server: InProcessServer, peer: socket.socket
) -> None:
    assert server.engine.pump is not None, "turn.pump: auto, and the pump builds here"
    client, _ = bound_client(server, peer)
    assert server.on_loop(server.engine.pump.size) == 2  # one route, both directions
    for n in range(50):
        assert relays_both_ways(client, peer, b"%d" % n)
    # Python never saw a frame: its route caches are empty; the pump's counts reach the
    # engine's TURN counters at the once-a-second tick (here: now).
    assert server.client_entries() == 0
    assert server.engine_counters[TURN_PACKETS_TO_PEER] == 0
    pumped = server.engine.pumped
    assert pumped is not None
    server.on_loop(pumped.tick)
    assert server.engine_counters[TURN_PACKETS_TO_PEER] == 50
    assert server.engine_counters[TURN_PACKETS_TO_CLIENT] == 50
    client.close()


def test_a_padded_frame_and_a_data_indication_still_take_the_python_path(
    server: InProcessServer, peer: socket.socket
) -> None:
    client, _ = bound_client(server, peer)
    assert relays_both_ways(client, peer, b"warm")
    client.sock.sendto(frame(b"abc") + b"\0", client.server)  # padded: only legal over TCP
    data, relay_address = peer.recvfrom(2048)
    assert data == b"abc"  # the core relays what it accepts, as before
    # ... and only Python's cache learnt the route (read on the loop: it may still be at it)
    assert wait_until(lambda: server.on_loop(server.client_entries) == 1, 2)
    # Another peer port of the same IP has a permission but no channel: a Data indication.
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind((HOST, 0))
    try:
        other.sendto(b"no channel", relay_address)
        assert client.sock.recv(2048)[:2] == b"\x00\x17"  # RFC 8656 §11.3 Data indication
    finally:
        other.close()
    client.close()


def test_refresh_zero_removes_the_routes_at_once(
    server: InProcessServer, peer: socket.socket
) -> None:
    client, _ = bound_client(server, peer)
    assert relays_both_ways(client, peer, b"warm")
    assert client.relayed is not None
    relay = client.relayed
    assert code(client.refresh(0)) == 0
    pump = server.engine.pump
    assert pump is not None
    assert server.on_loop(pump.size) == 0
    assert nothing_relayed(client, peer, relay)
    client.close()


def test_aioice_relays_through_the_pump(server: InProcessServer, peer: socket.socket) -> None:
    """aioice (code natkit did not write) binds a channel after its first Send indication; from
    then on every datagram both ways goes through the pump, none through Python's caches."""
    from aioice import turn

    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Inbox(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                got.put_nowait(data)

        transport, _ = await turn.create_turn_endpoint(
            Inbox, (HOST, server.local.port), "alice", "wonderland"
        )
        peer.setblocking(False)
        answers = []
        try:
            peer_address = peer.getsockname()
            assert peer_address[0] == HOST  # the relay only ever sends to loopback here
            for i in range(20):
                transport.sendto(b"ping %d" % i, peer_address)
                data, relayed = await asyncio.wait_for(loop.sock_recvfrom(peer, 2048), 5)
                assert data == b"ping %d" % i
                peer.sendto(b"pong %d" % i, relayed)
                answers.append(await asyncio.wait_for(got.get(), 5))
            assert pump is not None and server.on_loop(pump.size) == 2  # one channel
            # Python counts what it relays at once, the pump at the tick or the allocation's
            # end: so far only the first datagram each way (a Send and a Data indication,
            # before aioice's ChannelBind) is counted.
            assert server.engine_counters[TURN_PACKETS_TO_PEER] <= 1
            assert server.engine_counters[TURN_PACKETS_TO_CLIENT] <= 1
        finally:
            transport.close()
            await asyncio.sleep(0.1)  # the Refresh(0) goes out
        return answers

    pump, pumped = server.engine.pump, server.engine.pumped
    assert asyncio.run(run()) == [b"pong %d" % i for i in range(20)]
    assert server.client_entries() == 0
    assert pumped is not None and server.on_loop(pumped.installed) == 0  # Refresh 0: gone
    assert server.engine_counters[TURN_PACKETS_TO_PEER] == 20
    assert server.engine_counters[TURN_PACKETS_TO_CLIENT] == 20


@pytest.mark.parametrize("server", ["off"], indirect=True)
def test_pump_off_relays_in_python(server: InProcessServer, peer: socket.socket) -> None:
    assert server.engine.pump is None
    client, _ = bound_client(server, peer)
    for n in range(5):
        assert relays_both_ways(client, peer, b"%d" % n)
    assert server.client_entries() == 1
    assert server.engine_counters[TURN_PACKETS_TO_PEER] == 5
    client.close()


# -- the pump alone: its routes, expiries and refusals ----------------------------------------


class Sockets:
    """A listener and a relay socket (the server's), a client and a peer, all on loopback."""

    def __init__(self) -> None:
        self.listener, self.relay = loopback_udp(), loopback_udp()
        self.client, self.peer = loopback_udp(), loopback_udp()
        for sock in (self.listener, self.relay):
            sock.setblocking(False)
        self.batch = mmsg.RecvBatch(batch=16, size=65535)

    def route(self, channel: int = CHANNEL) -> ChannelRoute:
        def addr(sock: socket.socket) -> Address:
            return Address(*sock.getsockname())

        return ChannelRoute(addr(self.client), addr(self.listener), addr(self.relay),
                            addr(self.peer), channel)  # fmt: skip

    def fds(self, route: ChannelRoute) -> tuple[int, int]:
        return self.listener.fileno(), self.relay.fileno()

    def close(self) -> None:
        for sock in (self.listener, self.relay, self.client, self.peer):
            sock.close()


@pytest.fixture
def socks() -> Iterator[Sockets]:
    pair = Sockets()
    yield pair
    pair.close()


def _to_peers(pump: Pump, socks: Sockets, datagram: bytes, size: int = 65535) -> int:
    """`datagram` from the client to the listener, read as the listener reads it, then the pump."""
    batch = socks.batch if size == 65535 else mmsg.RecvBatch(batch=4, size=size)
    socks.client.sendto(datagram, socks.listener.getsockname())
    for _ in range(100):
        n = batch.recv(socks.listener.fileno())
        if n:
            break
        time.sleep(0.002)
    assert n == 1
    relayed = pump.to_peers(socks.listener.fileno(), batch)(n)
    assert relayed == batch.handled[0]
    return relayed


def _from_peer(pump: Pump, socks: Sockets, datagram: bytes) -> int:
    socks.peer.sendto(datagram, socks.relay.getsockname())
    read = pump.from_peer(socks.relay.fileno(), socks.batch)
    for _ in range(100):
        result = read()
        if result:
            break
        time.sleep(0.002)
    assert result & 255 == 1, result
    return result >> 8


def test_a_route_relays_until_its_expiry_then_leaves_it_to_python(socks: Sockets) -> None:
    pump = Pump(socks.fds)
    try:
        route = socks.route()
        assert pump.install(route, int((time.monotonic() + 0.5) * 1e9))
        assert _to_peers(pump, socks, frame(b"hello")) == 1
        assert socks.peer.recvfrom(2048) == (b"hello", socks.relay.getsockname())
        assert _from_peer(pump, socks, b"back") == 1
        assert socks.client.recvfrom(2048) == (frame(b"back"), socks.listener.getsockname())
        assert pump.drain_counts([route]) == (1, 5, 1, 4)
        assert pump.drain_counts([route]) == (0, 0, 0, 0)  # what is new since the last call
        time.sleep(0.6)  # the route ends by itself: no call needed
        assert _to_peers(pump, socks, frame(b"late")) == 0
        assert _from_peer(pump, socks, b"late") == 0
        for sock in (socks.peer, socks.client):
            with pytest.raises(TimeoutError):
                sock.recv(2048)
        assert pump.install(route, int((time.monotonic() + 5) * 1e9))  # refreshed: again
        assert _to_peers(pump, socks, frame(b"again")) == 1
        pump.remove(route)
        assert pump.size() == 0
        assert _to_peers(pump, socks, frame(b"removed")) == 0
    finally:
        pump.close()


def test_what_the_pump_must_not_relay_is_left_untouched(socks: Sockets) -> None:
    pump = Pump(socks.fds)
    try:
        assert pump.install(socks.route(), int((time.monotonic() + 30) * 1e9))
        refused = [
            frame(b"abc") + b"\0",  # padded (RFC 8656 §12.5: not over UDP)
            struct.pack("!HH", CHANNEL, 9) + b"short",  # length beyond the datagram
            b"\x40\x01",  # runts
            b"\x40\x01\x00",
            frame(b"x", CHANNEL + 1),  # an unbound number
            frame(b"x", 0x8001),  # not ChannelData at all (RFC 7983)
            b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + os.urandom(12),  # a STUN request
        ]
        for datagram in refused:
            assert _to_peers(pump, socks, datagram) == 0, datagram
        assert _to_peers(pump, socks, frame(b"x" * 100), size=64) == 0  # truncated in the read
        stranger = loopback_udp()  # the right channel from another client port
        try:
            stranger.sendto(frame(b"x"), socks.listener.getsockname())
            time.sleep(0.01)
            n = socks.batch.recv(socks.listener.fileno())
            assert n == 1 and pump.to_peers(socks.listener.fileno(), socks.batch)(n) == 0
            stranger.sendto(b"from a stranger", socks.relay.getsockname())  # not the peer
            time.sleep(0.01)
            assert pump.from_peer(socks.relay.fileno(), socks.batch)() == 1  # read, not relayed
        finally:
            stranger.close()
        with pytest.raises(TimeoutError):
            socks.peer.recv(2048)
        with pytest.raises(TimeoutError):
            socks.client.recv(2048)
        assert _to_peers(pump, socks, frame(b"")) == 1  # an empty payload is a frame
        assert socks.peer.recv(2048) == b""
    finally:
        pump.close()


def test_one_poll_serves_every_watched_relay_socket(socks: Sockets) -> None:
    """pump_poll: the relay sockets in the pump's epoll set are read and relayed in one call;
    what it did not relay comes back with its socket's fd; a socket unwatched in the middle of
    a round is never read again, even when its fd number is reused at once."""
    pump = Pump(socks.fds)
    poll, ready = pump.poller(socks.batch, 64)
    other = loopback_udp()  # a second relay socket, with nothing installed
    other.setblocking(False)
    try:
        assert pump.install(socks.route(), int((time.monotonic() + 30) * 1e9))
        assert pump.watch(socks.relay.fileno()) and pump.watch(other.fileno())
        assert poll() == 0  # nothing ready
        for n in range(5):
            socks.peer.sendto(b"down %d" % n, socks.relay.getsockname())
        time.sleep(0.02)
        assert poll() == 0  # all five relayed in the call, nothing left for Python
        for n in range(5):
            assert socks.client.recv(2048) == frame(b"down %d" % n)
        socks.peer.sendto(b"to nobody", other.getsockname())  # no route: for Python
        time.sleep(0.02)
        result = poll()
        assert (result & 255, result >> 8, ready[0]) == (1, 0, other.fileno())
        assert socks.batch.datagram(0) == b"to nobody"
        assert poll() == 0
        # Both sockets ready in one round with nothing routed: the call returns for the first;
        # the second is unwatched and closed before the next call, and a new socket takes its
        # fd number at once. The round must not read the new socket.
        stranger = loopback_udp()
        try:
            for sock in (socks.relay, other):
                stranger.sendto(b"stranger", sock.getsockname())
            time.sleep(0.02)
            assert poll() > 0
            first = ready[0]
            second = other if first == socks.relay.fileno() else socks.relay
            number = second.fileno()
            pump.unwatch(number)
            second.close()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reused:
                assert reused.fileno() == number
                reused.bind((HOST, 0))
                stranger.sendto(b"not the pump's", reused.getsockname())
                time.sleep(0.02)
                assert poll() == 0
                reused.settimeout(1)
                assert reused.recv(2048) == b"not the pump's"  # still there: never read
        finally:
            stranger.close()
        if other.fileno() >= 0:
            pump.unwatch(other.fileno())
    finally:
        other.close()
        pump.close()


def test_the_table_agrees_with_a_dict_through_inserts_deletes_and_growth() -> None:
    lib = pump_module.load()
    handle = ctypes.c_void_p(lib.pump_new(1234, 4))  # tiny: it grows many times
    rng = random.Random(7)
    model: dict[tuple[int, int, int, int, int], int] = {}
    counts = (ctypes.c_uint64 * 2)()
    try:
        keys = [(rng.randrange(2), rng.randrange(8), rng.randrange(1 << 32), rng.randrange(4),
                 0x4000 + rng.randrange(4)) for _ in range(3000)]  # fmt: skip
        for step in range(20000):
            key = rng.choice(keys)
            norm = key if key[0] == 0 else (*key[:4], 0)  # to a client: no channel in the key
            if rng.random() < 0.55:
                assert lib.pump_set(handle, *key, 3, 1, 2, step) == 0
                model[norm] = step
            else:
                assert lib.pump_del(handle, *key) == (norm in model)
                model.pop(norm, None)
            if step % 500 == 0:
                assert lib.pump_size(handle) == len(model)
                for probe in rng.sample(keys, 200):
                    pnorm = probe if probe[0] == 0 else (*probe[:4], 0)
                    assert lib.pump_counts(handle, *probe, counts) == (pnorm in model)
        assert lib.pump_size(handle) == len(model)
    finally:
        lib.pump_free(handle)


def test_a_failed_build_says_why_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    with pytest.raises(
        PumpUnavailable,
        match=r"^compiling relay_pump\.c with false failed \(no output\); is gcc installed\?$",
    ) as err:
        pump_module.build_library(tmp_path)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_serve_without_a_compiler_says_so_once_and_relays_in_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The supervisor settles ``auto`` before the workers start: one warning line, and the
    workers get ``turn.pump: off`` (so none of them tries again and warns again)."""
    source = tmp_path / "relay_pump.c"  # a source with no library built beside it
    source.write_bytes(pump_module.SOURCE.read_bytes())
    monkeypatch.setattr(pump_module, "SOURCE", source)
    monkeypatch.setattr(pump_module, "_LIBRARY", None)
    monkeypatch.setenv("NATKIT_PUMP_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "false")
    config = loads(CONFIG_WITH_TURN)
    assert config.turn.pump == "auto"
    with caplog.at_level("WARNING"):
        settled = resolve_pump(config)
    assert settled.turn.pump == "off"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("turn.pump: auto: relaying in Python"), lines
    assert "compiling relay_pump.c with false failed" in lines[0]
    assert (
        resolve_pump(loads(CONFIG_WITH_TURN.replace("pump: auto", "pump: off"))).turn.pump == "off"
    )


CONFIG_WITH_TURN = """
version: 1
turn: {enabled: true, auth: {users: {alice: wonderland}}, pump: auto}
"""
