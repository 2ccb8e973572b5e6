"""One side of a live WebRTC test: aiortc offer/answer through the rendezvous, then measure.

Theory of operation. The offerer creates a pairing code (shown to the user at once), gathers its
candidates (aiortc gathers them all during setLocalDescription: no trickle ICE, so one SDP each
way is the whole exchange), sends the offer and long-polls for the answer. The answerer reads the
offer, answers, and both run ICE. "Connected" means the data channel opened (ICE + DTLS + SCTP).
The offerer then drives a small protocol on the channel (JSON text messages):

    ping i -> pong i          `pings` times: RTT
    N bytes of binary, done   -> recv N: throughput (time until the peer confirms receipt)
    report {...}              -> bye: the answerer reports the same numbers

ICE time is measured from the moment this side knows both descriptions (ICE checks start) to the
first "completed"/"connected" ICE state. The selected pair and, on failure, the tried pairs come
from aioice's connection behind aiortc's ICE transport (private attributes, read defensively).

aiortc quirks handled here: with `iceServers=None` it would quietly use Google's STUN server, so a
list is always passed; aioice never offers 127.0.0.1 as a host candidate, so `host_addresses`
can pin the host candidates (loopback tests, multi-homed machines).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from natkit.p2p.portmap import PortMapper, mapping_ports
from natkit.p2p.report import Candidate, P2PResult
from natkit.signal.client import SignalClient

__all__ = ["P2POptions", "answer", "offer"]

_CHUNK = 16384  # SCTP user messages above ~16 KiB fragment badly in some stacks; browsers use this


@dataclass(frozen=True, slots=True)
class P2POptions:
    """How to run one side of the test."""

    signal: str
    """Rendezvous URL, http://HOST:PORT."""
    stun: tuple[str, ...] = ()
    """stun:HOST[:PORT] URLs (aioice uses the first)."""
    turn: tuple[str, ...] = ()
    """turn:/turns: URLs (aioice uses the first usable one)."""
    username: str | None = None
    password: str | None = None
    relay_only: bool = False
    """Offer only relay candidates (RFC 8829 iceTransportPolicy "relay")."""
    timeout: float = 30.0
    """Seconds from knowing both descriptions to the data channel opening; the measurements
    then get as long again (a 600 ms RTT path needs ~15 round trips in all)."""
    wait: float = 300.0
    """Seconds to wait for the other peer to show up at the rendezvous."""
    host_addresses: tuple[str, ...] | None = None
    """Only these local IPs become host candidates (None: every interface but loopback)."""
    pings: int = 10
    payload_bytes: int = 1 << 20
    map_port: bool = False
    """Map the ICE sockets' ports through the gateway (PCP, NAT-PMP, UPnP) and offer the mapped
    addresses as server-reflexive candidates (`natkit.p2p.portmap`)."""


async def offer(options: P2POptions, on_code: Callable[[str], None] = lambda _: None) -> P2PResult:
    """The calling side: create a pairing, tell `on_code`, connect, measure."""
    client = SignalClient(options.signal)
    peer = _Peer("offer", options)
    try:
        peer.result.code = code = await client.create()
        on_code(code)
        channel = peer.pc.createDataChannel("natkit")
        channel.on("open", peer.opened.set)
        with _host_addresses(options.host_addresses), mapping_ports(peer.mapper):
            await peer.pc.setLocalDescription(await peer.pc.createOffer())
        await client.put(code, "offer", peer.pc.localDescription.sdp)
        sdp = await client.wait(code, "answer", options.wait)
        peer.ice_started()
        await peer.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        if await peer.connect():
            await peer.measure(channel)
        await peer.diagnose_if_failed()
        return peer.finish()
    finally:
        await peer.close()


async def answer(code: str, options: P2POptions) -> P2PResult:
    """The joining side: read the offer for `code`, answer, connect, echo the measurements."""
    client = SignalClient(options.signal)
    peer = _Peer("answer", options)
    peer.result.code = code
    try:
        sdp = await client.wait(code, "offer", options.wait)
        channels: list[RTCDataChannel] = []

        @peer.pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            channels.append(channel)
            channel.on("message", lambda message: peer.echo(channel, message))
            peer.opened.set()  # aiortc announces a channel once its DCEP open arrived

        await peer.pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        with _host_addresses(options.host_addresses), mapping_ports(peer.mapper):
            await peer.pc.setLocalDescription(await peer.pc.createAnswer())
        peer.ice_started()
        await client.put(code, "answer", peer.pc.localDescription.sdp)
        if await peer.connect():
            with suppress(TimeoutError):
                await asyncio.wait_for(peer.reported.wait(), peer.remaining())
            if not peer.reported.is_set():
                peer.result.error = "the offerer sent no measurements in time"
        await peer.diagnose_if_failed()
        return peer.finish()
    finally:
        await peer.close()


class _Peer:
    """State shared by both roles: the peer connection, the clock and the result being built."""

    def __init__(self, role: str, options: P2POptions) -> None:
        self.options = options
        self.result = P2PResult(role)
        self.pc = RTCPeerConnection(_configuration(options))
        self.opened = asyncio.Event()
        self.failed = asyncio.Event()
        self.reported = asyncio.Event()
        self._start = time.monotonic()
        self._ice_start: float | None = None
        self._deadline = self._start + options.timeout + options.wait
        self._received = 0
        self.mapper = PortMapper() if options.map_port else None
        self.pc.on("iceconnectionstatechange", self._on_ice_state)

    def ice_started(self) -> None:
        self._ice_start = time.monotonic()
        self._deadline = self._ice_start + self.options.timeout

    def remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _on_ice_state(self) -> None:
        state = self.pc.iceConnectionState
        if self.result.duration_s:  # finished: our own close() is not part of the story
            return
        now = time.monotonic()
        self.result.ice_states.append((now - self._start, state))
        if state in ("connected", "completed") and self.result.ice_s is None:
            self.result.ice_s = now - (self._ice_start or self._start)
        elif state == "failed":
            self._snapshot()  # before aiortc closes the connection and aioice forgets the pairs
            self.failed.set()

    async def connect(self) -> bool:
        """Wait until the data channel opens, ICE fails or time runs out."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self.opened, self.failed)]
        try:
            await asyncio.wait(waits, timeout=self.remaining(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        self._snapshot()
        if self.opened.is_set():
            self.result.connected = True
            # The measurements get a budget of their own: over a 600 ms satellite path ICE,
            # DTLS and SCTP take ~5 round trips of the first one, and pings + bulk need ~10 more.
            self._deadline = time.monotonic() + self.options.timeout
        elif self.failed.is_set():
            self.result.error = "ICE failed: no candidate pair worked"
        else:
            self.result.error = f"not connected within {self.options.timeout:g} s"
        return self.result.connected

    async def measure(self, channel: RTCDataChannel) -> None:
        """Offerer: RTT by ping-pong, throughput by sending `payload_bytes`, then report."""
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def on_message(message: str | bytes) -> None:
            if isinstance(message, str):
                inbox.put_nowait(json.loads(message))

        channel.on("message", on_message)

        async def expect(kind: str) -> dict[str, Any]:
            async with asyncio.timeout(self.remaining()):
                while (message := await inbox.get()).get("t") != kind:
                    pass
            return message

        try:
            rtts = []
            for i in range(self.options.pings):
                sent = time.monotonic()
                channel.send(json.dumps({"t": "ping", "i": i}))
                await expect("pong")
                rtts.append((time.monotonic() - sent) * 1000)
            if rtts:
                self.result.rtt_ms = statistics.median(rtts)
                self.result.rtt_min_ms = min(rtts)
            await self._throughput(channel, expect)
            report = {
                "t": "report",
                "rtt_ms": self.result.rtt_ms,
                "rtt_min_ms": self.result.rtt_min_ms,
                "throughput_mbps": self.result.throughput_mbps,
                "bytes": self.result.bytes,
            }
            channel.send(json.dumps(report))
            await expect("bye")
        except TimeoutError:
            self.result.error = "connected, but the measurements did not finish in time"

    async def _throughput(self, channel: RTCDataChannel, expect: Any) -> None:
        total = self.options.payload_bytes
        chunk = bytes(_CHUNK)
        sent_at = time.monotonic()
        for offset in range(0, total, _CHUNK):
            channel.send(chunk[: min(_CHUNK, total - offset)])
        # The channel is reliable and ordered: "done" arrives after every byte before it.
        channel.send(json.dumps({"t": "done", "bytes": total}))
        received = (await expect("recv"))["bytes"]
        elapsed = time.monotonic() - sent_at
        self.result.bytes = int(received)
        if elapsed > 0:
            self.result.throughput_mbps = received * 8 / elapsed / 1e6

    def echo(self, channel: RTCDataChannel, message: str | bytes) -> None:
        """Answerer: count bulk bytes, answer pings and `done`, take the offerer's report."""
        if isinstance(message, bytes):
            self._received += len(message)
            return
        data = json.loads(message)
        kind = data.get("t")
        if kind == "ping":
            channel.send(json.dumps({"t": "pong", "i": data.get("i")}))
        elif kind == "done":
            channel.send(json.dumps({"t": "recv", "bytes": self._received}))
        elif kind == "report":
            self.result.rtt_ms = data.get("rtt_ms")
            self.result.rtt_min_ms = data.get("rtt_min_ms")
            self.result.throughput_mbps = data.get("throughput_mbps")
            self.result.bytes = int(data.get("bytes") or 0)
            channel.send(json.dumps({"t": "bye"}))
            self.reported.set()

    def _snapshot(self) -> None:
        """Copy candidates, the selected pair and the check list out of aioice."""
        conn = _ice_connection(self.pc)
        if conn is None:
            return
        result = self.result
        result.local_candidates = [_candidate(c) for c in conn.local_candidates] or (
            result.local_candidates
        )
        result.remote_candidates = [_candidate(c) for c in conn.remote_candidates] or (
            result.remote_candidates
        )
        pair = conn._nominated.get(1)
        if pair is not None:
            result.selected = (_candidate(pair.local_candidate), _candidate(pair.remote_candidate))
        tried = [
            (_candidate(p.local_candidate), _candidate(p.remote_candidate), p.state.name.lower())
            for p in conn._check_list
        ]
        result.tried_pairs = tried or result.tried_pairs

    async def diagnose_if_failed(self) -> None:
        """Not connected: ask `natkit diagnose` (its UDP probes, ~0.3 s) what this side's NAT
        does, against the first STUN server, so the report can say why."""
        if self.result.connected or not self.options.stun:
            return
        from natkit.diag.report import to_json
        from natkit.diag.runner import DiagnoseOptions, StunSpec, diagnose

        try:
            spec = StunSpec.parse(self.options.stun[0])
            found = to_json(
                await diagnose(DiagnoseOptions(stun=(spec,), timeout=2.0, gather=False))
            )
        except Exception as err:  # the report must come out even if the diagnosis cannot
            self.result.diagnosis = {"error": f"{type(err).__name__}: {err}"}
            return
        verdict = found["verdict"]
        self.result.diagnosis = {
            "nat_type": found["nat_type"],
            "mapping": found["mapping"],
            "filtering": found["filtering"],
            "direct_p2p": verdict["direct_p2p"],
            "compatible_peer_types": verdict["compatible_peer_types"],
        }

    def finish(self) -> P2PResult:
        self.result.duration_s = time.monotonic() - self._start
        if self.mapper is not None:
            self.result.port_mappings = self.mapper.to_json()
        if not self.result.connected:
            self.result.advice = _advice(self.result, self.options)
        return self.result

    async def close(self) -> None:
        try:
            with suppress(Exception):
                await asyncio.wait_for(self.pc.close(), 5)
        finally:
            if self.mapper is not None:
                self.mapper.close()


def _configuration(options: P2POptions) -> RTCConfiguration:
    servers = [RTCIceServer(urls=url) for url in options.stun]
    servers += [
        RTCIceServer(urls=url, username=options.username, credential=options.password)
        for url in options.turn
    ]
    policy = RTCIceTransportPolicy.RELAY if options.relay_only else RTCIceTransportPolicy.ALL
    # Always a list, never None: None makes aiortc use stun.l.google.com behind the user's back.
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


def _ice_connection(pc: RTCPeerConnection) -> Any:
    try:
        return pc.sctp.transport.transport._connection  # type: ignore[union-attr]
    except AttributeError:
        return None


_candidate = Candidate.from_aioice


def _advice(result: P2PResult, options: P2POptions) -> str:
    local_types = {c.type for c in result.local_candidates}
    if (options.turn or options.relay_only) and "relay" not in local_types:
        return "the TURN server gave no relay candidate: check it with `natkit turn check URL`"
    if options.relay_only or "relay" in local_types:
        return (
            "even the relay failed: the TURN server may refuse this peer (turn.peers.deny) "
            "or block the traffic; check `natkit turn check URL`"
        )
    if not result.local_candidates:
        return "no ICE candidates: no usable local address (see --host)"
    if result.error and result.error.startswith("ICE") and not result.remote_candidates:
        return "the other peer offered no candidates: see its report (TURN or --host problem)"
    return (
        "no direct path: both NATs may map or filter per destination (symmetric, or "
        "port-restricted with symmetric); run `natkit diagnose` on each side and retry with "
        "--turn URL"
    )


# aioice reads its host addresses from a module function; a context variable lets concurrent
# sessions in one process (tests, the matrix runner) each pin their own without racing.
_PINNED: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "natkit_p2p_host_addresses", default=None
)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    pinned = _PINNED.get()
    if pinned is None:
        return list(_original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
    return [a for a in pinned if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


@contextmanager
def _host_addresses(addresses: tuple[str, ...] | None) -> Iterator[None]:
    aioice.ice.get_host_addresses = _get_host_addresses
    token = _PINNED.set(addresses)
    try:
        yield
    finally:
        _PINNED.reset(token)
