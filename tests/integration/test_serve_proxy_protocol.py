"""`natkit serve` behind a PROXY protocol v2 load balancer (issue 13), on loopback.

The test stands in for the balancer: it connects from 127.0.0.1 (the only trusted address),
writes a v2 header (`natkit.net.proxy_protocol.encode_header`, checked byte by byte against
haproxy's layout in tests/unit/test_proxy_protocol.py) announcing another loopback client, then
speaks STUN/TURN. Every announced address is in 127.0.0.0/8 and none is ever sent to.

- the announced client is what XOR-MAPPED-ADDRESS reports, over TCP and over TLS (the header
  comes in the clear before the TLS handshake); a LOCAL header (a health check) is answered
  with the balancer's own address;
- quotas see the announced clients: with ``stream.max_connections_per_source: 1`` two clients
  announced by one balancer each get their TCP allocation, a second connection announcing the
  first client is refused, and ``turn.quota.per_user`` still counts the user across sources;
- a header from an untrusted source (127.0.0.2) is refused: closed, no answer; that source
  without a header is a direct client and is answered with its own address;
- the trusted balancer without a header is refused: closed, no answer.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from natkit.addr import Address
from natkit.net.proxy_protocol import encode_header
from natkit.stun.constants import AttrType
from natkit.stun.message import parse_message
from natkit.testing import self_signed_certificate
from tests.integration.conftest import HOST, Served, binding_request, free_port
from tests.integration.turn_client import TurnClient, code

pytestmark = pytest.mark.integration

UNTRUSTED = "127.0.0.2"
USER, PASSWORD, REALM = "alice", "wonderland", "natkit.local"


def _proxy_config(port: int, **stun: Any) -> dict[str, Any]:
    return {
        "listen": [f"udp://{HOST}:{port}", f"tcp://{HOST}:{port}"],
        "proxy_protocol": True,
        "proxy_trusted": [f"{HOST}/32"],
        # A refusal must not wait for a timeout; a short one keeps a hang from looking like one.
        "stream": {"frame_timeout": 2.0},
        **stun,
    }


def _serve(natkit_serve: Callable[..., Served]) -> int:
    """A STUN server behind the test's "balancer"; its port."""
    port = free_port()
    natkit_serve(port=port, stun=_proxy_config(port))
    return port


def _connect(port: int, source: str = HOST) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect((HOST, port))
    return sock


def _mapped(sock: socket.socket | ssl.SSLSocket, prefix: bytes = b"") -> Address:
    """XOR-MAPPED-ADDRESS of a Binding request sent on `sock` (after `prefix`, in one write)."""
    request, tid = binding_request()
    sock.sendall(prefix + request)
    data = b""
    while len(data) < 20 or len(data) < 20 + struct.unpack("!H", data[2:4])[0]:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection instead of answering"
        data += chunk
    answer = parse_message(data)
    assert answer.transaction_id == tid
    mapped = answer.get(AttrType.XOR_MAPPED_ADDRESS)
    assert isinstance(mapped, Address), answer
    return mapped


def _closed_unanswered(sock: socket.socket, data: bytes) -> None:
    """`data` goes out and the server closes the connection without a byte back."""
    try:
        sock.sendall(data)
        got = sock.recv(4096)
    except ConnectionError:
        return  # reset: closed, nothing answered
    except TimeoutError:
        pytest.fail("the server kept the connection open")
    assert got == b"", f"the server answered {got!r}"


def _header(client: Address, port: int) -> bytes:
    return encode_header(client, Address(HOST, port))


def test_xor_mapped_address_is_the_announced_client(
    natkit_serve: Callable[..., Served],
) -> None:
    port = _serve(natkit_serve)
    announced = Address("127.0.0.99", 4242)
    with _connect(port) as sock:
        sock.sendall(_header(announced, port))
        assert _mapped(sock) == announced
        assert _mapped(sock) == announced  # the whole connection, not the first message
    with _connect(port) as sock:
        # One segment: the header and the first STUN message arrive together.
        assert _mapped(sock, _header(Address("127.0.0.98", 999), port)) == ("127.0.0.98", 999)


def test_a_local_header_is_the_balancer_itself(natkit_serve: Callable[..., Served]) -> None:
    port = _serve(natkit_serve)
    with _connect(port) as sock:
        sock.sendall(encode_header(None, None))  # LOCAL: the balancer's health check
        assert _mapped(sock) == Address(*sock.getsockname())


def test_tls_listener_reads_the_header_before_the_handshake(
    natkit_serve: Callable[..., Served], tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    port, tls_port = free_port(), free_port()
    stun = _proxy_config(port, tls={"cert": str(cert), "key": str(key)})
    stun["listen"].append(f"tls://{HOST}:{tls_port}")
    natkit_serve(port=port, stun=stun)
    context = ssl.create_default_context(cafile=str(cert))
    announced = Address("127.0.0.97", 5349)
    with _connect(tls_port) as raw:
        raw.sendall(_header(announced, tls_port))  # in the clear, as a TCP balancer does
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert _mapped(tls) == announced


def _turn_through(port: int, client: Address) -> TurnClient:
    """A TURN-over-TCP client whose connection opens with a header announcing `client`."""
    turn = TurnClient(port, USER, PASSWORD, REALM, tcp=True)
    turn.sock.sendall(_header(client, port))
    return turn


def test_quotas_count_the_announced_clients(natkit_serve: Callable[..., Served]) -> None:
    port = free_port()
    stun = _proxy_config(port)
    stun["stream"] |= {"max_connections_per_source": 1}
    natkit_serve(
        port=port,
        stun=stun,
        turn={
            "enabled": True,
            "realm": REALM,
            "auth": {"users": {USER: PASSWORD}},
            "quota": {"per_user": 2},
        },
    )
    first, second = Address("127.0.0.11", 4001), Address("127.0.0.12", 4002)
    clients = [_turn_through(port, first), _turn_through(port, second)]
    try:
        # Both come from the balancer's 127.0.0.1: counted by it, the cap of 1 refuses one.
        for turn, announced in zip(clients, (first, second), strict=True):
            answer = turn.allocate()
            assert code(answer) == 0, answer
            assert answer.get(AttrType.XOR_MAPPED_ADDRESS) == announced
        again = _turn_through(port, Address(first.host, 4003))  # the first client's 2nd slot
        clients.append(again)
        with pytest.raises(ConnectionError):  # closed unanswered, not left hanging
            again.allocate()
        # A third client has a slot of its own, but alice's two allocations are her quota.
        third = _turn_through(port, Address("127.0.0.13", 4004))
        clients.append(third)
        assert code(third.allocate()) == 486
    finally:
        for turn in clients:
            turn.close()


def test_a_header_from_an_untrusted_source_is_refused(
    natkit_serve: Callable[..., Served],
) -> None:
    port = _serve(natkit_serve)
    request, _ = binding_request()
    with _connect(port, UNTRUSTED) as sock:
        _closed_unanswered(sock, _header(Address("127.0.0.99", 4242), port) + request)
    # The same source without a header is a direct client, answered as itself.
    with _connect(port, UNTRUSTED) as sock:
        assert _mapped(sock) == Address(*sock.getsockname())


def test_the_trusted_balancer_without_a_header_is_refused(
    natkit_serve: Callable[..., Served],
) -> None:
    port = _serve(natkit_serve)
    request, _ = binding_request()
    with _connect(port) as sock:
        _closed_unanswered(sock, request)
    with _connect(port) as sock:
        _closed_unanswered(sock, b"PROXY TCP4 127.0.0.99 127.0.0.1 4242 3478\r\n" + request)
