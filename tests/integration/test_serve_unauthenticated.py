"""What `natkit serve` (STUN + builtin TURN, RFC 5780 alternate) gives a client that never
authenticated, over real UDP sockets on loopback (issue 11, items 10 and 12):

- the amplification table: for every unauthenticated request type, STUN and TURN, answer bytes /
  request bytes <= 3.5 (UDP payloads; printed with ``pytest -s``);
- an oversized USERNAME (5,000 digits, the REST API ``expiry:user`` shape) is dropped at decode:
  2,000 such datagrams give no answer and no traceback, and the server keeps serving.

Every peer address in these requests is 127.0.0.1; nothing is relayed anywhere.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from natkit.addr import Address
from natkit.stun.attributes import AttrValue, ChangeRequest
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.integrity import long_term_key
from natkit.stun.message import Message, parse_message
from natkit.turn.credentials import mint
from tests.integration.conftest import HOST, Served, free_port, has_ipv6_loopback, stop_process

pytestmark = [pytest.mark.integration]

A = AttrType
REALM = "natkit.local"
SECRET = "amplification-test-secret"
USER, PASSWORD = "alice", "wonderland"
LIMIT = 3.5
PEER: list[tuple[int, AttrValue]] = [(A.XOR_PEER_ADDRESS, Address(HOST, 9))]  # never relayed to
BIND: list[tuple[int, AttrValue]] = [(A.CHANNEL_NUMBER, 0x4000), *PEER]

Serve = Callable[..., Served]


@dataclass
class Client:
    """One UDP socket (one 5-tuple) talking to the server; answers may come from any address."""

    server: tuple[str, int]
    sock: socket.socket
    nonce: str = ""

    def exchange(self, data: bytes, wait: float = 1.0, sock: socket.socket | None = None) -> bytes:
        """Send `data`; the answer with its transaction id (b"" if none within `wait`)."""
        self.sock.sendto(data, self.server)
        inbox = sock or self.sock
        inbox.settimeout(wait)
        try:
            while True:
                answer = inbox.recv(65535)
                if answer[8:20] == data[8:20] or answer[4:20] == data[4:20]:
                    return answer
        except TimeoutError:
            return b""

    def request(self, method: int, attrs: list[tuple[int, AttrValue]], **kw: object) -> bytes:
        return Message(method, MessageClass.REQUEST, os.urandom(12), list(attrs)).encode(**kw)  # type: ignore[arg-type]

    def signed(
        self, method: int, attrs: list[tuple[int, AttrValue]], username: str, password: str
    ) -> bytes:
        extra = [(A.USERNAME, username), (A.REALM, REALM), (A.NONCE, self.nonce)]
        key = long_term_key(username, REALM, password)
        return self.request(method, [*attrs, *extra], integrity_key=key)

    def fetch_nonce(self) -> None:
        challenge = parse_message(self.exchange(self.request(Method.ALLOCATE, ALLOCATE)))
        self.nonce = str(challenge.get(A.NONCE))

    def allocate(self) -> None:
        self.fetch_nonce()
        answer = parse_message(
            self.exchange(self.signed(Method.ALLOCATE, ALLOCATE, USER, PASSWORD))
        )
        assert answer.message_class is MessageClass.SUCCESS, answer


ALLOCATE: list[tuple[int, AttrValue]] = [(A.REQUESTED_TRANSPORT, 17)]


@pytest.fixture
def served(natkit_serve: Serve) -> Served:
    port = free_port()
    return natkit_serve(
        port=port,
        stun={
            "listen": [f"udp://{HOST}:{port}"],
            "alternate": f"127.0.0.2:{free_port('127.0.0.2')}",
            "rate_limit": {"enabled": False},  # measure answers, not the token bucket
        },
        turn={"enabled": True, "engine": "builtin", "realm": REALM,
              "auth": {"secret": SECRET, "users": {USER: PASSWORD}}},
    )  # fmt: skip


def _legacy_binding() -> bytes:
    return struct.pack("!HH", 0x0001, 0) + os.urandom(16)


def _cases(c: Client) -> list[tuple[str, str, Callable[[], tuple[bytes, bytes]]]]:
    """(protocol, request type, run) where run() returns (request, answer)."""

    def plain(
        method: int, attrs: list[tuple[int, AttrValue]], **kw: object
    ) -> Callable[[], tuple[bytes, bytes]]:
        def run() -> tuple[bytes, bytes]:
            data = c.request(method, attrs, **kw)
            return data, c.exchange(data, wait=0.5)

        return run

    def legacy() -> tuple[bytes, bytes]:
        data = _legacy_binding()
        return data, c.exchange(data)

    def response_port() -> tuple[bytes, bytes]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind((HOST, 0))
            data = c.request(Method.BINDING, [(A.RESPONSE_PORT, other.getsockname()[1])])
            return data, c.exchange(data, sock=other)

    def unknown_user() -> tuple[bytes, bytes]:
        c.fetch_nonce()
        data = c.signed(Method.ALLOCATE, ALLOCATE, "mallory", "x")
        return data, c.exchange(data)

    def rest_forged() -> tuple[bytes, bytes]:
        c.fetch_nonce()
        cred = mint("not-the-secret", "mallory", 3600, now=__import__("time").time())
        data = c.signed(Method.ALLOCATE, ALLOCATE, cred.username, cred.password)
        return data, c.exchange(data)

    def indication() -> tuple[bytes, bytes]:
        msg = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12), [*PEER, (A.DATA, b"x")])
        data = msg.encode()
        return data, c.exchange(data, wait=0.5)

    def raw(data: bytes) -> Callable[[], tuple[bytes, bytes]]:
        return lambda: (data, c.exchange(data, wait=0.5))

    change: list[tuple[int, AttrValue]] = [(A.CHANGE_REQUEST, ChangeRequest(True, True))]
    return [
        ("STUN", "Binding", plain(Method.BINDING, [])),
        ("STUN", "Binding + FINGERPRINT", plain(Method.BINDING, [], fingerprint=True)),
        ("STUN", "Binding + CHANGE-REQUEST (IP+port)", plain(Method.BINDING, change)),
        ("STUN", "Binding + PADDING 64", plain(Method.BINDING, [(A.PADDING, bytes(64))])),
        ("STUN", "Binding + RESPONSE-PORT", response_port),
        ("STUN", "Binding, RFC 3489", legacy),
        ("STUN", "Binding + unknown attribute (420)", plain(Method.BINDING, [(0x7F01, b"")])),
        ("STUN", "malformed", raw(b"\x00\x01\x00\x04" + bytes(16))),
        ("TURN", "Allocate, no attributes", plain(Method.ALLOCATE, [])),
        ("TURN", "Allocate + REQUESTED-TRANSPORT (401)", plain(Method.ALLOCATE, ALLOCATE)),
        ("TURN", "Allocate + REQUESTED-TRANSPORT + FINGERPRINT",
         plain(Method.ALLOCATE, ALLOCATE, fingerprint=True)),
        ("TURN", "Allocate, unknown user", unknown_user),
        ("TURN", "Allocate, forged REST credential", rest_forged),
        ("TURN", "Refresh, no allocation", plain(Method.REFRESH, [])),
        ("TURN", "CreatePermission, no allocation", plain(Method.CREATE_PERMISSION, PEER)),
        ("TURN", "CreatePermission, no peer", plain(Method.CREATE_PERMISSION, [])),
        ("TURN", "ChannelBind, no allocation", plain(Method.CHANNEL_BIND, BIND)),
        ("TURN", "ChannelBind, no attributes", plain(Method.CHANNEL_BIND, [])),
        ("TURN", "unknown method 0x00F", plain(0x00F, [])),
        ("TURN", "Send indication", indication),
        ("TURN", "malformed", raw(b"\x00\x03\x00\x04" + bytes(16))),
    ]  # fmt: skip


def _live_cases(c: Client) -> list[tuple[str, str, Callable[[], tuple[bytes, bytes]]]]:
    """Unsigned requests from a 5-tuple that holds an allocation: these are challenged."""

    def plain(method: int, attrs: list[tuple[int, AttrValue]]) -> Callable[[], tuple[bytes, bytes]]:
        def run() -> tuple[bytes, bytes]:
            data = c.request(method, attrs)
            return data, c.exchange(data)

        return run

    return [
        ("TURN", "Refresh, live allocation", plain(Method.REFRESH, [])),
        ("TURN", "CreatePermission, live allocation", plain(Method.CREATE_PERMISSION, PEER)),
        ("TURN", "ChannelBind, live allocation", plain(Method.CHANNEL_BIND, BIND)),
    ]


def test_no_unauthenticated_answer_exceeds_3_5x(served: Served) -> None:
    rows: list[tuple[str, str, int, int]] = []
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        a.bind((HOST, 0))
        b.bind((HOST, 0))
        fresh, live = Client((HOST, served.port), a), Client((HOST, served.port), b)
        live.allocate()
        for proto, name, run in [*_cases(fresh), *_live_cases(live)]:
            request, answer = run()
            rows.append((proto, name, len(request), len(answer)))
    print("\n| protocol | unauthenticated request | request | answer | ratio |")
    print("|---|---|---:|---:|---:|")
    for proto, name, req, ans in rows:
        print(f"| {proto} | {name} | {req} | {ans or '-'} | {ans / req:.1f}x |")
    over = [(p, n, r, s) for p, n, r, s in rows if s > LIMIT * r]
    assert not over, over
    answered = {n for _, n, _, s in rows if s}
    # The cases that must be answered are (a test that silently got nothing proves nothing).
    assert {"Binding", "Binding + CHANGE-REQUEST (IP+port)", "Binding + RESPONSE-PORT",
            "Allocate + REQUESTED-TRANSPORT (401)", "Allocate, unknown user",
            "Refresh, live allocation", "Refresh, no allocation"} <= answered  # fmt: skip
    assert not answered & {"malformed", "Send indication"}


def test_oversized_username_flood_gives_no_traceback_and_no_answer(served: Served) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        c = Client((HOST, served.port), sock)
        c.fetch_nonce()
        # The REST API shape "expiry:user" with an expiry int() refuses (> 4,300 digits).
        # Our encoder refuses a USERNAME that long: send it as an unknown type, then retype it
        # (the MAC no longer matches, but the credential parse came before the MAC check).
        placeholder = [(0x7FFF, b"9" * 5000 + b":mallory")]
        flood = c.request(Method.ALLOCATE, [*ALLOCATE, *placeholder, (A.REALM, REALM),
                                            (A.NONCE, c.nonce)], integrity_key=b"x")  # fmt: skip
        flood = flood.replace(b"\x7f\xff\x13\x90", b"\x00\x06\x13\x90", 1)
        for _ in range(2000):
            sock.sendto(flood, (HOST, served.port))
        assert c.exchange(flood, wait=1.0) == b""  # dropped as malformed, like any other
        # A long but legal username is refused the ordinary way (401), not with an exception.
        answer = parse_message(
            c.exchange(c.signed(Method.ALLOCATE, ALLOCATE, "9" * 500 + ":m", "x"))
        )
        assert answer.get(A.ERROR_CODE) is not None and answer.get(A.ERROR_CODE)[0] == 401  # type: ignore[index]
        Client((HOST, served.port), sock).allocate()  # and the server still serves
    stop_process(served.proc)
    assert served.proc.stderr is not None
    log = served.proc.stderr.read()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
def test_ipv6_without_alternate_stays_within_3_5x(natkit_serve: Serve) -> None:
    # RFC 5780 needs two IPs: over IPv6 loopback there is only ::1, so no alternate here (with
    # one, Binding is 20 -> 104 bytes, 5.2x: natkit/stun/binding.py states it).
    port = free_port("::1")
    served = natkit_serve(
        port=port,
        stun={"listen": [f"udp://[::1]:{port}"], "rate_limit": {"enabled": False}},
        turn={"enabled": True, "engine": "builtin", "realm": REALM, "relay": {"address": "::1"},
              "auth": {"users": {USER: PASSWORD}}},
    )  # fmt: skip
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        c = Client(("::1", served.port), sock)
        rows = []
        for name, method, attrs in (
            ("Binding", Method.BINDING, []),
            ("Allocate, no attributes", Method.ALLOCATE, []),
            ("Allocate + REQUESTED-TRANSPORT (401)", Method.ALLOCATE, ALLOCATE),
            ("Refresh, no allocation", Method.REFRESH, []),
        ):
            data = c.request(method, attrs)
            rows.append((name, len(data), len(c.exchange(data))))
    print(
        "\n".join(f"| STUN/TURN over IPv6 | {n} | {r} | {s} | {s / r:.1f}x |" for n, r, s in rows)
    )
    assert all(0 < s <= LIMIT * r for _, r, s in rows), rows
