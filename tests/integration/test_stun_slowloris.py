"""Slow-loris against the TCP listeners (issue 11 #4), on real loopback sockets.

50 connections from 127.0.0.2 trickle one byte a second into a STUN header and hold every slot
of a 50-slot worker (the issue's 1 byte every 2 s, faster here so the test is short). Legitimate
clients from 127.0.0.3 must still get in: Binding over TCP answered, a TURN allocation over TCP
relays; the slow ones are cut `frame_timeout` after their first byte (a deadline no byte
extends). When full, newcomers evict idle connections, never the one relaying for an allocation.
A source over `max_connections_per_source` is refused while others are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from aioice import turn

from tests.integration.conftest import HOST, MAGIC, Served, binding_request

pytestmark = pytest.mark.integration

Serve = Callable[..., Served]
USER, PASSWORD = "alice", "wonderland"
FRAME_TIMEOUT = 4.0
SLOTS = 50
TURN_ON: dict[str, Any] = {
    "enabled": True,
    "auth": {"users": {USER: PASSWORD}},
    "peers": {"allow": [f"{HOST}/32"]},  # the peer is a socket of this test
}


async def _slow(port: int, started: asyncio.Event) -> float:
    """Trickle a Binding request a byte a second from 127.0.0.2; seconds from the first byte
    until the server closed the connection."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=("127.0.0.2", 0))
    request = binding_request()[0]
    first = loop.time()
    started.set()
    try:
        for i in range(len(request)):
            writer.write(request[i : i + 1])
            with contextlib.suppress(TimeoutError):
                if not await asyncio.wait_for(reader.read(100), 1.0):
                    break
        return loop.time() - first
    except ConnectionError:
        return loop.time() - first
    finally:
        writer.transport.abort()


async def _binding(port: int, source: str) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    try:
        request, tid = binding_request()
        writer.write(request)
        answer = await asyncio.wait_for(reader.readexactly(20), 3)
        assert answer[8:20] == tid
        return answer[:2]
    finally:
        writer.close()


class _Peer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait(data)


async def _turn_client(port: int) -> turn.TurnClientTcpProtocol:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: turn.TurnClientTcpProtocol(
            (HOST, port), USER, PASSWORD, lifetime=600, channel_refresh_time=500
        ),
        HOST,
        port,
        local_addr=("127.0.0.3", 0),
    )
    await asyncio.wait_for(client.connect(), 5)
    return client


async def _relays(client: turn.TurnClientTcpProtocol, peer: _Peer, port: int, n: int) -> bool:
    payload = b"media %d" % n
    await asyncio.wait_for(client.send_data(payload, (HOST, port)), 5)
    with contextlib.suppress(TimeoutError):
        while True:
            if await asyncio.wait_for(peer.got.get(), 3) == payload:
                return True
    return False


async def _wait_metric(served: Served, pattern: str, value: float, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(served.metric, pattern) < value:
        assert time.monotonic() < deadline, f"{pattern} never reached {value}"
        await asyncio.sleep(0.1)


async def _attack(served: Served) -> None:
    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(_Peer, local_addr=(HOST, 0))
    peer_port = peer_transport.get_extra_info("sockname")[1]
    events = [asyncio.Event() for _ in range(SLOTS)]
    slow = [asyncio.create_task(_slow(served.port, e)) for e in events]
    client = None
    idle: list[asyncio.StreamWriter] = []
    try:
        await asyncio.gather(*(e.wait() for e in events))
        await _wait_metric(served, "natkit_stun_connections", SLOTS)  # every slot is held
        client = await _turn_client(served.port)
        assert await _relays(client, peer, peer_port, 1)
        answers = await asyncio.gather(*(_binding(served.port, "127.0.0.3") for _ in range(5)))
        assert answers == [b"\x01\x01"] * 5  # all 5 legitimate clients served
        lifetimes = await asyncio.wait_for(asyncio.gather(*slow), FRAME_TIMEOUT + 10)
        # Six were evicted for the newcomers; the rest were cut at the frame deadline.
        cut = sorted(lifetimes)[6:]
        assert all(FRAME_TIMEOUT - 1.5 <= t <= FRAME_TIMEOUT + 2 for t in cut), lifetimes
        # Fill every slot again with idle connections: they evict each other, never the
        # connection relaying for an allocation.
        for _ in range(SLOTS + 10):
            _, writer = await asyncio.open_connection(
                HOST, served.port, local_addr=("127.0.0.4", 0)
            )
            idle.append(writer)
        await asyncio.sleep(0.5)
        assert await _relays(client, peer, peer_port, 2)
        assert await _binding(served.port, "127.0.0.3") == b"\x01\x01"
    finally:
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        for writer in idle:
            writer.transport.abort()
        if client is not None:
            client.transport.close()
        peer_transport.close()


def test_slow_connections_cannot_hold_the_tcp_slots(natkit_serve: Serve) -> None:
    served = natkit_serve(
        stun={"stream": {"max_connections": SLOTS, "frame_timeout": FRAME_TIMEOUT}},
        turn=TURN_ON,
    )
    asyncio.run(_attack(served))
    assert served.metric(r'natkit_stun_errors_total\{kind="frame_timeout"\}') >= SLOTS - 6
    assert served.metric(r'natkit_stun_errors_total\{kind="evicted"\}') >= 6


async def _per_source(served: Served) -> list[bool]:
    held = []
    refused = []
    try:
        for _ in range(15):
            reader, writer = await asyncio.open_connection(
                HOST, served.port, local_addr=("127.0.0.2", 0)
            )
            held.append(writer)
            writer.write(struct.pack("!HHI", 1, 0, MAGIC) + bytes(12))
            try:
                refused.append(await asyncio.wait_for(reader.read(100), 3) == b"")
            except ConnectionError:
                refused.append(True)
        assert await _binding(served.port, "127.0.0.3") == b"\x01\x01"
    finally:
        for writer in held:
            writer.transport.abort()
    return refused


def test_a_source_over_its_connection_cap_is_refused(natkit_serve: Serve) -> None:
    served = natkit_serve(stun={"stream": {"max_connections_per_source": 10}})
    refused = asyncio.run(_per_source(served))
    assert refused == [False] * 10 + [True] * 5
    pattern = r'natkit_stun_errors_total\{kind="source_limit"\}'
    assert asyncio.run(_wait_metric(served, pattern, 5)) is None
