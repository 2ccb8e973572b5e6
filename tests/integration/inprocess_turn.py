"""A builtin TURN engine on one real UDP listener in this process, and the channel helpers the
ChannelData path tests share (`test_turn_channel_routes`, `test_turn_pump`).

With a fake clock (`now` in the test's hands) the engine relays in Python: the relay pump's
expiries are on CLOCK_MONOTONIC, so it runs only on the real clock (``clock=None``)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from natkit.addr import Address
from natkit.config import loads
from natkit.metrics import COUNTERS
from natkit.net.routes import Dispatcher
from natkit.net.udp import udp_reader
from natkit.stun.binding import BindingHandler
from natkit.turn.builtin import BuiltinTurn
from tests.integration.turn_client import HOST, TurnClient, code

__all__ = ["CHANNEL", "InProcessServer", "bound_client", "frame", "loopback_udp",
           "nothing_relayed", "relays_both_ways"]  # fmt: skip

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
  pump: {pump}
"""


class InProcessServer:
    """One UDP listener and a `BuiltinTurn` on an event loop in a thread. With `fake_clock` the
    engine's clock is `now` (the test moves it); else time.monotonic."""

    def __init__(self, *, fake_clock: bool = True, pump: str = "auto") -> None:
        low = (40000 if fake_clock else 42000) + os.getpid() % 18000
        self.engine_counters = [0] * COUNTERS
        self.now = 1000.0
        config = loads(CONFIG.format(low=low, high=low + 20, pump=pump))
        if fake_clock:
            self.engine = BuiltinTurn(config, clock=lambda: self.now,
                                      counters=self.engine_counters)  # fmt: skip
        else:
            self.engine = BuiltinTurn(config, counters=self.engine_counters)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.local = Address(HOST, self.sock.getsockname()[1])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = threading.Event()

    def start(self) -> None:
        self.thread.start()
        assert self.started.wait(5)

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

    def on_loop(self, call: Callable[[], Any]) -> Any:
        """`call()` on the engine's loop; its result."""
        done, result = threading.Event(), []

        def run() -> None:
            result.append(call())
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(2)
        return result[0]

    def sweep(self) -> None:
        """Run the engine's once-a-second sweep now, on its loop."""
        self.on_loop(lambda: self.engine._run(self.engine.relay.handle_timeout(self.now)))

    def client_entries(self) -> int:
        """Routes in the Python path's client cache (`natkit.turn.channel_routes`)."""
        return sum(len(c) for c in self.engine.channels._clients.values())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.sock.close()


def loopback_udp(timeout: float = 0.3) -> socket.socket:
    """A UDP socket on 127.0.0.1 (a peer, a client) with a short receive timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(timeout)
    return sock


def frame(payload: bytes, number: int = CHANNEL) -> bytes:
    return struct.pack("!HH", number, len(payload)) + payload


def bound_client(server: InProcessServer, peer: socket.socket) -> tuple[TurnClient, Address]:
    """A client with an allocation and CHANNEL bound to `peer`: (client, peer address)."""
    client = TurnClient(server.local.port, "alice", "wonderland", "natkit.test")
    client.sock.settimeout(0.3)
    assert code(client.allocate()) == 0
    peer_address = Address(*peer.getsockname())
    assert peer_address.host == HOST  # the relay only ever sends to loopback here
    assert code(client.channel_bind(CHANNEL, peer_address)) == 0
    return client, peer_address


def relays_both_ways(client: TurnClient, peer: socket.socket, tag: bytes) -> bool:
    """One ChannelData to the peer and one datagram back; whether both arrived (as they must)."""
    client.sock.sendto(frame(b"up " + tag), client.server)
    try:
        data, relay_address = peer.recvfrom(2048)
    except TimeoutError:
        return False
    assert data == b"up " + tag
    peer.sendto(b"down " + tag, relay_address)
    try:
        return client.sock.recv(2048) == frame(b"down " + tag)
    except TimeoutError:
        return False


def nothing_relayed(client: TurnClient, peer: socket.socket, relay: Address) -> bool:
    """A frame each way on a route that must be gone: whether neither arrived."""
    client.sock.sendto(frame(b"late"), client.server)
    peer.sendto(b"late", relay)
    for sock in (peer, client.sock):
        try:
            sock.recv(2048)
            return False
        except TimeoutError:
            pass
    return True
