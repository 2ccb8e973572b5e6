"""`natkit.turn.refusals`: each error answer of the sans-IO relay explained, and the log bounded."""

from __future__ import annotations

import logging

import pytest

from natkit.addr import Address
from natkit.metrics import COUNTERS, TURN_METHODS, TURN_REASONS, render, turn_refusal_index
from natkit.stun.constants import AttrType, Method
from natkit.turn.credentials import mint
from natkit.turn.refusals import Refusal, RefusalLog, explain, is_error_response
from natkit.turn.relay import SendToClient
from tests.unit.test_turn_relay_client import PEER, SECRET, T0, Client, make_relay

A = AttrType


def refusal_of(client: Client, request: bytes) -> Refusal | None:
    commands = client.send_raw(request)
    assert len(commands) == 1 and isinstance(commands[0], SendToClient)
    assert is_error_response(commands[0].data)
    return explain(request, commands[0].data, client.address, client.relay.policy.is_allowed)


def test_challenge_credentials_and_expired_rest_credentials() -> None:
    client = Client(make_relay(), password="wrong-secret-pw")
    challenge = client.build(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)], sign=False)
    assert refusal_of(client, challenge) == Refusal(
        401, "allocate", "challenge", "198.51.100.7:40000 (no user): challenge (no credentials yet)"
    )
    client.nonce = str(client.response().get(A.NONCE))
    refusal = refusal_of(client, client.build(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)]))
    assert refusal is not None and (refusal.code, refusal.reason) == (401, "credentials")
    assert "user 'alice'" in refusal.detail and "wrong-secret-pw" not in refusal.detail
    cred = mint(SECRET, "bob", ttl=60, now=T0 - 3600)
    rest = Client(client.relay, username=cred.username, password=cred.password, nonce=client.nonce)
    refusal = refusal_of(rest, rest.build(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)]))
    assert refusal is not None and "REST API credential expired" in refusal.detail


def test_peer_policy_quota_and_mismatch() -> None:
    client = Client(make_relay(per_user=1))
    assert client.allocate().get(A.ERROR_CODE) is None
    peers = [(A.XOR_PEER_ADDRESS, PEER), (A.XOR_PEER_ADDRESS, Address("10.0.0.1", 9))]
    refusal = refusal_of(client, client.build(Method.CREATE_PERMISSION, peers))
    assert refusal is not None
    assert (refusal.code, refusal.method, refusal.reason) == (
        403,
        "create_permission",
        "peer_policy",
    )
    assert refusal.detail.endswith("peer 10.0.0.1 refused by the peer policy (turn.peers)")
    again = refusal_of(client, client.build(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)]))
    assert again is not None and (again.code, again.reason) == (437, "allocation_mismatch")
    other = Client(client.relay, address=Address("198.51.100.8", 1), nonce=client.nonce)
    other.nonce = None
    other.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)])  # fetches a nonce: 486
    quota = refusal_of(other, other.build(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)]))
    assert quota is not None and (quota.code, quota.method, quota.reason) == (
        486,
        "allocate",
        "quota",
    )


def test_success_is_not_an_error_response() -> None:
    client = Client(make_relay())
    client.allocate()
    (answer,) = [c for c in client.last if isinstance(c, SendToClient)]
    assert not is_error_response(answer.data)
    assert not is_error_response(b"\x40\x00\x00\x04abcd")  # ChannelData


def _refusal(reason: str = "peer_policy") -> Refusal:
    return Refusal(403, "create_permission", reason, "127.0.0.1:9 (user 'alice'): peer 10.0.0.1")


def test_the_log_is_rate_limited_per_reason_and_says_how_much_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = RefusalLog(logging.getLogger("test.refusals"), rate=1.0, burst=10)
    with caplog.at_level(logging.DEBUG, logger="test.refusals"):
        for _ in range(1000):  # a flood within one instant
            log(_refusal(), 100.0)
        log(_refusal("quota"), 100.0)  # another reason has its own budget
        log(_refusal(), 101.0)  # one second later: one token back
        log(_refusal("challenge"), 101.0)
    lines = [r for r in caplog.records if r.name == "test.refusals"]
    assert len(lines) == 13
    assert "990 more peer_policy refusals not logged" in lines[11].getMessage()
    assert [r.levelno for r in lines[-2:]] == [logging.INFO, logging.DEBUG]
    assert lines[0].getMessage() == (
        "TURN create_permission refused 403 (peer_policy): 127.0.0.1:9 (user 'alice'): "
        "peer 10.0.0.1"
    )


def test_refusal_series_render_once_non_zero() -> None:
    assert len({turn_refusal_index(r, m) for r, _ in TURN_REASONS for m in TURN_METHODS}) == len(
        TURN_REASONS
    ) * len(TURN_METHODS)
    totals = [0] * COUNTERS
    totals[turn_refusal_index("peer_policy", "channel_bind")] = 4
    text = render(totals, [])
    assert "# TYPE natkit_turn_refusals_total counter" in text
    series = [line for line in text.splitlines() if line.startswith("natkit_turn_refusals")]
    assert series == [
        'natkit_turn_refusals_total{code="403",method="channel_bind",reason="peer_policy"} 4'
    ]


def test_the_allocation_log_is_rate_limited_per_event(caplog: pytest.LogCaptureFixture) -> None:
    from natkit.addr import Transport
    from natkit.turn.allocation import Allocation, FiveTuple
    from natkit.turn.refusals import AllocationLog

    five = FiveTuple(Address("127.0.0.1", 4000), Address("127.0.0.1", 3478), Transport.UDP)
    alloc = Allocation(five, Address("127.0.0.1", 50000), Address("127.0.0.1", 50000), "alice",
                       "alice", b"k" * 16, expires=700.0)  # fmt: skip
    log = AllocationLog(logging.getLogger("test.allocations"), rate=1.0, burst=3)
    with caplog.at_level(logging.INFO, logger="test.allocations"):
        for _ in range(50):  # an allocation flood within one instant
            log("created", alloc, 100.0)
        log("expired", alloc, 100.0)  # its own budget
        log("created", alloc, 101.0)  # a second later: one token back
    lines = [r.getMessage() for r in caplog.records if r.name == "test.allocations"]
    assert len(lines) == 5, lines
    assert lines[0] == (
        "TURN allocation created: relay 127.0.0.1:50000 for 127.0.0.1:4000 over udp "
        "(user 'alice'), lifetime 600 s"
    )
    assert lines[3].startswith("TURN allocation expired: relay 127.0.0.1:50000")
    assert lines[4].endswith("(47 more allocations created not logged)")
