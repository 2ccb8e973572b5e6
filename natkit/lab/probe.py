"""A tiny UDP probe for checking what a lab's NATs do, with no STUN involved.

`Reflector` listens on several (ip, port) endpoints of one node (e.g. the `server` node's two
addresses and two ports) and answers each datagram with the source address it observed, as text
``"ip:port"``. A datagram ``"FROM ip:port"`` makes it answer from that other endpoint instead (the
RFC 3489 CHANGE-REQUEST idea), which is how filtering is probed: did an answer from an endpoint the
peer never sent to get through?

    with Reflector(lab, "server", [("203.0.113.10", 3478), ("203.0.113.11", 3479)]):
        sock = lab.socket("peer")
        probe(sock, ("203.0.113.10", 3478))            # → ("203.0.113.100", 40312)
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from natkit.lab.lab import Lab

__all__ = ["Reflector", "probe"]

Endpoint = tuple[str, int]


class Reflector:
    """Echo the observed source address from sockets living in one lab node (a thread)."""

    def __init__(self, lab: Lab, node: str, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints
        self._socks: dict[Endpoint, socket.socket] = {}
        for ep in endpoints:
            sock = lab.socket(node, socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(ep)
            self._socks[ep] = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self.seen: list[tuple[Endpoint, Endpoint]] = []
        """(local endpoint, observed source) of every datagram received."""
        self._thread = threading.Thread(target=self._loop, name="natkit-reflector", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        for ep, sock in self._socks.items():
            sel.register(sock, selectors.EVENT_READ, ep)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while True:
                for key, _ in sel.select():
                    if key.data is None:
                        return
                    self._answer(key.data)
        finally:
            sel.close()

    def _answer(self, local: Endpoint) -> None:
        sock = self._socks[local]
        try:
            data, source = sock.recvfrom(2048)
        except OSError:
            return
        self.seen.append((local, source))
        reply_sock = sock
        if data.startswith(b"FROM "):
            host, _, port = data[5:].decode().strip().rpartition(":")
            reply_sock = self._socks.get((host, int(port)), sock)
        # Unreachable (e.g. UDP blocked on the way back): the probe times out.
        with contextlib.suppress(OSError):
            reply_sock.sendto(f"{source[0]}:{source[1]}".encode(), source)

    def stop(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(2)
        for sock in (*self._socks.values(), self._wake_r, self._wake_w):
            sock.close()

    def __enter__(self) -> Reflector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def probe(
    sock: socket.socket,
    dest: Endpoint,
    *,
    reply_from: Endpoint | None = None,
    timeout: float = 0.5,
    tries: int = 2,
) -> Endpoint | None:
    """Send to a Reflector at `dest`; return the source address it saw, or None (no answer).

    `reply_from` asks for the answer from another of its endpoints (a filtering probe).
    """
    message = b"PING" if reply_from is None else f"FROM {reply_from[0]}:{reply_from[1]}".encode()
    for _ in range(tries):
        try:
            sock.sendto(message, dest)
        except OSError:  # e.g. EPERM: dropped by a local nft rule (link loss)
            continue
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(2048)
            except (TimeoutError, ConnectionRefusedError):
                break
            host, _, port = data.decode(errors="replace").rpartition(":")
            if host and port.isdigit():  # anything else is not a Reflector answer
                return host, int(port)
    return None
