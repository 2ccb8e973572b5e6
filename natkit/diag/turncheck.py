"""A real TURN check: allocate, permit a peer, bind a channel, round-trip a packet via the relay.

The same check serves ``natkit turn check`` and ``natkit diagnose``: `check_turn` returns a
`TurnCheckReport` (one `Step` per stage, its time and the server's ERROR-CODE if any) and never
raises for what the server or the network does; the CLI renders it.

The client is aioice's TURN client protocol (so natkit checks servers with code it did not write)
driven one request at a time, so each RFC 8656 stage is timed and blamed on its own:

    resolve → connect (tcp/tls) → allocate (§7) → permission (§9) → channel (§12) → relay

The *peer* is a UDP socket of this process: the relay sends the packet to it, it echoes it back,
and the client receives it as ChannelData. Its address must be one the server will relay to:

- a server on loopback (tests, labs): the peer binds loopback, which the server's policy must
  allow (natkit and coturn deny loopback by default: a lab config opens it in turn.peers.allow);
- any other server: the peer learns its server-reflexive address with a Binding request to the
  TURN server itself (RFC 8489 §3), which is where the relay's packets will come in;
- ``peer=`` names the peer IP explicitly, e.g. to prove a policy refuses ``::ffff:127.0.0.1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import ssl
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aioice import stun, turn

from natkit.addr import format_hostport
from natkit.turn.credentials import mint
from natkit.turn.uri import TurnURI

__all__ = ["Step", "TurnCheckReport", "check_turn"]

CHANNEL = 0x4000  # first channel number (RFC 8656 §12)
_FAMILY_VALUE = {4: 0x01000000, 6: 0x02000000}  # REQUESTED-ADDRESS-FAMILY, RFC 8656 §18.10
_RELAY_TRIES = 3

# aioice's codec lacks REQUESTED-ADDRESS-FAMILY (0x0017); register it so IPv6 relays can be
# requested. Idempotent, and a no-op once aioice knows the attribute itself.
if "REQUESTED-ADDRESS-FAMILY" not in stun.ATTRIBUTES_BY_NAME:
    _entry = (0x0017, "REQUESTED-ADDRESS-FAMILY", stun.pack_unsigned, stun.unpack_unsigned)
    stun.ATTRIBUTES_BY_TYPE.setdefault(0x0017, _entry)
    stun.ATTRIBUTES_BY_NAME["REQUESTED-ADDRESS-FAMILY"] = _entry

StepName = Literal["resolve", "connect", "allocate", "permission", "channel", "relay"]


@dataclass
class Step:
    """One stage of the check."""

    name: StepName
    ok: bool
    ms: float
    """Wall time of the stage in milliseconds."""
    detail: str = ""
    error_code: int | None = None
    """The server's STUN ERROR-CODE (401, 403, 437, 486, …), None for local failures."""
    error_reason: str | None = None


@dataclass
class TurnCheckReport:
    """The outcome of one TURN check; `to_dict` is the JSON form (diagnose's ``turn`` items)."""

    url: str
    ok: bool = False
    steps: list[Step] = field(default_factory=list)
    server_address: str | None = None
    mapped_address: str | None = None
    relayed_address: str | None = None
    peer_address: str | None = None
    rtt_ms: float | None = None
    error: str | None = None
    """One line naming the failed step and why; None when ok."""

    @property
    def failed_step(self) -> Step | None:
        return next((s for s in self.steps if not s.ok), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _StepFailed(Exception):
    def __init__(self, detail: str, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail, self.code, self.reason = detail, code, reason


class _Clock:
    """The overall budget; each stage waits at most what is left of it."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def wait(self, aw: Any) -> Any:
        try:
            return await asyncio.wait_for(aw, self.left())
        except TimeoutError:
            raise _StepFailed(f"no answer within the {self.timeout:g} s budget") from None


class _Peer(asyncio.DatagramProtocol):
    """The far end: echoes what the relay sends, and runs Binding transactions for discovery."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.transactions: dict[bytes, stun.Transaction] = {}
        self.seen_from: tuple[str, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(message), addr)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
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


class _Receiver(asyncio.DatagramProtocol):
    """Gets what the client's TURN protocol demultiplexes from ChannelData."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait(data)


def _failure(err: BaseException) -> _StepFailed:
    if isinstance(err, _StepFailed):
        return err
    if isinstance(err, stun.TransactionFailed):
        code, reason = err.response.attributes.get("ERROR-CODE", (None, ""))
        return _StepFailed(f"server answered {code} {reason}".strip(), code, reason)
    if isinstance(err, stun.TransactionTimeout):
        return _StepFailed("no answer (STUN retransmissions exhausted)")
    if isinstance(err, ssl.SSLError):
        return _StepFailed(f"TLS: {err.reason or err}")
    return _StepFailed(f"{type(err).__name__}: {err}")


class _Check:
    def __init__(
        self,
        uri: TurnURI,
        username: str | None,
        password: str | None,
        timeout: float,
        peer: str | None,
        family: int | None,
        insecure: bool,
        until: StepName,
    ) -> None:
        self.uri, self.username, self.password = uri, username, password
        self.clock = _Clock(timeout)
        self.peer_ip, self.family, self.insecure = peer, family, insecure
        self.until = until
        self.report = TurnCheckReport(url=str(uri))
        self.server: tuple[str, int] = ("", 0)
        self.proto: turn.TurnClientUdpProtocol | turn.TurnClientTcpProtocol | None = None
        self.transports: list[asyncio.BaseTransport] = []
        self.peer = _Peer()
        self.peer_addr: tuple[str, int] = ("", 0)
        self.relayed: tuple[str, int] = ("", 0)

    async def step(self, name: StepName, coro: Any) -> bool:
        start = time.perf_counter()
        try:
            detail = await coro
        except Exception as err:  # every failure becomes a report line, never a traceback
            fail = _failure(err)
            ms = (time.perf_counter() - start) * 1000
            self.report.steps.append(Step(name, False, ms, fail.detail, fail.code, fail.reason))
            self.report.error = f"{name}: {fail.detail}"
            return False
        ms = (time.perf_counter() - start) * 1000
        self.report.steps.append(Step(name, True, ms, detail or ""))
        return True

    async def run(self) -> TurnCheckReport:
        try:
            ok = await self.step("resolve", self.resolve())
            if ok and self.uri.transport == "udp":
                await self.connect()  # a local socket: nothing to report or fail on the wire
            elif ok:
                ok = await self.step("connect", self.connect())
            stages = (
                ("allocate", self.allocate),
                ("permission", self.permission),
                ("channel", self.channel),
                ("relay", self.relay),
            )
            for name, stage in stages:
                if not ok or (self.report.steps and self.report.steps[-1].name == self.until):
                    break
                ok = await self.step(name, stage())  # type: ignore[arg-type]
            self.report.ok = ok
        finally:
            await self.close()
        return self.report

    async def resolve(self) -> str:
        loop = asyncio.get_running_loop()
        kind = socket.SOCK_DGRAM if self.uri.transport == "udp" else socket.SOCK_STREAM
        try:
            infos = await self.clock.wait(loop.getaddrinfo(self.uri.host, self.uri.port, type=kind))
        except socket.gaierror as err:
            raise _StepFailed(f"cannot resolve {self.uri.host!r}: {err.strerror}") from None
        self.server = infos[0][4][:2]
        self.report.server_address = format_hostport(*self.server)
        return self.report.server_address

    async def connect(self) -> str:
        loop = asyncio.get_running_loop()
        args = (
            self.server,
            self.username,
            self.password,
            turn.DEFAULT_ALLOCATION_LIFETIME,
            turn.DEFAULT_CHANNEL_REFRESH_TIME,
        )
        if self.uri.transport == "udp":
            transport, self.proto = await loop.create_datagram_endpoint(
                lambda: turn.TurnClientUdpProtocol(*args), remote_addr=self.server
            )
            self.transports.append(transport)
            return ""
        context: ssl.SSLContext | None = None
        if self.uri.secure:
            context = ssl.create_default_context()
            if self.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        transport, self.proto = await self.clock.wait(
            loop.create_connection(
                lambda: turn.TurnClientTcpProtocol(*args),
                host=self.server[0],
                port=self.server[1],
                ssl=context,
                server_hostname=self.uri.host if context else None,
            )
        )
        self.transports.append(transport)
        return "TLS" if context else "TCP"

    async def request(self, method: stun.Method, **attributes: Any) -> stun.Message:
        assert self.proto is not None
        message = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
        message.attributes.update(attributes)
        # request_with_retry answers 401 with the credentials and 438 with the fresh nonce.
        response, _ = await self.clock.wait(self.proto.request_with_retry(message))
        return response  # type: ignore[no-any-return]

    async def allocate(self) -> str:
        attrs: dict[str, Any] = {"LIFETIME": 600, "REQUESTED-TRANSPORT": turn.UDP_TRANSPORT}
        if self.family is not None:
            attrs["REQUESTED-ADDRESS-FAMILY"] = _FAMILY_VALUE[self.family]
        response = await self.request(stun.Method.ALLOCATE, **attrs)
        try:
            relayed = response.attributes["XOR-RELAYED-ADDRESS"]
        except KeyError:
            raise _StepFailed("success response without XOR-RELAYED-ADDRESS") from None
        mapped = response.attributes.get("XOR-MAPPED-ADDRESS")
        self.relayed = relayed
        self.report.relayed_address = format_hostport(*relayed)
        self.report.mapped_address = format_hostport(*mapped) if mapped else None
        lifetime = response.attributes.get("LIFETIME")
        return f"relayed {self.report.relayed_address}, lifetime {lifetime} s"

    async def permission(self) -> str:
        await self.open_peer()
        self.report.peer_address = format_hostport(*self.peer_addr)
        # RFC 8656 §9: a permission is per IP; the port is ignored.
        await self.request(
            stun.Method.CREATE_PERMISSION, **{"XOR-PEER-ADDRESS": (self.peer_addr[0], 0)}
        )
        return f"peer {self.peer_addr[0]}"

    async def open_peer(self) -> None:
        loop = asyncio.get_running_loop()
        relayed = ipaddress.ip_address(self.relayed[0])
        server_ip = ipaddress.ip_address(self.server[0])
        if self.peer_ip is not None:
            bind_ip = self.peer_ip
        elif relayed.is_loopback or server_ip.is_loopback:
            bind_ip = "127.0.0.1" if relayed.version == 4 else "::1"
        else:
            bind_ip = "0.0.0.0" if relayed.version == 4 else "::"
        ip = ipaddress.ip_address(bind_ip)
        sock = socket.socket(
            socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM
        )
        try:
            if ip.version == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind((bind_ip, 0))
            except OSError:  # an explicit peer that is not ours: listen anywhere, expect no echo
                sock.bind(("::" if ip.version == 6 else "0.0.0.0", 0))
        except BaseException:
            sock.close()
            raise
        transport, _ = await loop.create_datagram_endpoint(lambda: self.peer, sock=sock)
        self.transports.append(transport)
        port = sock.getsockname()[1]
        if self.peer_ip is not None or ip.is_loopback:
            self.peer_addr = (bind_ip, port)
        else:
            self.peer_addr = await self.discover_peer(server_ip, relayed)

    async def discover_peer(self, server_ip: Any, relayed: Any) -> tuple[str, int]:
        if server_ip.version != relayed.version:
            raise _StepFailed(
                f"no IPv{relayed.version} path to the server to reach the relay from; "
                "name a peer explicitly"
            )
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        transaction = stun.Transaction(request, self.server, self.peer)
        self.peer.transactions[request.transaction_id] = transaction
        response, _ = await self.clock.wait(transaction.run())
        mapped: tuple[str, int] = response.attributes["XOR-MAPPED-ADDRESS"]
        return mapped

    async def channel(self) -> str:
        assert self.proto is not None
        await self.request(
            stun.Method.CHANNEL_BIND,
            **{"CHANNEL-NUMBER": CHANNEL, "XOR-PEER-ADDRESS": self.peer_addr},
        )
        # Let aioice's demultiplexer hand ChannelData for this channel to our receiver.
        self.proto.channel_to_peer[CHANNEL] = self.peer_addr
        self.proto.peer_to_channel[self.peer_addr] = CHANNEL
        return f"channel 0x{CHANNEL:04x} to {format_hostport(*self.peer_addr)}"

    async def relay(self) -> str:
        assert self.proto is not None
        receiver = _Receiver()
        self.proto.receiver = receiver
        token = b"natkit-turn-check " + os.urandom(8).hex().encode()
        frame = struct.pack("!HH", CHANNEL, len(token)) + token
        start = time.perf_counter()
        # UDP may drop a packet: resend a few times within the budget before giving up.
        for attempt in range(_RELAY_TRIES):
            self.proto._send(frame)
            wait = min(self.clock.left(), self.clock.timeout / _RELAY_TRIES)
            try:
                while True:
                    data = await asyncio.wait_for(receiver.got.get(), wait)
                    if data == token:
                        rtt = (time.perf_counter() - start) * 1000
                        self.report.rtt_ms = round(rtt, 3)
                        seen = self.peer.seen_from
                        via = format_hostport(*seen) if seen else "?"
                        return f"echo from the peer via {via}" + (
                            f" after {attempt + 1} sends" if attempt else ""
                        )
            except TimeoutError:
                if self.clock.left() <= 0:
                    break
        where = (
            "the peer got nothing" if self.peer.seen_from is None else "the echo never came back"
        )
        raise _StepFailed(f"no round trip through the relay ({where})")

    async def close(self) -> None:
        proto = self.proto
        if proto is not None and self.relayed[0] and not proto.transport.is_closing():
            # Free the allocation now rather than at its lifetime (RFC 8656 §7: LIFETIME 0).
            message = stun.Message(
                message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST
            )
            message.attributes["LIFETIME"] = 0
            with contextlib.suppress(Exception):  # best effort: the server expires it anyway
                await asyncio.wait_for(proto.request(message), 1.0)
        for transport in self.transports:
            transport.close()


async def check_turn(
    uri: TurnURI | str,
    *,
    username: str | None = None,
    password: str | None = None,
    secret: str | None = None,
    timeout: float = 5.0,
    peer: str | None = None,
    family: Literal[4, 6] | None = None,
    insecure: bool = False,
    until: StepName = "relay",
) -> TurnCheckReport:
    """Check the TURN server at `uri` end to end; see the module docstring.

    Credentials: `username` + `password` (long-term), or `secret` (REST API: a credential for
    user "natkit-check" is minted here). `timeout` bounds the whole check. `peer` forces the
    peer IP, `family` asks for an IPv4 or IPv6 relay (REQUESTED-ADDRESS-FAMILY), `insecure`
    skips TLS certificate verification for turns:. `until` stops after that stage: with
    ``until="permission"`` a policy probe of `peer` sends nothing to it. Raises ValueError only
    for a bad `uri` or `peer`.
    """
    parsed = uri if isinstance(uri, TurnURI) else TurnURI.parse(uri)
    if secret is not None:
        cred = mint(secret, username or "natkit-check", 600, time.time())
        username, password = cred.username, cred.password
    if peer is not None:
        ipaddress.ip_address(peer)  # ValueError for a bad input, before any traffic
    check = _Check(parsed, username, password, timeout, peer, family, insecure, until)
    return await check.run()
