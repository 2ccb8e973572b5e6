"""`natkit serve` (builtin TURN) with RFC 8489 §9.2 long-term credentials, over real UDP on
loopback:

(a) a client that offers only SHA-256 (PASSWORD-ALGORITHM SHA-256, MESSAGE-INTEGRITY-SHA256
    and no MESSAGE-INTEGRITY; natkit's codec, tests/unit/turn_sha256_client.py) allocates,
    by USERNAME and by USERHASH, relays both ways through Send/Data indications, and every
    answer it gets carries a MESSAGE-INTEGRITY-SHA256 that verifies with its SHA-256 key;
(b) MD5-only clients natkit did not write are unchanged: aioice relays a datagram both ways,
    coturn's turnutils_uclient -s relays 20 messages with no loss;
(c) a man in the middle (the test, between the 401 and the client) that strips or edits
    PASSWORD-ALGORITHMS: the client notices the stripped one itself (§9.2.5); a client that
    signs anyway, or believes an edited offer, gets 400, counted as
    ``natkit_turn_refusals_total{reason="downgrade"}`` and logged with what was wrong.

Every peer is a socket of this test on 127.0.0.1 (checked before anything is sent to it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aioice import turn

from natkit.addr import Address
from natkit.stun.attributes import AttrValue
from natkit.stun.constants import AttrType, MessageClass, Method, PasswordAlgorithmId
from natkit.stun.integrity import (
    PASSWORD_ALGORITHMS_FEATURE,
    USERNAME_ANONYMITY_FEATURE,
    check_integrity_sha256,
    long_term_key,
    nonce_features,
)
from natkit.stun.message import Message, parse_message
from natkit.testing import Served, free_port, serve, stop_process, wait_until
from natkit.turn.auth import OFFER
from tests.integration.turn_client import TurnClient, code
from tests.unit.turn_sha256_client import MD5, Challenge, DowngradeDetected

pytestmark = [pytest.mark.integration]

HOST = "127.0.0.1"
USER, PASSWORD, REALM = "alice", "wonderland", "natkit.test"
SHA256_KEY = long_term_key(USER, REALM, PASSWORD, PasswordAlgorithmId.SHA256)
ALLOCATE: list[tuple[int, AttrValue]] = [(AttrType.REQUESTED_TRANSPORT, 17)]


def config(level: str = "warning") -> dict[str, Any]:
    port = free_port()
    return {
        "version": 1,
        "stun": {"listen": [f"udp://{HOST}:{port}"], "workers": 1},
        "turn": {
            "enabled": True,
            "engine": "builtin",
            "realm": REALM,
            "auth": {"users": {USER: PASSWORD}},
            "peers": {"allow": [f"{HOST}/32"]},  # these tests relay only to themselves
            "drain_timeout": 0.1,  # SIGTERM: exit at once, live allocations or not
        },
        "metrics": {"listen": f"{HOST}:{free_port('tcp')}"},
        "logging": {"level": level},
    }


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serve(config()) as running:
        yield running


def loopback(addr: tuple[str, int]) -> tuple[str, int]:
    """The network-safety rule: a relay is only ever asked to send to loopback."""
    assert ipaddress.ip_address(addr[0]).is_loopback, addr
    return addr


class Sha256Client(TurnClient):
    """A UDP 5-tuple speaking RFC 8489 long-term credentials, SHA-256 only. `tamper` plays
    the man in the middle: it edits every 401/438 before the client reads it."""

    def __init__(
        self,
        port: int,
        *,
        hashed: bool = False,
        tamper: Callable[[Message], Message] = lambda m: m,
        **sign: Any,
    ) -> None:
        super().__init__(port, USER, PASSWORD, REALM)
        self.hashed, self.tamper, self.sign = hashed, tamper, sign
        self.challenge: Challenge | None = None
        self.answers: list[Message] = []

    def exchange(self, data: bytes) -> Message:
        self._send(data)
        while True:
            answer = parse_message(self.recv())
            if answer.transaction_id == data[8:20]:
                return answer

    def fetch_challenge(self) -> Message:
        msg = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12), list(ALLOCATE))
        answer = self.tamper(self.exchange(msg.encode(fingerprint=True)))
        assert code(answer) == 401, answer
        return answer

    def ask(self, method: int, attrs: list[tuple[int, object]]) -> Message:
        for _ in range(3):
            if self.challenge is None:
                self.challenge = Challenge.read(self.fetch_challenge())
            msg = Message(method, MessageClass.REQUEST, os.urandom(12), list(attrs))  # type: ignore[arg-type]
            data = self.challenge.sign(msg, USER, PASSWORD, hashed=self.hashed, **self.sign)
            answer = self.exchange(data)
            if code(answer) != 438:
                self.answers.append(answer)
                return answer
            self.challenge = Challenge.read(self.tamper(answer))
        raise AssertionError("438 three times")


def _relay_round_trip(client: Sha256Client) -> None:
    """CreatePermission, a Send indication to a loopback peer, its answer as a Data indication."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((HOST, 0))
        peer.settimeout(5)
        peer_addr = Address(*loopback(peer.getsockname()))
        assert code(client.permit([peer_addr])) == 0
        tid = os.urandom(12)
        attrs: list[tuple[int, AttrValue]] = [
            (AttrType.XOR_PEER_ADDRESS, peer_addr),
            (AttrType.DATA, b"sha-256 hello"),
        ]
        client._send(Message(Method.SEND, MessageClass.INDICATION, tid, attrs).encode())
        data, source = peer.recvfrom(2048)
        assert client.relayed is not None and (data, source) == (b"sha-256 hello", client.relayed)
        peer.sendto(b"and back", loopback(client.relayed))
        indication = parse_message(client.recv())
        assert indication.method == Method.DATA and indication.get(AttrType.DATA) == b"and back"


@pytest.mark.parametrize("hashed", [False, True], ids=["username", "userhash"])
def test_a_sha256_only_client_allocates_and_relays(served: Served, hashed: bool) -> None:
    client = Sha256Client(served.port, hashed=hashed, fingerprint=True)
    try:
        challenge = client.fetch_challenge()
        assert challenge.get(AttrType.PASSWORD_ALGORITHMS) == OFFER  # SHA-256 first
        nonce = challenge.get(AttrType.NONCE)
        assert isinstance(nonce, str)
        features = nonce_features(nonce)
        assert features == PASSWORD_ALGORITHMS_FEATURE | USERNAME_ANONYMITY_FEATURE
        assert code(client.allocate()) == 0
        _relay_round_trip(client)
        assert code(client.refresh(0)) == 0
        for answer in client.answers:  # Allocate, CreatePermission, Refresh
            assert AttrType.MESSAGE_INTEGRITY not in answer
            assert check_integrity_sha256(answer.raw, SHA256_KEY), answer
    finally:
        client.close()


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait((data, addr[:2]))


async def _aioice_round_trip(port: int) -> tuple[bytes, bytes]:
    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(_Inbox, local_addr=(HOST, 0))
    client_transport, client = await turn.create_turn_endpoint(_Inbox, (HOST, port), USER, PASSWORD)
    try:
        relayed = tuple(client_transport.get_extra_info("sockname"))
        client_transport.sendto(b"md5 hello", loopback(peer_transport.get_extra_info("sockname")))
        there, source = await asyncio.wait_for(peer.got.get(), 5)
        assert source == relayed
        peer_transport.sendto(b"md5 back", loopback(relayed))  # type: ignore[arg-type]
        back, _ = await asyncio.wait_for(client.got.get(), 5)
        return there, back
    finally:
        client_transport.close()
        peer_transport.close()
        await asyncio.sleep(0.2)  # its Refresh(LIFETIME 0)


def test_an_md5_only_client_still_authenticates(served: Served) -> None:
    # aioice sends neither PASSWORD-ALGORITHM(S) nor MESSAGE-INTEGRITY-SHA256: MD5, as before.
    assert asyncio.run(_aioice_round_trip(served.port)) == (b"md5 hello", b"md5 back")


def _echo(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(4096)
        except TimeoutError:
            continue
        sock.sendto(data, loopback(addr))


@pytest.mark.skipif(shutil.which("turnutils_uclient") is None, reason="coturn not installed")
def test_turnutils_uclient_send_mode_still_relays(served: Served) -> None:
    # coturn's client (4.6.1) ignores PASSWORD-ALGORITHMS and signs with MD5.
    stop = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((HOST, 0))
        echo = threading.Thread(target=_echo, args=(peer, stop), daemon=True)
        echo.start()
        try:
            peer_port = str(peer.getsockname()[1])
            argv = ["turnutils_uclient", "-s", "-c", "-n", "20", "-u", USER, "-w", PASSWORD,
                    "-e", HOST, "-r", peer_port, "-p", str(served.port), HOST]  # fmt: skip
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        finally:
            stop.set()
            echo.join()
    assert "tot_send_msgs=20, tot_recv_msgs=20" in out, out
    assert "Total lost packets 0 " in out, out


def _without_offer(answer: Message) -> Message:
    kept = [(t, v) for t, v in answer.attributes if t != AttrType.PASSWORD_ALGORITHMS]
    return Message(answer.method, answer.message_class, answer.transaction_id, kept, answer.raw)


def _md5_only_offer(answer: Message) -> Message:
    edited = [(t, (MD5,) if t == AttrType.PASSWORD_ALGORITHMS else v) for t, v in answer.attributes]
    return Message(answer.method, answer.message_class, answer.transaction_id, edited, answer.raw)


def test_a_stripped_or_edited_offer_is_detected() -> None:
    with serve(config(level="info")) as running:
        careful = Sha256Client(running.port, tamper=_without_offer)
        naive = Sha256Client(running.port)
        fooled = Sha256Client(running.port, tamper=_md5_only_offer, choose=MD5)
        try:
            with pytest.raises(DowngradeDetected):  # RFC 8489 §9.2.5: the client's half
                careful.allocate()
            # A client that signs SHA-256 without the PASSWORD-ALGORITHMS it never saw.
            stripped = _without_offer(naive.fetch_challenge())
            realm, nonce = stripped.get(AttrType.REALM), stripped.get(AttrType.NONCE)
            assert isinstance(realm, str) and isinstance(nonce, str)
            naive.challenge = Challenge(realm, nonce, None)
            assert code(naive.allocate()) == 400
            # One that believed an offer cut down to MD5 and chose MD5.
            assert code(fooled.allocate()) == 400
            # The untouched client on the same server is fine.
            assert code(Sha256Client(running.port).allocate()) == 0
        finally:
            for client in (careful, naive, fooled):
                client.close()
        series = r'natkit_turn_refusals_total\{code="400",method="allocate",reason="downgrade"\}'
        assert wait_until(lambda: running.metric(series) == 2, 3.0), running.metrics()
        stop_process(running.proc)
        assert running.proc.stderr is not None
        log = running.proc.stderr.read()
    lines = [line for line in log.splitlines() if "refused 400 (downgrade)" in line]
    assert len(lines) == 2, log
    assert any("PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS" in line for line in lines)
    assert any("differs from the server's offer" in line for line in lines)
    assert PASSWORD not in log
