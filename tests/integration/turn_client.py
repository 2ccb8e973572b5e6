"""A minimal TURN client over UDP or TCP built on natkit's codec, for the resource tests.

The messages are the tests' own (what an attacker or a sloppy client would send); aioice cannot
re-allocate on one 5-tuple or reset a connection mid-stream.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct

from natkit.addr import Address
from natkit.stun.attributes import ErrorCode
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.integrity import long_term_key
from natkit.stun.message import Message, parse_message

HOST = "127.0.0.1"


class TurnClient:
    """One 5-tuple (UDP socket or TCP connection) speaking TURN with long-term credentials."""

    def __init__(
        self,
        port: int,
        user: str,
        password: str,
        realm: str,
        *,
        tcp: bool = False,
        tls: ssl.SSLContext | None = None,
        source: str = HOST,
        lab_socket: socket.socket | None = None,
        server_host: str = HOST,
    ) -> None:
        """UDP by default; `tcp` for TCP, plus `tls` (a client context) for TLS; `source` is
        the client's loopback address (natkit steers a client host to one worker). In a lab,
        `lab_socket` is a socket in a node (UDP bound, or TCP to connect) and `server_host` the
        lab server."""
        self.tcp = tcp
        if lab_socket is not None:
            lab = ("203.0.113.", "2001:db8::")
            assert server_host.startswith(lab), server_host  # the lab's server only
            self.sock = lab_socket
        else:
            assert source.startswith("127.") and server_host.startswith("127."), source  # loopback
            kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
            self.sock = socket.socket(socket.AF_INET, kind)
            self.sock.bind((source, 0))
        self.sock.settimeout(5)
        if tcp:
            self.sock.connect((server_host, port))
            if tls is not None:
                self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self.server = (server_host, port)
        self.user, self.realm = user, realm
        self.key = long_term_key(user, realm, password)
        self.nonce = ""
        self._buffer = b""
        self.relayed: Address | None = None
        """XOR-RELAYED-ADDRESS of the last successful Allocate."""

    def _send(self, data: bytes) -> None:
        if self.tcp:
            self.sock.sendall(data)
        else:
            self.sock.sendto(data, self.server)

    def recv(self) -> bytes:
        if not self.tcp:
            return self.sock.recv(65535)
        while True:
            if len(self._buffer) >= 4:
                first, length = struct.unpack("!HH", self._buffer[:4])
                size = 4 + length + (-length % 4) if first >= 0x4000 else 20 + length
                if len(self._buffer) >= size:
                    frame, self._buffer = self._buffer[:size], self._buffer[size:]
                    return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buffer += chunk

    def ask(self, method: int, attrs: list[tuple[int, object]]) -> Message:
        """A signed request; retried once with the fresh nonce of a 401/438."""
        for _ in range(3):
            tid = os.urandom(12)
            signed = [
                *attrs,
                (AttrType.USERNAME, self.user),
                (AttrType.REALM, self.realm),
                (AttrType.NONCE, self.nonce),
            ]
            msg = Message(method, MessageClass.REQUEST, tid, signed)  # type: ignore[arg-type]
            self._send(msg.encode(integrity_key=self.key, fingerprint=True))
            while True:
                data = self.recv()
                if data[0] >= 0x40:
                    continue  # ChannelData: not an answer
                answer = parse_message(data)
                if answer.transaction_id == tid:
                    break
            nonce = answer.get(AttrType.NONCE)
            if isinstance(nonce, str):
                self.nonce = nonce
            if code(answer) not in (401, 438):
                return answer
        return answer

    def allocate(self, lifetime: int | None = None) -> Message:
        attrs: list[tuple[int, object]] = [(AttrType.REQUESTED_TRANSPORT, 17)]
        if lifetime is not None:
            attrs.append((AttrType.LIFETIME, lifetime))
        answer = self.ask(Method.ALLOCATE, attrs)
        if code(answer) == 0:
            self.relayed = relayed(answer)
        return answer

    def refresh(self, lifetime: int) -> Message:
        return self.ask(Method.REFRESH, [(AttrType.LIFETIME, lifetime)])

    def channel_bind(self, number: int, peer: Address) -> Message:
        attrs = [(AttrType.CHANNEL_NUMBER, number), (AttrType.XOR_PEER_ADDRESS, peer)]
        return self.ask(Method.CHANNEL_BIND, attrs)  # type: ignore[arg-type]

    def permit(self, peers: list[Address]) -> Message:
        return self.ask(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, p) for p in peers])

    def reset(self) -> None:
        """Close abruptly: SO_LINGER 0 sends a TCP RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def code(answer: Message) -> int:
    """The ERROR-CODE of an answer, 0 for a success."""
    error = answer.get(AttrType.ERROR_CODE)
    return error.code if isinstance(error, ErrorCode) else 0


def relayed(answer: Message) -> Address:
    value = answer.get(AttrType.XOR_RELAYED_ADDRESS)
    assert isinstance(value, Address), answer
    return value
