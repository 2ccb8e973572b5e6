"""Source-address steering of reuseport groups (natkit.net.steering), on loopback sockets: one
client host always meets one group member, and a socket that joins the group later receives
nothing, also on a running `natkit serve`."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from natkit.net.steering import steer_by_source
from natkit.testing import free_port
from tests.integration.conftest import HOST, Served, binding_request

pytestmark = pytest.mark.integration

SOURCES = [f"127.0.0.{i}" for i in range(2, 18)]


@contextlib.contextmanager
def group(kind: int, port: int, members: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(members):
            sock = socket.socket(socket.AF_INET, kind)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((HOST, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            sock.setblocking(False)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _drain(socks: list[socket.socket]) -> list[int]:
    """Index of the member each waiting datagram or connection reached."""
    time.sleep(0.05)
    got = []
    for i, sock in enumerate(socks):
        while True:
            try:
                if sock.type == socket.SOCK_STREAM:
                    sock.accept()[0].close()
                else:
                    sock.recv(64)
            except BlockingIOError:
                break
            got.append(i)
    return got


def _send_from(source: str, port: int, kind: int, count: int) -> None:
    for _ in range(count):  # a new socket each time: a new source port, a new 5-tuple
        with socket.socket(socket.AF_INET, kind) as c:
            c.bind((source, 0))
            if kind == socket.SOCK_STREAM:
                c.connect((HOST, port))
            else:
                c.sendto(b"x", (HOST, port))


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_one_host_meets_one_member(kind: int) -> None:
    port = free_port("udp" if kind == socket.SOCK_DGRAM else "tcp")
    with group(kind, port, 2) as socks:
        assert steer_by_source(socks[0], 2)
        members = set()
        for source in SOURCES:
            _send_from(source, port, kind, 5)
            got = _drain(socks)
            assert len(got) == 5 and len(set(got)) == 1, (source, got)
            members |= set(got)
        assert members == {0, 1}  # and the hosts spread over both


def test_a_late_joiner_receives_nothing() -> None:
    port = free_port("udp")
    with group(socket.SOCK_DGRAM, port, 2) as socks:
        assert steer_by_source(socks[0], 2)
        with group(socket.SOCK_DGRAM, port, 1) as (intruder,):
            for source in SOURCES:
                _send_from(source, port, socket.SOCK_DGRAM, 3)
            assert len(_drain(socks)) == 3 * len(SOURCES)
            assert _drain([intruder]) == []


def test_serve_keeps_its_port_from_a_same_uid_joiner(
    natkit_serve: Callable[..., Served],
) -> None:
    """Another process of natkit's uid may still join its reuseport group (a kernel rule), but
    it is never handed a datagram: every request is answered by natkit."""
    port = free_port()
    natkit_serve(port=port, stun={"listen": [f"udp://{HOST}:{port}"], "workers": 2})
    with group(socket.SOCK_DGRAM, port, 1) as (intruder,):
        answered = 0
        for source in SOURCES:
            for _ in range(3):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                    c.bind((source, 0))
                    c.settimeout(2)
                    request, tid = binding_request()
                    c.sendto(request, (HOST, port))
                    answered += c.recv(2048)[8:20] == tid
        assert answered == 3 * len(SOURCES)
        assert _drain([intruder]) == []
