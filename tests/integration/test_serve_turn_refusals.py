"""Every TURN refusal of `natkit serve` (builtin engine) is counted and logged with its reason.

A raw TURN client on real sockets provokes, in order: the 401 challenge (no credentials yet), a
401 for a wrong password, a 403 for peers the policy refuses (loopback addresses outside the one
allowed: the relay refuses them, so nothing is ever sent there), and a 486 (quota 1 per user).
/metrics must show exact counts; the log one info line per refusal with
its reason, none for the challenge, and never the password. With two workers the counts of
clients the kernel spread over both are summed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest

from natkit.addr import Address
from natkit.stun.attributes import ErrorCode
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.integrity import long_term_key
from natkit.stun.message import Message, parse_message
from natkit.testing import wait_until
from tests.integration.conftest import HOST, Served, stop_process

pytestmark = [pytest.mark.integration]

USER, PASSWORD, REALM = "alice", "wonderland", "natkit.test"
TURN = {
    "enabled": True,
    "realm": REALM,
    "auth": {"users": {USER: PASSWORD}},
    "quota": {"per_user": 1},
    "peers": {"allow": [f"{HOST}/32"]},
}


class Client:
    """One UDP 5-tuple talking TURN with natkit's own codec (the messages are the test's)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(3)
        self.server = (HOST, port)
        self.nonce = ""

    def ask(self, method: int, attrs: list[tuple[int, object]], password: str | None) -> Message:
        tid = os.urandom(12)
        msg = Message(method, MessageClass.REQUEST, tid, list(attrs))  # type: ignore[arg-type]
        key = None
        if password is not None:
            msg.attributes += [
                (AttrType.USERNAME, USER),
                (AttrType.REALM, REALM),
                (AttrType.NONCE, self.nonce),
            ]
            key = long_term_key(USER, REALM, password)
        self.sock.sendto(msg.encode(integrity_key=key, fingerprint=True), self.server)
        while True:
            answer = parse_message(self.sock.recv(2048))
            if answer.transaction_id == tid:
                nonce = answer.get(AttrType.NONCE)
                if isinstance(nonce, str):
                    self.nonce = nonce
                return answer

    def allocate(self, password: str | None) -> int:
        answer = self.ask(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)], password)
        return _code(answer)

    def close(self) -> None:
        self.sock.close()


def _code(answer: Message) -> int:
    error = answer.get(AttrType.ERROR_CODE)
    return error.code if isinstance(error, ErrorCode) else 0


def test_refusals_are_counted_and_logged_with_their_reason(
    natkit_serve: Callable[..., Served],
) -> None:
    # One worker: quotas count per worker (SO_REUSEPORT spreads 5-tuples over workers).
    served = natkit_serve(stun={"workers": 1}, turn=TURN, logging={"level": "info"})
    first, second = Client(served.port), Client(served.port)
    try:
        assert first.allocate(None) == 401  # the challenge: carries REALM and NONCE
        assert first.allocate("not-the-password") == 401
        assert first.allocate(PASSWORD) == 0
        for peer in ("127.0.0.2", "127.0.0.3", "127.0.0.2"):
            attrs = [(AttrType.XOR_PEER_ADDRESS, Address(peer, 9))]
            answer = first.ask(Method.CREATE_PERMISSION, attrs, PASSWORD)  # type: ignore[arg-type]
            assert _code(answer) == 403
        assert second.allocate(None) == 401
        assert second.allocate(PASSWORD) == 486  # alice holds one allocation already
    finally:
        first.close()
        second.close()
    series = r"natkit_turn_refusals_total\{{code=\"{}\",method=\"{}\",reason=\"{}\"\}}"
    expected = {
        ("401", "allocate", "challenge"): 2,
        ("401", "allocate", "credentials"): 1,
        ("403", "create_permission", "peer_policy"): 3,
        ("486", "allocate", "quota"): 1,
    }
    deadline_ok = wait_until(lambda: served.metric(r"natkit_turn_refusals_total\{.*") == 7, 3.0)
    assert deadline_ok, served.metrics()
    for labels, count in expected.items():
        assert served.metric(series.format(*labels)) == count, labels
    stop_process(served.proc)
    assert served.proc.stderr is not None
    log = served.proc.stderr.read()
    refused = [line for line in log.splitlines() if "TURN " in line and " refused " in line]
    assert len(refused) == 5, refused  # 1 credentials + 3 peer policy + 1 quota; no challenge
    assert sum("refused 401 (credentials)" in line for line in refused) == 1
    assert sum("peer 127.0.0.2 refused by the peer policy" in line for line in refused) == 2
    assert sum("peer 127.0.0.3 refused by the peer policy" in line for line in refused) == 1
    assert sum("refused 486 (quota)" in line and "'alice'" in line for line in refused) == 1
    assert all(" INFO " in line for line in refused)
    assert "not-the-password" not in log and PASSWORD not in log


def test_refusals_are_summed_over_workers(natkit_serve: Callable[..., Served]) -> None:
    served = natkit_serve(stun={"workers": 2}, turn=TURN, logging={"level": "warning"})
    clients = [Client(served.port) for _ in range(12)]
    try:
        for client in clients:
            assert client.allocate(None) == 401
            assert client.allocate("wrong") == 401
    finally:
        for client in clients:
            client.close()
    assert "(STUN + TURN, 2 workers)" in served.lines[0]
    total = r"natkit_turn_refusals_total\{.*"
    assert wait_until(lambda: served.metric(total) == 24, 3.0), served.metrics()
    labels = 'code="401",method="allocate",reason="{}"'
    assert served.metric(r"natkit_turn_refusals_total\{" + labels.format("challenge") + r"\}") == 12
    assert (
        served.metric(r"natkit_turn_refusals_total\{" + labels.format("credentials") + r"\}") == 12
    )


def test_a_nonce_from_one_worker_verifies_on_every_worker(
    natkit_serve: Callable[..., Served],
) -> None:
    """The kernel spreads 5-tuples over the workers; a nonce is bound to the client IP, not the
    port (natkit.turn.auth), so one client's nonce must verify whichever worker a new 5-tuple of
    it lands on. With a key per worker about half of these got 438 (and a log line each)."""
    turn = {**TURN, "quota": {"per_user": 100}}
    served = natkit_serve(stun={"workers": 2}, turn=turn, logging={"level": "warning"})
    first = Client(served.port)
    clients = [Client(served.port) for _ in range(16)]
    try:
        assert first.allocate(None) == 401  # the challenge: its nonce is the one to share
        codes = []
        for client in clients:
            client.nonce = first.nonce
            codes.append(client.allocate(PASSWORD))
    finally:
        for client in [first, *clients]:
            client.close()
    assert codes == [0] * len(clients), codes
