"""Graceful drain of `natkit serve` (builtin TURN): SIGTERM stops new allocations, not old ones.

After SIGTERM an allocation made before it keeps relaying both ways, STUN Binding is still
answered, /readyz turns 503 (/healthz stays 200), and a new Allocate gets 300 Try Alternate
naming ``turn.alternate_server`` (RFC 8489 §10) or, without one, 508. The process exits 0 as soon
as the last allocation is deleted (Refresh 0), or when ``turn.drain_timeout`` runs out.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Callable

import pytest

from natkit.addr import Address
from natkit.stun.constants import AttrType
from natkit.stun.message import parse_message
from natkit.testing import wait_until
from tests.integration.conftest import HOST, Served, binding_request
from tests.integration.turn_client import TurnClient, code

pytestmark = [pytest.mark.integration]

USER, PASSWORD, REALM = "alice", "wonderland", "natkit.test"
ALTERNATE = "127.0.0.1:3479"  # only named in the 300, never contacted
CHANNEL = 0x4000


def _turn(**extra: object) -> dict[str, object]:
    return {
        "enabled": True,
        "realm": REALM,
        "auth": {"users": {USER: PASSWORD}},
        "peers": {"allow": [f"{HOST}/32"]},
        **extra,
    }


def _relay_once(client: TurnClient, peer: socket.socket, payload: bytes) -> None:
    client._send(struct.pack("!HH", CHANNEL, len(payload)) + payload)
    data, source = peer.recvfrom(2048)
    assert data == payload
    peer.sendto(payload[::-1], source)
    assert client.recv() == struct.pack("!HH", CHANNEL, len(payload)) + payload[::-1]


def _binding_answered(port: int) -> bool:
    request, tid = binding_request()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(request, (HOST, port))
        return parse_message(s.recv(2048)).transaction_id == tid


def _allocated(served: Served, peer: socket.socket) -> TurnClient:
    client = TurnClient(served.port, USER, PASSWORD, REALM)
    assert code(client.allocate()) == 0
    peer_address = Address(HOST, peer.getsockname()[1])
    assert code(client.channel_bind(CHANNEL, peer_address)) == 0
    _relay_once(client, peer, b"before SIGTERM")
    return client


@pytest.fixture
def peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(5)
    yield sock  # type: ignore[misc]
    sock.close()


def test_drain_keeps_relaying_redirects_new_allocations_and_ends_with_the_last(
    natkit_serve: Callable[..., Served], peer: socket.socket
) -> None:
    turn = _turn(alternate_server=ALTERNATE, drain_timeout=60)
    served = natkit_serve(stun={"workers": 1}, turn=turn)
    assert wait_until(lambda: served.status("/readyz") == 200)
    client = _allocated(served, peer)
    newcomer = TurnClient(served.port, USER, PASSWORD, REALM)
    try:
        os.kill(served.proc.pid, signal.SIGTERM)  # the supervisor only, as systemd would
        assert wait_until(lambda: served.status("/readyz") == 503)
        assert served.status("/healthz") == 200
        for i in range(5):
            _relay_once(client, peer, f"after SIGTERM {i}".encode())
        assert _binding_answered(served.port)
        answer = newcomer.allocate()
        assert code(answer) == 300, answer
        assert answer.get(AttrType.ALTERNATE_SERVER) == Address("127.0.0.1", 3479)
        assert code(client.refresh(600)) == 0  # the old allocation may still be refreshed
        assert served.proc.poll() is None
        started = time.monotonic()
        assert code(client.refresh(0)) == 0  # the last allocation ends: so does the drain
        assert served.proc.wait(10) == 0
        assert time.monotonic() - started < 10  # long before drain_timeout
    finally:
        client.close()
        newcomer.close()
    assert served.proc.stderr is not None
    log = served.proc.stderr.read()
    assert "refused 300 (alternate_server)" in log, log


def test_without_an_alternate_new_allocations_get_508_and_the_timeout_ends_the_drain(
    natkit_serve: Callable[..., Served], peer: socket.socket
) -> None:
    served = natkit_serve(stun={"workers": 2}, turn=_turn(drain_timeout=2))
    client = _allocated(served, peer)
    newcomer = TurnClient(served.port, USER, PASSWORD, REALM)
    try:
        started = time.monotonic()
        os.kill(served.proc.pid, signal.SIGTERM)
        assert wait_until(lambda: served.status("/readyz") == 503)
        time.sleep(0.3)  # /readyz turns first; the workers take their SIGTERM a moment later
        _relay_once(client, peer, b"still relaying")
        assert code(newcomer.allocate()) == 508
        assert served.proc.wait(15) == 0
        elapsed = time.monotonic() - started
        assert 2.0 <= elapsed < 10, elapsed  # held by the allocation until drain_timeout
    finally:
        client.close()
        newcomer.close()
    assert served.proc.stderr is not None
    log = served.proc.stderr.read()
    assert "refused 508 (draining)" in log, log
