"""The clients of tests/integration/test_soak.py: legitimate ones and attackers (threads).

Each runs until `Soak.until`, bounded in rate, and records what it was served (`Soak.ok`) or
was not (`Soak.fail`). All traffic goes to the natkit serve under test on loopback; the permission
flood installs permissions for public addresses but never sends anything to them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from natkit.addr import Address
from natkit.stun import AttrType, Message, MessageClass, Method, parse_message
from natkit.stun.errors import StunDecodeError
from natkit.stun.framing import build_channel_data, parse_channel_data
from natkit.stun.integrity import long_term_key
from tests.integration.conftest import HOST, binding_request

LIFETIME = 3  # seconds: turn.lifetime default and the shortest granted
REALM = "natkit.soak"
USERS = {"alice": "wonderland", "mallory": "attacker"}
ATTACKER = "127.0.0.2"  # the sources that matter for per-source caps; legit clients use .1
FUZZER = "127.0.0.3"
MAX_CONNECTIONS = 64  # stream slots per worker: few, so that slowloris could hold them all


# -- a TURN client on natkit's codec ----------------------------------------------------------


class TurnError(Exception):
    pass


@dataclass
class TurnClient:
    """One UDP 5-tuple speaking TURN with long-term credentials (blocking, with timeouts)."""

    server: Address
    user: str
    sock: socket.socket = field(init=False)
    nonce: str = ""

    def __post_init__(self) -> None:
        self.key = long_term_key(self.user, REALM, USERS[self.user])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.connect(self.server)
        self.sock.settimeout(0.5)

    def request(self, method: int, attrs: Sequence[tuple[int, Any]], tries: int = 6) -> Message:
        """A signed request; 401/438 take the new nonce and retry; lost datagrams are resent."""
        for _ in range(tries):
            auth = [(AttrType.USERNAME, self.user), (AttrType.REALM, REALM),
                    (AttrType.NONCE, self.nonce)]  # fmt: skip
            msg = Message(method, MessageClass.REQUEST, os.urandom(12), [*attrs, *auth])
            self.sock.send(msg.encode(integrity_key=self.key))
            answer = self._answer(msg.transaction_id)
            if answer is None:
                continue
            if answer.message_class is MessageClass.SUCCESS:
                return answer
            code = answer.get(AttrType.ERROR_CODE)
            if getattr(code, "code", 0) in (401, 438) and answer.get(AttrType.NONCE):
                self.nonce = str(answer.get(AttrType.NONCE))
                continue
            raise TurnError(f"{method:#x}: {code!r}")
        raise TurnError(f"{method:#x}: no answer")

    def _answer(self, tid: bytes) -> Message | None:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, ConnectionRefusedError):
                return None
            with contextlib.suppress(StunDecodeError):
                if data[:1] in (b"\x01", b"\x00") and len(data) >= 20 and data[8:20] == tid:
                    return parse_message(data)
        return None

    def allocate(self) -> Address:
        ok = self.request(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17),
                                            (AttrType.LIFETIME, LIFETIME)])  # fmt: skip
        relayed = ok.get(AttrType.XOR_RELAYED_ADDRESS)
        assert isinstance(relayed, Address)
        return relayed

    def round_trip(self, payload: bytes, tries: int = 4) -> bool:
        """ChannelData 0x4000 → relay → echo peer → relay → back; retried if lost."""
        for _ in range(tries):
            self.sock.send(build_channel_data(0x4000, payload))
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                try:
                    data = self.sock.recv(65535)
                except (TimeoutError, ConnectionRefusedError):
                    break
                with contextlib.suppress(StunDecodeError):
                    if data[:1] == b"\x40" and parse_channel_data(data).data == payload:
                        return True
        return False


# -- the pieces of the soak -------------------------------------------------------------------


@dataclass
class Soak:
    server: Address
    signal: Address
    until: float
    peer: Address
    failures: list[str] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def running(self) -> bool:
        return time.monotonic() < self.until

    def ok(self, what: str) -> None:
        with self.lock:
            self.served[what] = self.served.get(what, 0) + 1

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


def echo_peer(soak: Soak, sock: socket.socket) -> None:
    sock.settimeout(0.2)
    while soak.running() or time.monotonic() < soak.until + 2:
        with contextlib.suppress(TimeoutError, OSError):
            data, addr = sock.recvfrom(65535)
            sock.sendto(data, addr)


def legit_udp(soak: Soak, index: int) -> None:
    """Allocate, relay, then end it by Refresh(0), by expiry + re-allocation, or abandon it."""
    client = TurnClient(soak.server, "alice")
    cycle = 0
    try:
        while soak.running():
            try:
                client.allocate()
                bind = [(AttrType.CHANNEL_NUMBER, 0x4000), (AttrType.XOR_PEER_ADDRESS, soak.peer)]
                client.request(Method.CHANNEL_BIND, bind)
            except TurnError as err:
                soak.fail(f"udp client {index} cycle {cycle}: {err}")
                time.sleep(0.5)
                client.sock.close()
                client = TurnClient(soak.server, "alice")
                continue
            for k in range(5):
                payload = b"soak %d %d %d" % (index, cycle, k)
                if client.round_trip(payload):
                    soak.ok("round trip")
                else:
                    soak.fail(f"udp client {index} cycle {cycle}: round trip {k} lost")
            soak.ok("allocation")
            end = (cycle + index) % 3
            if end == 0:
                with contextlib.suppress(TurnError):
                    client.request(Method.REFRESH, [(AttrType.LIFETIME, 0)])
            elif end == 1:
                time.sleep(LIFETIME + 0.05)  # re-allocate right at expiry, before the sweep
            else:
                client.sock.close()
                client = TurnClient(soak.server, "alice")
            cycle += 1
        with contextlib.suppress(TurnError):
            client.request(Method.REFRESH, [(AttrType.LIFETIME, 0)])
    finally:
        client.sock.close()


def legit_tcp(soak: Soak) -> None:
    while soak.running():
        request, tid = binding_request()
        try:
            with socket.create_connection(soak.server, timeout=3) as conn:
                conn.sendall(request)
                answer = conn.recv(2048)
            if answer[8:20] != tid:
                raise OSError("no Binding answer")
            soak.ok("tcp binding")
        except OSError as err:
            soak.fail(f"tcp client: {err!r}")
        time.sleep(1.0)


def _http(signal: Address, source: str, method: str, path: str, body: bytes = b"",
          timeout: float = 5) -> tuple[int, bytes]:  # fmt: skip
    conn = http.client.HTTPConnection(*signal, timeout=timeout, source_address=(source, 0))
    try:
        conn.request(method, path, body=body)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _pairing(signal: Address) -> None:
    """A whole exchange (create, offer, answer, read): the store then drops the pairing."""
    status, body = _http(signal, HOST, "POST", "/v1/pair")
    if status != 201:
        raise OSError(f"POST /v1/pair: status {status}")
    code = json.loads(body)["code"]
    for slot in ("offer", "answer"):
        sdp = json.dumps({"type": slot, "sdp": f"v=0 soak {slot}"}).encode()
        status, _ = _http(signal, HOST, "PUT", f"/v1/pair/{code}/{slot}", sdp)
        if status != 204:
            raise OSError(f"PUT {slot}: status {status}")
    status, body = _http(signal, HOST, "GET", f"/v1/pair/{code}/answer?wait=1")
    if status != 200 or json.loads(body)["sdp"] != "v=0 soak answer":
        raise OSError(f"GET answer: status {status}")


def legit_signal(soak: Soak) -> None:
    while soak.running():
        try:
            _pairing(soak.signal)
            soak.ok("pairing")
        except (OSError, ValueError, KeyError) as err:
            soak.fail(f"signal client: {err!r}")
        time.sleep(1.0)


def _udp_from(source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    return sock


def _paced(soak: Soak, rate: float, step: Callable[[int], None]) -> None:
    """Call `step(i)` about `rate` times a second until the soak ends (bounded)."""
    start, i = time.monotonic(), 0
    while soak.running():
        step(i)
        i += 1
        ahead = start + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def attack_fuzz(soak: Soak) -> None:
    rng = random.Random(11)
    valid = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12),
                    [(AttrType.REQUESTED_TRANSPORT, 17)]).encode()  # fmt: skip
    with _udp_from(FUZZER) as sock:

        def step(i: int) -> None:
            data = bytearray(rng.randbytes(rng.randrange(0, 600)))
            if i % 2 == 0:  # a STUN or ChannelData header with random bytes behind it
                data = bytearray(valid + rng.randbytes(rng.randrange(0, 200)))
                for _ in range(rng.randrange(1, 8)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                if i % 10 == 0:
                    data[0] = 0x40
            with contextlib.suppress(OSError):
                sock.sendto(bytes(data), soak.server)
            if i % 200 == 0:  # and now and then a TCP connection of fuzzed frames
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(
                        soak.server, timeout=1, source_address=(FUZZER, 0)
                    ) as conn,
                ):
                    conn.sendall(valid[:2] + struct.pack("!H", 4000) + rng.randbytes(300))

        _paced(soak, 1000, step)


def attack_username(soak: Soak) -> None:
    digits = b"9" * 5000  # > 4,300 digits: int() used to raise on every datagram
    attr = struct.pack("!HH", AttrType.USERNAME, len(digits)) + digits
    transport = struct.pack("!HHI", AttrType.REQUESTED_TRANSPORT, 4, 17 << 24)
    body = transport + attr
    with _udp_from(ATTACKER) as sock:

        def step(i: int) -> None:
            header = struct.pack("!HHI", Method.ALLOCATE, len(body), 0x2112A442) + os.urandom(12)
            with contextlib.suppress(OSError):
                sock.sendto(header + body, soak.server)

        _paced(soak, 200, step)


def attack_unauth(soak: Soak) -> None:
    socks = [_udp_from(ATTACKER) for _ in range(32)]
    request = [(AttrType.REQUESTED_TRANSPORT, 17)]
    try:

        def step(i: int) -> None:
            msg = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12), list(request))
            with contextlib.suppress(OSError):
                socks[i % len(socks)].sendto(msg.encode(), soak.server)

        _paced(soak, 1000, step)
    finally:
        for sock in socks:
            sock.close()


def attack_permissions(soak: Soak) -> None:
    """One allocation kept alive (Refresh) collecting permissions: CreatePermission with 400
    peers in 1.0.0.0/8 twenty times a second (permissions only: nothing is ever sent to them)."""
    rng = random.Random(7)
    client = TurnClient(soak.server, "mallory")
    try:
        refresh = 0.0
        while soak.running():
            try:
                if time.monotonic() > refresh:
                    try:
                        client.request(Method.REFRESH, [(AttrType.LIFETIME, 2 * LIFETIME)])
                    except TurnError:
                        client.allocate()
                    refresh = time.monotonic() + LIFETIME / 2
                peers: list[tuple[int, Any]] = [
                    (AttrType.XOR_PEER_ADDRESS, Address(_public(rng), 9)) for _ in range(400)
                ]
                client.request(Method.CREATE_PERMISSION, peers, tries=1)
                soak.ok("permission flood")
            except TurnError as err:
                soak.ok(f"permission flood refused: {str(err)[:40]}")  # a cap, or lost
            time.sleep(0.05)
        with contextlib.suppress(TurnError):
            client.request(Method.REFRESH, [(AttrType.LIFETIME, 0)])
    finally:
        client.sock.close()


def _public(rng: random.Random) -> str:
    return f"1.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def attack_slowloris(soak: Soak) -> None:
    conns: list[socket.socket] = []
    try:
        while soak.running():
            while len(conns) < MAX_CONNECTIONS + 10:
                try:
                    conn = socket.create_connection(soak.server, timeout=1,
                                                    source_address=(ATTACKER, 0))  # fmt: skip
                except OSError:
                    break
                conns.append(conn)
            for conn in list(conns):
                try:
                    conn.send(b"\x00")  # one byte of a STUN header, every 2 s
                except OSError:
                    conns.remove(conn)
                    conn.close()
            time.sleep(2.0)
    finally:
        for conn in conns:
            conn.close()


def attack_signal(soak: Soak) -> None:
    def step(i: int) -> None:
        with contextlib.suppress(OSError):
            _http(soak.signal, ATTACKER, "POST", "/v1/pair", timeout=2)

    _paced(soak, 50, step)


ATTACK_RUNNERS: dict[str, Callable[[Soak], None]] = {
    "fuzz": attack_fuzz,
    "username": attack_username,
    "unauth": attack_unauth,
    "permissions": attack_permissions,
    "slowloris": attack_slowloris,
    "signal": attack_signal,
}
