"""TURN observability of `natkit serve` (builtin engine): /metrics after a scripted exchange.

One client allocates, refreshes, binds a channel to a loopback peer the config allows and relays
N ChannelData frames each way; a second user's client collects a 401 (wrong password), the same
user's second client a 486 (quota 1), the first a 403 (a peer outside the allowed /32: refused
before anything is sent). Every series must then show its exact count (gauges, relayed packets
and bytes by direction, allocation outcomes, refusals), and after a Refresh 0 the gauges fall back
to zero and `deleted` counts one. /healthz and /readyz answer 200 while serving.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import pytest

from natkit.addr import Address
from natkit.testing import wait_until
from tests.integration.conftest import HOST, Served, stop_process
from tests.integration.turn_client import TurnClient, code

pytestmark = [pytest.mark.integration]

USER, PASSWORD, REALM = "alice", "wonderland", "natkit.test"
TURN = {
    "enabled": True,
    "realm": REALM,
    "auth": {"users": {USER: PASSWORD, "bob": "builder"}},
    "quota": {"per_user": 1},
    "peers": {"allow": [f"{HOST}/32"]},
}
N, SIZE = 25, 100
CHANNEL = 0x4000


def _relay_both_ways(client: TurnClient, peer: socket.socket) -> None:
    assert client.relayed is not None
    for i in range(N):
        payload = bytes([i]) * SIZE
        client._send(struct.pack("!HH", CHANNEL, SIZE) + payload)
        data, source = peer.recvfrom(2048)
        assert data == payload and source[1] == client.relayed.port
        peer.sendto(payload, source)
        frame = client.recv()
        assert frame == struct.pack("!HH", CHANNEL, SIZE) + payload


def test_a_scripted_exchange_shows_exact_counts(natkit_serve: Callable[..., Served]) -> None:
    served = natkit_serve(stun={"workers": 1}, turn=TURN, logging={"level": "info"})
    assert served.status("/healthz") == 200
    assert wait_until(lambda: served.status("/readyz") == 200)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((HOST, 0))
    peer.settimeout(5)
    client = TurnClient(served.port, USER, PASSWORD, REALM)
    second = TurnClient(served.port, USER, PASSWORD, REALM)
    wrong = TurnClient(served.port, "bob", "not-the-password", REALM)
    try:
        assert code(client.allocate()) == 0
        assert code(client.refresh(600)) == 0
        peer_address = Address(HOST, peer.getsockname()[1])
        assert code(client.channel_bind(CHANNEL, peer_address)) == 0
        _relay_both_ways(client, peer)
        assert code(client.permit([Address("127.0.0.2", 9)])) == 403
        assert code(second.allocate()) == 486
        assert code(wrong.allocate()) == 401
        expected = {
            r'natkit_turn_allocations\{transport="udp",family="ipv4"\}': 1,
            r"natkit_turn_allocations\{.*\}": 1,
            "natkit_turn_permissions": 1,
            "natkit_turn_channels": 1,
            "natkit_turn_pump_routes": 1,  # turn.pump: auto relayed them in C
            r'natkit_turn_relayed_packets_total\{direction="client_to_peer"\}': N,
            r'natkit_turn_relayed_packets_total\{direction="peer_to_client"\}': N,
            r'natkit_turn_relayed_bytes_total\{direction="client_to_peer"\}': N * SIZE,
            r'natkit_turn_relayed_bytes_total\{direction="peer_to_client"\}': N * SIZE,
            r'natkit_turn_allocation_outcomes_total\{outcome="created"\}': 1,
            r'natkit_turn_allocation_outcomes_total\{outcome="refreshed"\}': 1,
            r'natkit_turn_allocation_outcomes_total\{outcome="expired"\}': 0,
            r'natkit_turn_allocation_outcomes_total\{outcome="deleted"\}': 0,
            r'natkit_turn_refusals_total\{code="403",method="create_permission",'
            r'reason="peer_policy"\}': 1,
            r'natkit_turn_refusals_total\{code="486",method="allocate",reason="quota"\}': 1,
            # TurnClient's first request carries an empty nonce: a 438 for each of the three
            # clients, then bob's two tries with the fresh nonce get 401.
            r'natkit_turn_refusals_total\{code="438",method="allocate",'
            r'reason="stale_nonce"\}': 3,
            r'natkit_turn_refusals_total\{code="401",method="allocate",'
            r'reason="credentials"\}': 2,
            r"natkit_turn_refusals_total\{.*\}": 7,
        }
        assert wait_until(lambda: _counts(served, expected) == expected), served.metrics()
        assert code(client.refresh(0)) == 0
        after = {
            r"natkit_turn_allocations\{.*\}": 0,
            "natkit_turn_permissions": 0,
            "natkit_turn_channels": 0,
            "natkit_turn_pump_routes": 0,
            r'natkit_turn_allocation_outcomes_total\{outcome="deleted"\}': 1,
            r'natkit_turn_allocation_outcomes_total\{outcome="expired"\}': 0,
        }
        assert wait_until(lambda: _counts(served, after) == after), served.metrics()
    finally:
        for c in (client, second, wrong):
            c.close()
        peer.close()
    assert stop_process(served.proc) == 0
    assert served.proc.stderr is not None
    log = served.proc.stderr.read()
    assert sum("TURN allocation created: relay" in line for line in log.splitlines()) == 1, log
    assert sum("TURN allocation deleted: relay" in line for line in log.splitlines()) == 1, log


def _counts(served: Served, expected: dict[str, int]) -> dict[str, int]:
    return {pattern: int(served.metric(pattern)) for pattern in expected}


def test_an_allocation_that_runs_out_counts_as_expired(
    natkit_serve: Callable[..., Served],
) -> None:
    turn = {**TURN, "lifetime": {"default": 1, "max": 1}}
    served = natkit_serve(stun={"workers": 1}, turn=turn, logging={"level": "info"})
    client = TurnClient(served.port, USER, PASSWORD, REALM)
    try:
        assert code(client.allocate()) == 0
        outcome = r'natkit_turn_allocation_outcomes_total\{{outcome="{}"\}}'
        expected = {outcome.format("expired"): 1, outcome.format("deleted"): 0}
        expected[r"natkit_turn_allocations\{.*\}"] = 0
        assert wait_until(lambda: _counts(served, expected) == expected), served.metrics()
    finally:
        client.close()
    assert stop_process(served.proc) == 0
    assert served.proc.stderr is not None
    log = served.proc.stderr.read()
    assert "TURN allocation expired: relay" in log, log
