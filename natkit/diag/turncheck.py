"""A real TURN check: allocate, permit a peer, bind a channel, round-trip a packet via the relay.

The same check serves ``natkit turn check`` and ``natkit diagnose``: `check_turn` returns a
`TurnCheckReport` (one `Step` per stage, its time and the server's ERROR-CODE if any) and never
raises for what the server or the network does; the CLI renders it.

Each RFC 8656 stage is timed and blamed on its own:

    resolve → connect (tcp/tls) → allocate (§7) → permission (§9) → channel (§12) → relay

Every packet of the check goes over exactly the transport the URL names (udp, tcp or tls, to that
host:port), and the *peer* is chosen so the check works behind every kind of NAT (`method`):

- ``two-allocations`` (first choice): a second allocation B is the peer. The client A permits
  and binds a channel to B's relayed address, B permits A's; A's ChannelData reaches B as a Data
  indication and B echoes it with a Send indication. Both sockets only talk outbound to the
  server, so no NAT on the client's side can filter anything. It needs the server to relay to
  its own relayed addresses (natkit's builtin relay does, only within its relay port range).
- ``peer-socket`` (fallback when the server refuses B's address, e.g. coturn, which denies its
  own addresses): a UDP socket of this process. It learns its server-reflexive address with a
  Binding to the TURN server (UDP URLs only) — or binds loopback for a loopback server — and,
  once permitted, sends toward A's relayed address first: the relay hands that packet to A,
  which learns the peer's real mapped port (a symmetric NAT picks a new one per destination),
  and the NAT learns the flow, so the relay's packets get in (port-restricted, symmetric, CGNAT).
- ``explicit-peer``: ``peer=`` names the peer IP, e.g. to prove a policy refuses
  ``::ffff:127.0.0.1`` (with ``until="permission"`` nothing is sent to it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from natkit.addr import format_hostport
from natkit.diag.turnclient import Clock, Leg, PeerSocket, StepFailed, failure
from natkit.turn.credentials import mint
from natkit.turn.uri import TurnURI

__all__ = ["Method", "Step", "TurnCheckReport", "check_turn"]

CHANNEL = 0x4000  # first channel number (RFC 8656 §12)
_RELAY_TRIES = 4
_TOKEN = b"natkit-turn-check "
_PINHOLE = b"natkit-turn-check pinhole "

StepName = Literal["resolve", "connect", "allocate", "permission", "channel", "relay"]
Method = Literal["two-allocations", "peer-socket", "explicit-peer"]
Address = tuple[str, int]


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
    method: Method | None = None
    """How the peer was made (module docstring); None before the permission stage."""
    method_note: str | None = None
    """Why the first choice (two-allocations) was not used, when it was not."""

    @property
    def failed_step(self) -> Step | None:
        return next((s for s in self.steps if not s.ok), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _policy_hint(ip: str) -> str:
    return (
        f"the server's peer policy refuses {ip}: open it in turn.peers.allow (coturn: "
        "allowed-peer-ip), or check from an address the policy allows"
    )


_STAGES_AFTER_ALLOCATE = 4.0  # times allocate's (two RTTs): ~eight RTTs of stages after it


class _Check:
    def __init__(self, uri: TurnURI, username: str | None, password: str | None,
                 timeout: float, peer: str | None, family: int | None, insecure: bool,
                 until: StepName) -> None:  # fmt: skip
        self.uri, self.username, self.password = uri, username, password
        self.clock = Clock(timeout)
        self.peer_ip, self.family, self.insecure = peer, family, insecure
        self.until = until
        self.report = TurnCheckReport(url=str(uri))
        self.server: Address = ("", 0)
        self.a: Leg | None = None
        self.b: Leg | None = None
        self.sock: PeerSocket | None = None
        self.peer_addr: Address = ("", 0)
        self.got: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()
        self.echoed_by_b = 0

    async def step(self, name: StepName, coro: Any) -> bool:
        start = time.perf_counter()
        try:
            detail = await coro
        except Exception as err:  # every failure becomes a report line, never a traceback
            fail = failure(err, self.report.server_address or "")
            udp_silence = self.uri.transport == "udp" and fail.detail.startswith("no answer")
            if name == "allocate" and udp_silence:  # a refusal would have come back as ICMP
                fail.detail += " (UDP filtered on the way? try ?transport=tcp)"
            if fail.code == 401:  # after aioice answered the challenge with our credentials
                fail.detail += (
                    " — wrong or missing TURN credentials (--user/--password, or --secret: the"
                    " server's turn.auth.secret)"
                )
            ms = (time.perf_counter() - start) * 1000
            self.report.steps.append(Step(name, False, ms, fail.detail, fail.code, fail.reason))
            self.report.error = f"{name}: {fail.detail}"
            return False
        ms = (time.perf_counter() - start) * 1000
        self.report.steps.append(Step(name, True, ms, detail or ""))
        if name == "allocate":
            # Allocate took two round trips (the 401 challenge, then the real one); what follows
            # (a second allocation, permissions, a channel, the relayed echo) takes up to eight.
            self.clock.stretch(_STAGES_AFTER_ALLOCATE * ms / 1000)
        return True

    async def run(self) -> TurnCheckReport:
        try:
            ok = await self.step("resolve", self.resolve())
            if ok and self.uri.transport == "udp":
                # A local socket: nothing to report on the wire; a local error blames allocate.
                ok = await self.udp_socket()
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
            raise StepFailed(f"cannot resolve {self.uri.host!r}: {err.strerror}") from None
        self.server = infos[0][4][:2]
        self.report.server_address = format_hostport(*self.server)
        return self.report.server_address

    async def leg(self) -> Leg:
        """A new allocation's connection, over the URL's transport only (issue 10, item 2)."""
        leg = Leg(self.server, self.uri.transport, self.username, self.password, self.clock)
        context: ssl.SSLContext | None = None
        if self.uri.secure:
            context = ssl.create_default_context()
            if self.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        try:
            await leg.connect(context, self.uri.host if context else None)
        except BaseException:
            await leg.close()
            raise
        return leg

    async def udp_socket(self) -> bool:
        try:
            self.a = await self.leg()
        except OSError as err:
            self.report.steps.append(Step("allocate", False, 0.0, f"cannot send: {err}"))
            self.report.error = f"allocate: cannot send: {err}"
            return False
        return True

    async def connect(self) -> str:
        self.a = await self.leg()
        return "TLS" if self.uri.secure else "TCP"

    async def allocate(self) -> str:
        assert self.a is not None
        detail = await self.a.allocate(self.family)
        self.report.relayed_address = format_hostport(*self.a.relayed)
        mapped = self.a.mapped
        self.report.mapped_address = format_hostport(*mapped) if mapped else None
        self.a.proto.on_data = lambda data, addr: self.got.put_nowait((data, addr))  # type: ignore[union-attr]
        return detail

    # -- permission: pick the peer ---------------------------------------------------------

    async def permission(self) -> str:
        if self.peer_ip is not None:
            self.report.method = "explicit-peer"
            return await self.socket_peer(self.peer_ip)
        note = await self.two_allocations()
        if note is None:
            return (
                f"peer {self.peer_addr[0]}: a second allocation "
                f"{format_hostport(*self.peer_addr)} (two-allocations)"
            )
        self.report.method_note = note
        self.report.method = "peer-socket"
        return await self.socket_peer(None, note) + f" (peer-socket: {note})"

    async def two_allocations(self) -> str | None:
        """Make allocation B the peer; None when it worked, else why not (then fall back).

        Anything but a refusal by the server (a timeout, a lost connection) fails the step:
        the fallback could not do better on the same path."""
        assert self.a is not None
        try:
            self.b = b = await self.leg()
            b.share_credentials(self.a)  # the realm and nonce A got: no second 401 round trip
            await b.allocate(self.family)
        except Exception as err:
            fail = failure(err, self.report.server_address or "")
            if fail.code is None:
                raise fail from None
            return f"the second allocation was refused ({fail.detail})"
        try:
            await self.a.permit(b.relayed[0])
            await b.permit(self.a.relayed[0])
        except Exception as err:
            fail = failure(err)
            if fail.code != 403:
                raise fail from None
            return f"the server refuses its own relayed address {b.relayed[0]} as a peer (403)"
        assert b.proto is not None
        b.proto.on_data = self.echo_by_b
        self.peer_addr = b.relayed
        self.report.method = "two-allocations"
        self.report.peer_address = format_hostport(*b.relayed)
        return None

    def echo_by_b(self, data: bytes, addr: Address) -> None:
        """B's end: what A relays to it goes straight back through B's relay (§11.2 Send)."""
        if data.startswith(_TOKEN) and self.b is not None:
            self.echoed_by_b += 1
            self.b.send_indication(addr, data)

    async def socket_peer(self, explicit: str | None, note: str = "") -> str:
        assert self.a is not None
        relayed = ipaddress.ip_address(self.a.relayed[0])
        server_ip = ipaddress.ip_address(self.server[0])
        local = relayed.is_loopback or server_ip.is_loopback
        if explicit is None and not local and self.uri.transport != "udp":
            # Without UDP to the server there is nothing to learn our UDP address from.
            code = 403 if "(403)" in note else None
            raise StepFailed(
                f"no way to make a peer: {note}, and over {self.uri.transport.upper()} the "
                "check cannot learn a UDP address of its own (the peer-socket method); the "
                f"server's peer policy decides: allow its relay IP {relayed} in "
                "turn.peers.allow (coturn: allowed-peer-ip), or check a UDP URL",
                code, "Forbidden" if code else None,
            )  # fmt: skip
        if explicit is not None:
            bind_ip = explicit
        elif local:
            bind_ip = "127.0.0.1" if relayed.version == 4 else "::1"
        else:
            bind_ip = "0.0.0.0" if relayed.version == 4 else "::"
        self.sock = PeerSocket()
        port = await self.sock.open(bind_ip)
        if explicit is not None or local:
            self.peer_addr = (bind_ip, port)
        else:
            if server_ip.version != relayed.version:
                raise StepFailed(
                    f"no IPv{relayed.version} path to the server to reach the relay from; "
                    "name a peer explicitly"
                )
            self.peer_addr = await self.sock.discover(self.server, self.clock)
        self.report.peer_address = format_hostport(*self.peer_addr)
        try:
            await self.a.permit(self.peer_addr[0])
        except Exception as err:
            fail = failure(err)
            if fail.code == 403:
                fail.detail += f" — {_policy_hint(self.peer_addr[0])}"
            raise fail from None
        return f"peer {self.peer_addr[0]}"

    # -- channel and the round trip --------------------------------------------------------

    async def pinhole(self) -> str:
        """The peer socket sends toward A's relayed address first: the NAT in front of it learns
        the flow, and A learns the peer's real mapped port from the Data indication."""
        assert self.a is not None and self.sock is not None
        token = _PINHOLE + os.urandom(4).hex().encode()
        wait = min(self.clock.left() / 4, 0.5)
        for _ in range(3):
            self.sock.send(token, self.a.relayed)
            try:
                while True:
                    data, addr = await asyncio.wait_for(self.got.get(), wait)
                    if data == token:
                        if addr != self.peer_addr:
                            learned = f"; peer port {addr[1]} as the relay sees it"
                            self.peer_addr = addr
                            self.report.peer_address = format_hostport(*addr)
                            return learned
                        return ""
            except TimeoutError:
                continue
        return ""  # the relay may not hand a pinhole on; the round trip is the test

    async def channel(self) -> str:
        assert self.a is not None
        note = ""
        if self.sock is not None and self.report.method == "peer-socket":
            note = await self.pinhole()
        await self.a.bind(CHANNEL, self.peer_addr)
        return f"channel 0x{CHANNEL:04x} to {format_hostport(*self.peer_addr)}{note}"

    async def relay(self) -> str:
        assert self.a is not None
        token = _TOKEN + os.urandom(8).hex().encode()
        start = time.perf_counter()
        # UDP may drop a packet: resend, spreading what is left of the budget over the tries.
        for attempt in range(_RELAY_TRIES):
            self.a.send_channel(CHANNEL, token)
            wait = self.clock.left() / (_RELAY_TRIES - attempt)
            try:
                while True:
                    data, _ = await asyncio.wait_for(self.got.get(), wait)
                    if data == token:
                        self.report.rtt_ms = round((time.perf_counter() - start) * 1000, 3)
                        return self.relayed_detail(attempt)
            except TimeoutError:
                if self.clock.left() <= 0:
                    break
        if self.report.method == "two-allocations":
            got = self.echoed_by_b > 0
        else:
            got = self.sock is not None and self.sock.seen_from is not None
        where = "the peer got nothing" if not got else "the echo never came back"
        raise StepFailed(f"no round trip through the relay ({where})")

    def relayed_detail(self, attempt: int) -> str:
        if self.report.method == "two-allocations":
            via = f"the second allocation {self.report.peer_address}"
        else:
            seen = self.sock.seen_from if self.sock else None
            via = format_hostport(*seen) if seen else "?"
        return f"echo from the peer via {via}" + (f" after {attempt + 1} sends" if attempt else "")

    async def close(self) -> None:
        legs = [leg for leg in (self.a, self.b) if leg is not None]
        await asyncio.gather(*(leg.close() for leg in legs), return_exceptions=True)
        if self.sock is not None:
            self.sock.close()


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
