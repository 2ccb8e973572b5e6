"""`natkit serve` with the builtin TURN engine and the rendezvous, as a user runs it (loopback).

- Relayed media is not throttled by the STUN request limit: with `stun.rate_limit` at 5/s (burst
  5), 200 ChannelData packets from one client reach the peer, while Binding requests from that
  same source IP beyond the burst are dropped.
- `signal.enabled` makes serve print a ``signal http://...`` line; a pairing works through it;
  SIGTERM exits 0 and leaves no process and no bound port behind.
- TURN over TCP (aioice, transport="tcp") relays through natkit serve.

The relay refuses loopback peers by default; these configs open exactly 127.0.0.1/32.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from aioice import turn

from tests.integration.conftest import (
    HOST,
    Served,
    alive,
    binding_request,
    free_port,
    stop_process,
)

pytestmark = [pytest.mark.integration]

USER, PASSWORD = "alice", "wonderland"
TURN_ON: dict[str, Any] = {
    "enabled": True,
    "engine": "builtin",
    "auth": {"users": {USER: PASSWORD}},
    # 127.0.0.0/8 is in the default deny list (an open relay into the host); the tests relay to
    # themselves, so open exactly the one address.
    "peers": {"allow": [f"{HOST}/32"]},
}
PACKETS = 200
# UDP on loopback may lose a datagram under load (full socket buffer); a throttled relay would
# deliver about `burst` of them, so 98% separates the two without flaking.
MIN_DELIVERED = 196


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait((data, addr[:2]))


async def _drain(inbox: _Inbox, quiet: float) -> list[bytes]:
    """Everything that arrives until nothing came for `quiet` seconds."""
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            data, _ = await asyncio.wait_for(inbox.got.get(), quiet)
            got.append(data)
    return got


async def _relay(server: tuple[str, int], transport: str, count: int) -> tuple[list[bytes], str]:
    """Send `count` packets client -> relay -> peer, answer the last one back; what the peer
    got and what the client got back."""
    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(_Inbox, local_addr=(HOST, 0))
    client_transport, client = await turn.create_turn_endpoint(
        _Inbox, server, USER, PASSWORD, transport=transport
    )
    try:
        relayed = tuple(client_transport.get_extra_info("sockname"))
        peer_addr = peer_transport.get_extra_info("sockname")[:2]
        # The first send binds a channel (one ChannelBind request); the rest go as ChannelData.
        client_transport.sendto(b"first", peer_addr)
        data, source = await asyncio.wait_for(peer.got.get(), 5)
        assert (data, source) == (b"first", relayed)
        for i in range(count):
            client_transport.sendto(b"media %03d " % i + bytes(100), peer_addr)
            if i % 20 == 19:
                await asyncio.sleep(0.005)  # ~4000 packets/s: far above 5/s, kind to buffers
        delivered = await _drain(peer, 1.0)
        peer_transport.sendto(b"pong", relayed)
        back, _ = await asyncio.wait_for(client.got.get(), 5)
        return delivered, back.decode()
    finally:
        client_transport.close()
        peer_transport.close()
        await asyncio.sleep(0.2)  # let the Refresh(LIFETIME 0) go out


def _binding_burst(port: int, count: int, wait: float = 1.0) -> int:
    """Send `count` Binding requests at once from 127.0.0.1; how many were answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        tids = set()
        for _ in range(count):
            request, tid = binding_request()
            tids.add(tid)
            sock.sendto(request, (HOST, port))
        answered = set()
        sock.settimeout(wait)
        with contextlib.suppress(TimeoutError):
            while True:
                data = sock.recv(2048)
                if data[8:20] in tids:
                    answered.add(data[8:20])
    return len(answered)


def test_media_is_not_throttled_by_the_stun_request_limit(
    natkit_serve: Callable[..., Served],
) -> None:
    served = natkit_serve(stun={"rate_limit": {"per_source": 5, "burst": 5}}, turn=TURN_ON)
    assert "(STUN + TURN, 1 worker)" in served.lines[0]
    started = time.monotonic()
    delivered, back = asyncio.run(_relay((HOST, served.port), "udp", PACKETS))
    assert back == "pong"
    assert len(delivered) >= MIN_DELIVERED, f"{len(delivered)}/{PACKETS} relayed"
    assert len(set(delivered)) == len(delivered)  # nothing duplicated
    # The same source IP's Binding requests are still limited: about `burst` plus what the
    # bucket refilled (5/s) since the TURN requests (Allocate x2, ChannelBind) drew on it.
    answered = _binding_burst(served.port, 30)
    refill = 5 * (time.monotonic() - started)
    assert 1 <= answered <= 5 + refill + 1, answered
    assert served.metric(r'natkit_stun_ratelimited_total\{transport="udp"\}') >= 30 - answered


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        raw: bytes = response.read()
        return response.status, json.loads(raw) if raw else None


def test_serve_runs_the_rendezvous_and_sigterm_leaves_nothing(
    natkit_serve: Callable[..., Served],
) -> None:
    signal_port = free_port()
    served = natkit_serve(turn=TURN_ON, signal={"enabled": True, "listen": f"{HOST}:{signal_port}"})
    # serve prints every `listening` line, then `signal`, then `metrics`.
    url = f"http://{HOST}:{signal_port}"
    metrics = f"metrics http://{HOST}:{served.metrics_port}/metrics"
    assert served.lines[-2:] == [f"signal {url}", metrics], served.lines
    status, pairing = _http("POST", f"{url}/v1/pair")
    assert status == 201 and pairing["ttl"] > 0
    code = pairing["code"]
    offer = {"type": "offer", "sdp": "v=0\r\n"}
    assert _http("PUT", f"{url}/v1/pair/{code}/offer", offer)[0] == 204
    assert _http("GET", f"{url}/v1/pair/{code}/offer?wait=1") == (200, offer)

    workers = served.workers()
    assert workers
    os.kill(served.proc.pid, signal.SIGTERM)
    assert served.proc.wait(15) == 0
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if alive(pid)]
    # Every listener is closed: the ports bind again (SO_REUSEADDR only looks past the closed
    # HTTP connections in TIME_WAIT; a listener still there would make bind fail).
    for kind, port in (
        (socket.SOCK_STREAM, signal_port),
        (socket.SOCK_STREAM, served.port),
        (socket.SOCK_DGRAM, served.port),
    ):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, port))
    assert stop_process(served.proc) == 0


def test_turn_over_tcp_relays(natkit_serve: Callable[..., Served]) -> None:
    served = natkit_serve(turn=TURN_ON)
    delivered, back = asyncio.run(_relay((HOST, served.port), "tcp", 50))
    # TCP to the server: nothing may be lost between the client and the relay; the last hop to
    # the peer is loopback UDP at a gentle rate.
    assert len(delivered) == 50 and back == "pong"
