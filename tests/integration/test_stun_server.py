"""`natkit serve` on real loopback sockets, checked by clients natkit did not write.

aioice (RFC 8489 client, UDP + TCP), coturn's `turnutils_stunclient` (incl. its RFC 5780 mode)
and pystun3 (RFC 3489 classifier) must all read correct answers from the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aioice import stun as aioice_stun

from natkit.testing import self_signed_certificate
from tests.integration.conftest import HOST, Served, free_port

pytestmark = pytest.mark.integration

Serve = Callable[..., Served]


class _UdpClient(asyncio.DatagramProtocol):
    """The smallest aioice TransactionSender: a datagram endpoint feeding one Transaction."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.transaction: aioice_stun.Transaction | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = aioice_stun.parse_message(data)
        if self.transaction is not None:
            self.transaction.response_received(message, addr)

    def send_stun(self, message: aioice_stun.Message, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(message), addr)


async def _aioice_udp(host: str, port: int) -> tuple[aioice_stun.Message, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_UdpClient, local_addr=(host, 0))
    try:
        request = aioice_stun.Message(
            message_method=aioice_stun.Method.BINDING, message_class=aioice_stun.Class.REQUEST
        )
        proto.transaction = aioice_stun.Transaction(request, (host, port), proto, retransmissions=2)
        response, _ = await asyncio.wait_for(proto.transaction.run(), 10)
        return response, transport.get_extra_info("sockname")
    finally:
        transport.close()


def test_aioice_udp_ipv4(natkit_serve: Serve) -> None:
    served = natkit_serve()
    response, local = asyncio.run(_aioice_udp(HOST, served.port))
    assert response.message_class == aioice_stun.Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == (HOST, local[1])


def test_aioice_udp_ipv6(natkit_serve: Serve) -> None:
    try:
        port = free_port("::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    served = natkit_serve(port=port, stun={"listen": [f"udp://[::1]:{port}"]})
    response, local = asyncio.run(_aioice_udp("::1", served.port))
    assert response.attributes["XOR-MAPPED-ADDRESS"] == ("::1", local[1])


def test_aioice_tcp_framing(natkit_serve: Serve) -> None:
    """Two requests in one TCP segment, then one split across segments: RFC 8489 §6.2.2."""
    served = natkit_serve()
    requests = [
        aioice_stun.Message(
            message_method=aioice_stun.Method.BINDING, message_class=aioice_stun.Class.REQUEST
        )
        for _ in range(3)
    ]
    with socket.create_connection((HOST, served.port), timeout=5) as conn:
        local = conn.getsockname()
        conn.sendall(bytes(requests[0]) + bytes(requests[1]))
        wire = bytes(requests[2])
        conn.sendall(wire[:7])
        conn.sendall(wire[7:])
        buf = b""
        responses: list[aioice_stun.Message] = []
        while len(responses) < 3:
            chunk = conn.recv(4096)
            assert chunk, "server closed the connection"
            buf += chunk
            while len(buf) >= 20 and len(buf) >= 20 + int.from_bytes(buf[2:4], "big"):
                size = 20 + int.from_bytes(buf[2:4], "big")
                responses.append(aioice_stun.parse_message(buf[:size]))
                buf = buf[size:]
    for request, response in zip(requests, responses, strict=True):
        assert response.transaction_id == request.transaction_id
        assert response.attributes["XOR-MAPPED-ADDRESS"] == (HOST, local[1])


def _turnutils(*args: str) -> str:
    binary = shutil.which("turnutils_stunclient")
    if binary is None:
        pytest.skip("turnutils_stunclient not installed (apt-get install coturn)")
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


@pytest.mark.coturn
def test_turnutils_stunclient(natkit_serve: Serve) -> None:
    served = natkit_serve()
    out = _turnutils("-p", str(served.port), HOST)
    assert "UDP reflexive addr: 127.0.0.1:" in out, out


@pytest.mark.coturn
def test_turnutils_stunclient_rfc5780(natkit_serve: Serve) -> None:
    port, alt_port = free_port(), free_port("127.0.0.2")
    served = natkit_serve(
        port=port, stun={"listen": [f"udp://{HOST}:{port}"], "alternate": f"127.0.0.2:{alt_port}"}
    )
    out = _turnutils("-f", "-p", str(served.port), HOST)
    sections = out.split("RFC 5780 response ")[1:]
    assert len(sections) == 3, out
    primary, alternate = f"127.0.0.1:{port}", f"127.0.0.2:{alt_port}"
    # 1: plain request, answered from the primary; 2: change IP+port (RFC 5780 §4.4 test II),
    # answered from the alternate socket: stunclient prints where the reply claims to be from.
    assert f"Response origin: : {primary}" in sections[0], out
    assert f"Other addr: : {alternate}" in sections[0], out
    assert f"Response origin: : {alternate}" in sections[1], out
    assert all("UDP reflexive addr: 127.0.0.1:" in s for s in sections), out


def test_pystun3_open_internet(natkit_serve: Serve) -> None:
    import stun  # pystun3

    port, alt_port = free_port(), free_port("127.0.0.2")
    served = natkit_serve(
        port=port, stun={"listen": [f"udp://{HOST}:{port}"], "alternate": f"127.0.0.2:{alt_port}"}
    )
    client_port = free_port()
    nat_type, ip, mapped_port = stun.get_ip_info(
        source_ip=HOST, source_port=client_port, stun_host=HOST, stun_port=served.port
    )
    assert (nat_type, ip, mapped_port) == ("Open Internet", HOST, client_port)


def test_alternate_needs_specific_primary_ip(natkit_serve: Serve, tmp_path: object) -> None:
    from tests.integration.conftest import start_serve, stop_process

    port = free_port()
    path = tmp_path / "bad.yaml"  # type: ignore[operator]
    path.write_text(
        f"version: 1\nstun:\n  listen: ['udp://0.0.0.0:{port}']\n"
        f"  alternate: '127.0.0.2:{port + 1}'\nmetrics: {{listen: null}}\n"
    )
    proc, lines = start_serve(path, 1)
    assert stop_process(proc) == 2 and lines == []
    assert proc.stderr is not None
    err = proc.stderr.read().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("natkit: error: ") and "specific" in err[0], err


def test_tls(natkit_serve: Serve, tmp_path: Path) -> None:
    import ssl

    cert_path, key_path = self_signed_certificate(tmp_path)
    port = free_port()
    served = natkit_serve(
        port=port,
        stun={
            "listen": [f"tls://{HOST}:{port}"],
            "tls": {"cert": str(cert_path), "key": str(key_path)},
        },
    )
    ctx = ssl.create_default_context(cafile=str(cert_path))
    request = aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING, message_class=aioice_stun.Class.REQUEST
    )
    with (
        socket.create_connection((HOST, served.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        conn.sendall(bytes(request))
        data = conn.recv(4096)
        local = conn.getsockname()
    response = aioice_stun.parse_message(data)
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == (HOST, local[1])


def test_tcp_garbage_drops_connection(natkit_serve: Serve) -> None:
    served = natkit_serve()
    with socket.create_connection((HOST, served.port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert conn.recv(100) == b""  # closed without an answer


def test_tcp_oversized_message_drops_connection(natkit_serve: Serve) -> None:
    served = natkit_serve(stun={"stream": {"max_message_size": 512}})
    with socket.create_connection((HOST, served.port), timeout=5) as conn:
        conn.sendall(struct.pack("!HHI", 1, 1024, 0x2112A442) + bytes(12))
        assert conn.recv(100) == b""


def test_tcp_idle_timeout(natkit_serve: Serve) -> None:
    served = natkit_serve(stun={"stream": {"idle_timeout": 0.5}})
    with socket.create_connection((HOST, served.port), timeout=5) as conn:
        assert conn.recv(100) == b""  # the server hangs up after 0.5 s of silence


def test_tcp_connection_cap(natkit_serve: Serve) -> None:
    served = natkit_serve(stun={"stream": {"max_connections": 2}})
    keep = [socket.create_connection((HOST, served.port), timeout=5) for _ in range(2)]
    try:
        for conn in keep:  # make sure both are accepted and counted
            conn.sendall(struct.pack("!HHI", 1, 0, 0x2112A442) + bytes(12))
            assert conn.recv(100)[:2] == b"\x01\x01"
        # Full: the newcomer gets the slot of the oldest idle connection (issue 11 #4), so
        # idle connections cannot keep new clients out.
        with socket.create_connection((HOST, served.port), timeout=5) as third:
            third.sendall(struct.pack("!HHI", 1, 0, 0x2112A442) + bytes(12))
            assert third.recv(100)[:2] == b"\x01\x01"
            with contextlib.suppress(ConnectionResetError):
                assert keep[0].recv(100) == b""  # evicted
        evicted = r'natkit_stun_errors_total\{kind="evicted"\}'
        deadline = time.monotonic() + 5
        while served.metric(evicted) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served.metric(evicted) == 1
    finally:
        for conn in keep:
            conn.close()
