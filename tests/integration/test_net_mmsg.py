"""Batched UDP I/O (recvmmsg/sendmmsg via ctypes) on real loopback sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from natkit.addr import Address
from natkit.net import mmsg
from natkit.stun.binding import BindingHandler

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg need Linux"),
]


@pytest.fixture
def server() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def _clients(count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.bind(("127.0.0.1", 0))
        c.settimeout(2)
        socks.append(c)
    return socks


def test_batch_answers_each_datagram_to_its_own_source(server: socket.socket) -> None:
    batch = mmsg.MMsgSocket(server, batch=16, size=256)
    clients = _clients(5)
    try:
        for round_ in range(4):  # 20 datagrams: more than one batch
            for n, c in enumerate(clients):
                c.sendto(f"{n}:{round_}".encode(), server.getsockname())
        seen: list[tuple[int, int, bytes]] = []
        while len(seen) < 20:
            got = batch.recv()
            assert got, "datagrams sent on loopback must be waiting"
            for i in range(got):
                ip4, port = batch.source(i)
                data = batch.datagram(i)
                seen.append((ip4, port, data))
                batch.queue(i, b"re " + data)
            assert batch.flush() == 0
        assert batch.recv() == 0  # nothing left, and EAGAIN is not an error
        assert {ip for ip, _, _ in seen} == {0x7F000001}
        for n, c in enumerate(clients):
            assert c.getsockname()[1] in {port for _, port, _ in seen}
            replies = sorted(c.recv(256) for _ in range(4))
            assert replies == [f"re {n}:{r}".encode() for r in range(4)]
    finally:
        for c in clients:
            c.close()


def test_oversized_answer_is_dropped_not_truncated(server: socket.socket) -> None:
    batch = mmsg.MMsgSocket(server, batch=4, size=64, send_size=64)
    (client,) = _clients(1)
    try:
        client.sendto(b"x", server.getsockname())
        assert batch.recv() == 1
        batch.queue(0, b"y" * 65)
        batch.queue(0, b"fits")
        assert batch.flush() == 0
        assert client.recv(256) == b"fits"
    finally:
        client.close()


def test_plain_response_matches_the_handler() -> None:
    handler = BindingHandler(
        primary=Address("127.0.0.1", 3478), alternate=Address("127.0.0.2", 3479)
    )
    local = Address("127.0.0.1", 3478)
    request = bytes.fromhex("000100002112a442") + os.urandom(12)
    tx = handler.handle(request, Address("192.0.2.7", 40000), local)
    assert tx is not None
    assert handler.plain_response_v4(request, 0xC0000207, 40000, local) == tx.data
    assert handler.plain_response_v4(request + b"junk", 0xC0000207, 40000, local) is None
    assert handler.plain_response_v4(request, 0xC0000207, 0, local) is None
