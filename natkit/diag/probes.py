"""UDP probes: RFC 5780 mapping/filtering, hairpinning and reachability, many transactions at once.

Theory of operation. A `StunSocket` is one UDP socket running any number of Binding transactions
concurrently (matched by transaction id), with RTT-adaptive retransmission: the first RTO is
100 ms until a round trip has been measured, then RFC 6298's SRTT + 4·RTTVAR, doubling per
retransmission, always bounded by the transaction's deadline, and at least four sends fit in any
transaction's time (loss on a mobile link is covered without waiting out a backed-off RTO). Each
(re)send carries a transaction id of its own, so an answer tells which send it answers and every
answer is an RTT sample — Karn's ambiguity never arises, and a 600 ms satellite round trip is
measured by the first answer even though the 100 ms initial RTO fired several times before it.
A test that is *expected* to go unanswered (filtering, hairpinning) waits a quiet period derived
from the largest RTT seen (2·max RTT + 100 ms, at least 250 ms), not a fixed 2-8 s as classic
clients do; `probe_family` stretches its deadline to fit those periods when the path is slow.

`probe_family` runs the RFC 5780 tests for one address family on three sockets so that no test
disturbs another (RFC 5780 §4.3, §4.4):

    mapping socket M   test I to every server (reachability, mapped address, consistency);
                       then tests II and III against the first server with OTHER-ADDRESS
    filtering socket F talks only to that server's primary address, then asks it to answer
                       from elsewhere (CHANGE-REQUEST): F never sends to the alternate, so the
                       answers test the NAT's filter, and M's mappings are never touched
    hairpin socket H   sends to M's mapped address, as M itself does (RFC 5780 §4.5); did M
                       receive either request?

Everything after test I runs in parallel; a full run costs ~2 RTTs plus one quiet period.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import replace

from natkit.addr import Address
from natkit.diag.classify import Binding, FamilyProbe
from natkit.stun import ChangeRequest, ErrorCode, Message, StunDecodeError, parse_message
from natkit.stun.constants import AttrType, MessageClass, Method

__all__ = ["RttEstimator", "StunSocket", "local_ip_towards", "probe_family"]

INITIAL_RTO = 0.1
MIN_RTO = 0.015
MAX_RTO = 1.0
MIN_QUIET = 0.25
QUIET_MARGIN = 0.1
MAX_SENDS = 8
MIN_SENDS = 4


class RttEstimator:
    """RFC 6298 smoothed RTT, shared by the transactions towards one path."""

    def __init__(self, initial_rto: float = INITIAL_RTO) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.max_rtt = 0.0
        """The largest round trip measured: jitter makes the mean a poor bound for silence."""
        self._initial = initial_rto

    def sample(self, rtt: float) -> None:
        self.max_rtt = max(self.max_rtt, rtt)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    @property
    def rto(self) -> float:
        if self.srtt is None:
            return self._initial
        return min(MAX_RTO, max(MIN_RTO, self.srtt + 4 * self.rttvar))

    def quiet(self) -> float:
        """How long to wait for an answer that may legitimately never come: two of the slowest
        round trips seen, so a retransmission answers in time too (250 ms on a LAN-fast path,
        1.3 s over a 600 ms satellite hop)."""
        return max(MIN_QUIET, 2 * self.max_rtt + QUIET_MARGIN)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiters: dict[bytes, asyncio.Future[tuple[Message, Address, float]]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            message = parse_message(data)
        except StunDecodeError:
            return
        waiter = self.waiters.get(message.transaction_id)
        if waiter is not None and not waiter.done():
            waiter.set_result((message, Address(str(addr[0]), int(addr[1])), time.monotonic()))

    def error_received(self, exc: Exception) -> None:
        """ICMP errors on an unconnected socket say nothing reliable: the deadline decides."""


def _request(
    change: ChangeRequest | None = None, response_port: int | None = None
) -> tuple[bytes, bytes]:
    tid = os.urandom(12)
    message = Message(Method.BINDING, MessageClass.REQUEST, tid)
    if change is not None:
        message.add(AttrType.CHANGE_REQUEST, change)
    if response_port is not None:
        message.add(AttrType.RESPONSE_PORT, response_port)
    return tid, message.encode()


def _address(message: Message, *types: AttrType) -> Address | None:
    for t in types:
        value = message.get(t)
        if isinstance(value, Address):
            return value
    return None


class StunSocket:
    """One UDP socket bound to a concrete local IP, running concurrent Binding transactions."""

    def __init__(
        self, transport: asyncio.DatagramTransport, proto: _Protocol, rtt: RttEstimator
    ) -> None:
        self.transport, self.proto, self.rtt = transport, proto, rtt
        name = transport.get_extra_info("sockname")
        self.local = Address(str(name[0]), int(name[1]))

    @classmethod
    async def open(cls, local_ip: str, rtt: RttEstimator) -> StunSocket:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(_Protocol, local_addr=(local_ip, 0))
        return cls(transport, proto, rtt)

    def close(self) -> None:
        self.transport.close()

    def expect(self, tid: bytes) -> asyncio.Future[tuple[Message, Address, float]]:
        waiter: asyncio.Future[tuple[Message, Address, float]]
        waiter = asyncio.get_running_loop().create_future()
        self.proto.waiters[tid] = waiter
        return waiter

    async def exchange(
        self,
        target: Address,
        deadline: float,
        *,
        change: ChangeRequest | None = None,
        expect_on: StunSocket | None = None,
        response_port: int | None = None,
    ) -> tuple[Message, Address, float, int] | int:
        """Send one request (retransmitted) until answered or `deadline` (time.monotonic).

        The answer is awaited on `expect_on` (default: this socket): the hairpin test sends from
        one socket and listens on another. Returns (message, source, rtt, sends) or the number
        of sends when nothing came.
        """
        listener = expect_on or self
        sent: dict[bytes, float] = {}  # transaction id of each send → when it went
        waiters: dict[asyncio.Future[tuple[Message, Address, float]], bytes] = {}
        first = time.monotonic()
        # At least MIN_SENDS fit before the deadline, however large the RTO has grown.
        spacing = max(MIN_RTO, (deadline - first) / MIN_SENDS)
        rto, sends = min(self.rtt.rto, spacing), 0
        try:
            while sends < MAX_SENDS:
                now = time.monotonic()
                if now >= deadline:
                    break
                tid, data = _request(change, response_port)
                waiters[listener.expect(tid)] = tid
                self.transport.sendto(data, target)
                sent[tid] = time.monotonic()
                sends += 1
                done, _ = await asyncio.wait(
                    set(waiters),
                    timeout=min(rto, deadline - now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if done:
                    waiter = done.pop()
                    message, source, at = waiter.result()
                    rtt = at - sent[waiters[waiter]]  # this send's answer: an exact sample
                    self.rtt.sample(rtt)
                    return message, source, rtt, sends
                rto = min(rto * 2, MAX_RTO, spacing)
            return sends
        finally:
            for waiter, tid in waiters.items():
                listener.proto.waiters.pop(tid, None)
                waiter.cancel()

    async def binding(
        self, target: Address, deadline: float, change: ChangeRequest | None = None
    ) -> Binding:
        """One Binding transaction to `target`, as a `Binding` outcome."""
        try:
            got = await self.exchange(target, deadline, change=change)
        except OSError as err:
            return Binding(target, "error", error=f"cannot send: {err.strerror or err}")
        if isinstance(got, int):
            return Binding(target, "timeout", sends=got)
        message, source, rtt, sends = got
        base = Binding(target, "ok", origin=source, rtt_ms=round(rtt * 1000, 3), sends=sends)
        if message.message_class == MessageClass.ERROR:
            code = message.get(AttrType.ERROR_CODE)
            text = f"{code.code} {code.reason}" if isinstance(code, ErrorCode) else "error response"
            return replace(base, status="error", error=text.strip())
        mapped = _address(message, AttrType.XOR_MAPPED_ADDRESS, AttrType.MAPPED_ADDRESS)
        if mapped is None:
            return replace(base, status="error", error="answer without a mapped address")
        other = _address(message, AttrType.OTHER_ADDRESS, AttrType.CHANGED_ADDRESS)
        return replace(base, mapped=mapped, other=other)


def local_ip_towards(target: Address) -> str:
    """The source IP the kernel would use to reach `target` (a route lookup: nothing is sent)."""
    family = socket.AF_INET6 if target.family == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((target.host, target.port))
        return str(probe.getsockname()[0])


async def _hairpin(m: StunSocket, h: StunSocket, mapped: Address, deadline: float) -> bool:
    """RFC 5780 §4.5: a request to our own mapped address, from M itself and from a second
    socket; hairpinning works if the NAT loops either back to M."""
    results = await asyncio.gather(
        m.exchange(mapped, deadline),
        h.exchange(mapped, deadline, expect_on=m),
        return_exceptions=True,
    )
    return any(isinstance(r, tuple) for r in results)


async def probe_family(
    family: int,
    servers: list[Address],
    *,
    reach_deadline: float,
    deadline: float,
    rtt: RttEstimator | None = None,
) -> FamilyProbe:
    """Run every UDP probe for one family; `reach_deadline` bounds test I (UDP blocked?),
    `deadline` everything. Never raises for what the network does."""
    if not servers:
        return FamilyProbe(family, error="no server of this family")
    try:
        local_ip = local_ip_towards(servers[0])
    except OSError as err:
        return FamilyProbe(family, error=f"no IPv{family} route to {servers[0]}: {err.strerror}")
    rtt = rtt or RttEstimator()
    sockets: list[StunSocket] = []
    try:
        for _ in range(3):
            sockets.append(await StunSocket.open(local_ip, rtt))
        return await _run(family, servers, sockets, reach_deadline, deadline)
    except OSError as err:
        return FamilyProbe(family, error=f"cannot open a UDP socket on {local_ip}: {err}")
    finally:
        for s in sockets:
            s.close()


async def _run(
    family: int,
    servers: list[Address],
    sockets: list[StunSocket],
    reach_deadline: float,
    deadline: float,
) -> FamilyProbe:
    m, f, h = sockets
    tests = [asyncio.ensure_future(m.binding(s, min(reach_deadline, deadline))) for s in servers]
    try:
        chosen = await _first_with_other(tests)
    except BaseException:
        for t in tests:
            t.cancel()
        raise
    if chosen is None:
        results = tuple(await asyncio.gather(*tests))
        return FamilyProbe(family, local=m.local, servers=results)
    index, first = chosen
    assert first.other is not None and first.mapped is not None
    other, primary = first.other, first.target
    # A slow path (satellite, mobile) needs more than a LAN-tuned budget: one more round trip
    # for the filtering socket's first answer, then a quiet period — never cut short by it.
    needed = time.monotonic() + 1.5 * m.rtt.max_rtt + m.rtt.quiet() + QUIET_MARGIN
    deadline = max(deadline, needed)

    def quiet() -> float:
        return min(deadline, time.monotonic() + m.rtt.quiet())

    async def filtering() -> tuple[Binding, Binding | None, Binding | None]:
        f1 = await f.binding(primary, min(deadline, time.monotonic() + 4 * m.rtt.quiet()))
        if not f1.ok or f1.other is None:
            return f1, None, None
        both, port = await asyncio.gather(
            f.binding(primary, quiet(), ChangeRequest(change_ip=True, change_port=True)),
            f.binding(primary, quiet(), ChangeRequest(change_ip=False, change_port=True)),
        )
        return f1, both, port

    answer_by = min(deadline, time.monotonic() + 4 * m.rtt.quiet())
    hairpin: asyncio.Future[bool] | None = None
    if first.mapped != m.local:
        hairpin = asyncio.ensure_future(_hairpin(m, h, first.mapped, quiet()))
    alt_ip, alt_both, (f1, both, port) = await asyncio.gather(
        m.binding(Address(other.host, primary.port), answer_by),
        m.binding(other, answer_by),
        filtering(),
    )
    results = tuple(await asyncio.gather(*tests))
    return FamilyProbe(
        family,
        local=m.local,
        servers=results,
        rfc5780_index=index,
        alt_ip=alt_ip,
        alt_ip_port=alt_both,
        filter_primary=f1,
        change_ip_port=both,
        change_port=port,
        hairpin=await hairpin if hairpin is not None else None,
    )


async def _first_with_other(
    tests: list[asyncio.Task[Binding]],
) -> tuple[int, Binding] | None:
    """The first server to answer test I with OTHER-ADDRESS (a silent one is not waited for)."""
    pending: set[asyncio.Task[Binding]] = set(tests)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        answered = [
            (tests.index(t), t.result())
            for t in done
            if t.result().ok and t.result().other is not None and t.result().mapped is not None
        ]
        if answered:
            return min(answered, key=lambda pair: pair[0])
    return None
