"""The pieces `natkit.diag.turncheck` is built from: one TURN allocation ("leg"), the UDP peer
socket, the budget clock and the translation of what goes wrong into one line.

A `Leg` is aioice's TURN client protocol (so natkit checks servers with code it did not write)
with two hooks aioice lacks:

- every Data indication and ChannelData is handed to `Leg.on_data` (aioice drops a Data
  indication from a peer it has no channel for; the check's second allocation has none);
- ICMP port unreachable on the connected UDP socket (asyncio's ``error_received`` with
  ConnectionRefusedError) for a request *and* its first retransmission (~0.5 s later) ends it
  with "nothing listens" instead of letting it run into the budget as "no answer". One ICMP
  alone proves little: a server still binding its UDP socket, or a stale error, looks the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

from aioice import stun, turn

from natkit.addr import format_hostport

__all__ = ["Clock", "Leg", "PeerSocket", "StepFailed", "failure"]

_FAMILY_VALUE = {4: 0x01000000, 6: 0x02000000}  # REQUESTED-ADDRESS-FAMILY, RFC 8656 §18.10

# aioice's codec lacks REQUESTED-ADDRESS-FAMILY (0x0017); register it so IPv6 relays can be
# requested. Idempotent, and a no-op once aioice knows the attribute itself.
if "REQUESTED-ADDRESS-FAMILY" not in stun.ATTRIBUTES_BY_NAME:
    _entry = (0x0017, "REQUESTED-ADDRESS-FAMILY", stun.pack_unsigned, stun.unpack_unsigned)
    stun.ATTRIBUTES_BY_TYPE.setdefault(0x0017, _entry)
    stun.ATTRIBUTES_BY_NAME["REQUESTED-ADDRESS-FAMILY"] = _entry

_REFUSALS = 2  # ICMP port unreachable this often before "nothing listens" (module docstring)

Address = tuple[str, int]
OnData = Callable[[bytes, Address], None]


class StepFailed(Exception):
    def __init__(self, detail: str, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail, self.code, self.reason = detail, code, reason


class Clock:
    """The overall budget; each stage waits at most what is left of it."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def stretch(self, needed: float) -> None:
        """At least `needed` seconds from now: a slow path measured on the way (a satellite
        hop's 600 ms RTT) must not fail the stages still to come for a LAN-sized budget."""
        self.deadline = max(self.deadline, time.monotonic() + needed)

    async def wait(self, aw: Any) -> Any:
        try:
            return await asyncio.wait_for(aw, self.left())
        except TimeoutError:
            raise StepFailed(f"no answer within the {self.timeout:g} s budget") from None


def failure(err: BaseException, server: str = "") -> StepFailed:
    if isinstance(err, StepFailed):
        return err
    if isinstance(err, stun.TransactionFailed):
        code, reason = err.response.attributes.get("ERROR-CODE", (None, ""))
        return StepFailed(f"server answered {code} {reason}".strip(), code, reason)
    if isinstance(err, stun.TransactionTimeout):
        return StepFailed("no answer (STUN retransmissions exhausted)")
    if isinstance(err, ConnectionRefusedError):
        return StepFailed(f"connection refused: nothing listens at {server}")
    if isinstance(err, ssl.SSLError):
        return StepFailed(f"TLS: {err.reason or err}")
    return StepFailed(f"{type(err).__name__}: {err}")


class _Hooks:
    """Mixed into aioice's client protocols (before them in the MRO)."""

    on_data: OnData | None = None
    refused: asyncio.Future[None] | None = None
    refusals = 0
    channel_to_peer: dict[int, Address]

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError) and self.refused and not self.refused.done():
            self.refusals += 1
            if self.refusals >= _REFUSALS:
                self.refused.set_result(None)

    def datagram_received(self, data: bytes | str, addr: Address) -> None:
        assert isinstance(data, bytes)
        self.refusals = 0  # the server is there after all
        if self.on_data is not None and len(data) >= 4:
            if turn.is_channel_data(data):
                channel, length = struct.unpack("!HH", data[:4])
                peer = self.channel_to_peer.get(channel)
                if peer is not None and len(data) >= 4 + length:
                    self.on_data(data[4 : 4 + length], peer)
                return
            with contextlib.suppress(ValueError):
                message = stun.parse_message(data)
                if (
                    message.message_method == stun.Method.DATA
                    and message.message_class == stun.Class.INDICATION
                    and "DATA" in message.attributes
                    and "XOR-PEER-ADDRESS" in message.attributes
                ):
                    self.on_data(message.attributes["DATA"], message.attributes["XOR-PEER-ADDRESS"])
                    return
        super().datagram_received(data, addr)  # type: ignore[misc]


class _Udp(_Hooks, turn.TurnClientUdpProtocol):
    pass


class _Tcp(_Hooks, turn.TurnClientTcpProtocol):
    pass


class Leg:
    """One TURN allocation over exactly the transport the URL names."""

    def __init__(self, server: Address, transport: str, username: str | None,
                 password: str | None, clock: Clock) -> None:  # fmt: skip
        self.server, self.transport, self.clock = server, transport, clock
        self.username, self.password = username, password
        self.proto: _Udp | _Tcp | None = None
        self.relayed: Address = ("", 0)
        self.mapped: Address | None = None
        self.where = format_hostport(*server)

    async def connect(self, tls: ssl.SSLContext | None, server_hostname: str | None) -> None:
        loop = asyncio.get_running_loop()
        args = (self.server, self.username, self.password, turn.DEFAULT_ALLOCATION_LIFETIME,
                turn.DEFAULT_CHANNEL_REFRESH_TIME)  # fmt: skip
        if self.transport == "udp":
            _, self.proto = await loop.create_datagram_endpoint(
                lambda: _Udp(*args), remote_addr=self.server
            )
            self.proto.refused = loop.create_future()
            return
        try:
            _, self.proto = await self.clock.wait(
                loop.create_connection(
                    lambda: _Tcp(*args),
                    host=self.server[0],
                    port=self.server[1],
                    ssl=tls,
                    server_hostname=server_hostname,
                )
            )
        except ConnectionRefusedError:
            raise StepFailed(f"connection refused: nothing listens at {self.where}") from None

    def share_credentials(self, other: Leg) -> None:
        """Start from `other`'s realm, nonce and key (a stale nonce is a 438, then a retry)."""
        assert self.proto is not None and other.proto is not None
        self.proto.realm, self.proto.nonce = other.proto.realm, other.proto.nonce
        self.proto.integrity_key = other.proto.integrity_key

    async def request(self, method: stun.Method, **attributes: Any) -> stun.Message:
        assert self.proto is not None
        message = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
        message.attributes.update(attributes)
        # request_with_retry answers 401 with the credentials and 438 with the fresh nonce.
        task = asyncio.ensure_future(self.proto.request_with_retry(message))
        refused = self.proto.refused
        try:
            if refused is None:
                response, _ = await self.clock.wait(task)
                return response  # type: ignore[no-any-return]
            await self.clock.wait(asyncio.wait([task, refused], return_when="FIRST_COMPLETED"))
            if not task.done():
                raise StepFailed(f"nothing listens at {self.where} (ICMP port unreachable)")
            response, _ = task.result()
            return response
        finally:
            task.cancel()

    async def allocate(self, family: int | None) -> str:
        attrs: dict[str, Any] = {"LIFETIME": 600, "REQUESTED-TRANSPORT": turn.UDP_TRANSPORT}
        if family is not None:
            attrs["REQUESTED-ADDRESS-FAMILY"] = _FAMILY_VALUE[family]
        response = await self.request(stun.Method.ALLOCATE, **attrs)
        try:
            self.relayed = response.attributes["XOR-RELAYED-ADDRESS"]
        except KeyError:
            raise StepFailed("success response without XOR-RELAYED-ADDRESS") from None
        self.mapped = response.attributes.get("XOR-MAPPED-ADDRESS")
        lifetime = response.attributes.get("LIFETIME")
        return f"relayed {format_hostport(*self.relayed)}, lifetime {lifetime} s"

    async def permit(self, ip: str) -> None:
        # RFC 8656 §9: a permission is per IP; the port is ignored.
        await self.request(stun.Method.CREATE_PERMISSION, **{"XOR-PEER-ADDRESS": (ip, 0)})

    async def bind(self, channel: int, peer: Address) -> None:
        assert self.proto is not None
        await self.request(
            stun.Method.CHANNEL_BIND, **{"CHANNEL-NUMBER": channel, "XOR-PEER-ADDRESS": peer}
        )
        self.proto.channel_to_peer[channel] = peer
        self.proto.peer_to_channel[peer] = channel

    def send_channel(self, channel: int, data: bytes) -> None:
        assert self.proto is not None
        self.proto._send(struct.pack("!HH", channel, len(data)) + data)

    def send_indication(self, peer: Address, data: bytes) -> None:
        """RFC 8656 §11.2: a Send indication (no channel needed, no answer)."""
        assert self.proto is not None
        message = stun.Message(message_method=stun.Method.SEND, message_class=stun.Class.INDICATION)
        message.attributes["XOR-PEER-ADDRESS"] = peer
        message.attributes["DATA"] = data
        self.proto._send(bytes(message))

    async def close(self) -> None:
        proto = self.proto
        if proto is None:
            return
        if self.relayed[0] and not proto.transport.is_closing():
            # Free the allocation now rather than at its lifetime (RFC 8656 §7: LIFETIME 0).
            message = stun.Message(
                message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST
            )
            message.attributes["LIFETIME"] = 0
            with contextlib.suppress(Exception):  # best effort: the server expires it anyway
                await asyncio.wait_for(proto.request(message), 1.0)
        proto.transport.close()


class PeerSocket(asyncio.DatagramProtocol):
    """A UDP socket of this process as the far end: echoes what the relay sends, and runs
    Binding transactions (discovery of its server-reflexive address)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.transactions: dict[bytes, stun.Transaction] = {}
        self.seen_from: Address | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send_stun(self, message: stun.Message, addr: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(message), addr)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            message = None
        if message is not None and message.transaction_id in self.transactions:
            self.transactions[message.transaction_id].response_received(message, addr)
            return
        self.seen_from = addr
        assert self.transport is not None
        self.transport.sendto(data, addr)  # the echo

    async def open(self, bind_ip: str) -> int:
        """Bind at `bind_ip` (anywhere when that is not ours); the local port."""
        loop = asyncio.get_running_loop()
        v6 = ":" in bind_ip
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind((bind_ip, 0))
            except OSError:  # an explicit peer that is not ours: listen anywhere, expect no echo
                sock.bind(("::" if v6 else "0.0.0.0", 0))
        except BaseException:
            sock.close()
            raise
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        return int(sock.getsockname()[1])

    async def discover(self, server: Address, clock: Clock) -> Address:
        """RFC 8489 §3: the server-reflexive address, asked of the TURN server (UDP only)."""
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        transaction = stun.Transaction(request, server, self)
        self.transactions[request.transaction_id] = transaction
        response, _ = await clock.wait(transaction.run())
        mapped: Address = response.attributes["XOR-MAPPED-ADDRESS"]
        return mapped

    def send(self, data: bytes, addr: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
