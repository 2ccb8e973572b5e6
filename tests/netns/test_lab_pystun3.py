"""pystun3 (an RFC 3489 classifier we did not write) names each preset's NAT type, talking to
natkit's Binding handler in node `server` on 203.0.113.10:3478 with alternate 203.0.113.11:3479
(needs root). pystun3's socket gets a short timeout: each unanswered test would cost it 8 s."""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from natkit.lab import Lab

pytestmark = pytest.mark.netns
stun = pytest.importorskip("stun")
binding = pytest.importorskip("natkit.stun.binding")
Address = pytest.importorskip("natkit.addr").Address

PRIMARY, ALTERNATE = ("203.0.113.10", 3478), ("203.0.113.11", 3479)
EXPECTED = {
    "open": "Open Internet",
    "full-cone": "Full Cone",
    "restricted-cone": "Restric NAT",
    "port-restricted-cone": "Restric Port NAT",
    "symmetric": "Symmetric NAT",
    "udp-blocked": "Blocked",
}


@contextmanager
def stun_server(lab: Lab) -> Iterator[None]:
    """natkit's BindingHandler on the four RFC 5780 sockets of node `server`, in a thread."""
    handler = binding.BindingHandler(primary=Address(*PRIMARY), alternate=Address(*ALTERNATE))
    socks = {}
    for ip in (PRIMARY[0], ALTERNATE[0]):
        for port in (PRIMARY[1], ALTERNATE[1]):
            sock = lab.socket("server")
            sock.bind((ip, port))
            socks[Address(ip, port)] = sock
    wake_r, wake_w = socket.socketpair()

    def serve() -> None:
        with selectors.DefaultSelector() as sel:
            for local, sock in socks.items():
                sel.register(sock, selectors.EVENT_READ, local)
            sel.register(wake_r, selectors.EVENT_READ, None)
            while True:
                for key, _ in sel.select():
                    if key.data is None:
                        return
                    data, source = key.fileobj.recvfrom(2048)  # type: ignore[union-attr]
                    out = handler.handle(data, Address(*source), key.data)
                    if out is not None:
                        socks[out.source].sendto(out.data, tuple(out.destination))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        wake_w.send(b"x")
        thread.join(2)
        wake_r.close()
        wake_w.close()


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_pystun3_classifies_preset(nat_lab: Callable[..., Lab], preset: str) -> None:
    lab = nat_lab(preset)
    with stun_server(lab):
        sock = lab.socket("peer")
        sock.settimeout(0.25)
        local_ip = lab.address("peer")
        sock.bind((local_ip, 0))
        nat_type, _ = stun.get_nat_type(
            sock, local_ip, sock.getsockname()[1], stun_host=PRIMARY[0], stun_port=PRIMARY[1]
        )
    assert nat_type == EXPECTED[preset]
