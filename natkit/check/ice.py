"""natkit as the browser's remote ICE-lite agent: the mapping and filtering tests. Sans-IO.

Theory of operation. natkit check owns four UDP sockets of its own (`ROLES`): three ports on the
server's primary IP (p1, p2, p3) and one on its alternate IP (a1), plus one on its IPv6 address
(v6) when it listens on one. A test opens two ICE sessions
with the browser, each on its own RTCPeerConnection (so each has its own browser socket and NAT
mapping):

- **mapping**: the answer names p1, a1 and p2 as natkit's host candidates. The browser sends its
  connectivity checks from one socket to all three; the source address each natkit socket sees
  is the NAT's mapping toward that socket (RFC 5780 §4.3: same mapped address toward another IP
  and toward another port of the same IP → endpoint-independent; changes only with the IP →
  address-dependent; changes with the port → address-and-port-dependent). Checks are grouped by
  their PRIORITY attribute, which names the browser's local candidate (RFC 8445 §7.1.1), so the
  mappings of two browser interfaces are never compared with each other.
- **filtering**: the answer names p3 only. The first valid check from the browser on p3 fixes
  the *opener*: the address that opened the test. natkit then sends its own checks, with the
  browser's credentials (RFC 8445 §7.2.2), to the opener only: from p3 (the control: the very
  address the browser sent to), from p1 (same IP, another port) and from a1 (another IP). A
  browser answers any valid check, so the answers that come back are exactly what the NAT let
  in (RFC 4787 §5: endpoint-independent / address-dependent / address-and-port-dependent).

Anti-abuse: a probe goes only to the opener, which natkit observed itself from a check that
carried this session's ufrag and a valid MESSAGE-INTEGRITY (so a third party's address cannot be
named: the offer's candidate addresses are never a destination), and at most `MAX_PROBES`
datagrams leave per test. Answers to the browser's checks are bounded per session too.

The caller moves bytes: `handle(role, data, source, now)` for each datagram a socket received
and `tick(now)` every ~50 ms both return the `Transmit`s to send.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Literal

from natkit.addr import Address
from natkit.diag.classify import Behaviour
from natkit.stun.constants import AttrType as A
from natkit.stun.constants import MessageClass, Method
from natkit.stun.errors import StunDecodeError
from natkit.stun.integrity import check_fingerprint
from natkit.stun.message import Message, parse_message

__all__ = [
    "MAX_ANSWERS",
    "MAX_PROBES",
    "PROBE_SCHEDULE",
    "ROLES",
    "IceCore",
    "IceSession",
    "Transmit",
    "filtering_of",
    "mapping_of",
]

Role = Literal["p1", "p2", "p3", "a1", "v6"]
ROLES: tuple[Role, ...] = ("p1", "p2", "p3", "a1", "v6")
MAPPING_ROLES: tuple[Role, ...] = ("p1", "a1", "p2", "v6")
"""Sockets a mapping session names; v6 (the server's IPv6 address, when it has one) only
tells whether the browser reaches natkit over IPv6 UDP."""
FILTER_ROLE: Role = "p3"
PROBE_ROLES: tuple[Role, ...] = ("p3", "p1", "a1")  # control, other port, other IP
PROBE_SCHEDULE = (0.0, 0.2, 0.5, 1.0)
"""Seconds after the opener is seen at which each probe is (re)sent: 4 sends x 3 sockets."""
MAX_PROBES = len(PROBE_SCHEDULE) * len(PROBE_ROLES)
"""Datagrams natkit sends per test toward a browser, at most."""
MAX_ANSWERS = 64
"""Answers to the browser's own checks per session (ICE consent checks come every ~5 s)."""
_PRIORITY = (110 << 24) | (65535 << 8) | 255  # RFC 8445 §5.1.2.1: a prflx candidate of ours

Kind = Literal["mapping", "filtering"]


@dataclass(frozen=True, slots=True)
class Transmit:
    role: Role
    """Which of natkit check's sockets sends it."""
    data: bytes
    destination: Address


@dataclass(slots=True)
class IceSession:
    """One ICE session with a browser: natkit's credentials and the browser's."""

    kind: Kind
    local_ufrag: str
    local_pwd: str
    remote_ufrag: str
    remote_pwd: str
    observed: dict[int, dict[Role, Address]] = field(default_factory=dict)
    """Source address seen per natkit socket, per browser local candidate (PRIORITY)."""
    opener: Address | None = None
    opened_at: float | None = None
    answered: set[Role] = field(default_factory=set)
    """Probe roles whose check the browser answered (filtering)."""
    probes_sent: int = 0
    answers_sent: int = 0
    _probe_ids: dict[bytes, Role] = field(default_factory=dict)
    _next_send: int = 0
    _tiebreaker: int = field(default_factory=lambda: secrets.randbits(64))

    @property
    def probes_done(self) -> bool:
        return self._next_send >= len(PROBE_SCHEDULE)


class IceCore:
    """Every live `IceSession`, keyed by natkit's ufrag; `sockets` are natkit's addresses."""

    def __init__(self, sockets: dict[Role, Address], max_sessions: int = 512) -> None:
        self.sockets = sockets
        self.max_sessions = max_sessions
        self._sessions: dict[str, IceSession] = {}
        self.dropped = 0
        """Datagrams ignored: not STUN, unknown ufrag, bad integrity, or over a bound."""

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: IceSession) -> bool:
        if len(self._sessions) >= self.max_sessions:
            return False
        self._sessions[session.local_ufrag] = session
        return True

    def remove(self, session: IceSession) -> None:
        self._sessions.pop(session.local_ufrag, None)

    def handle(self, role: Role, data: bytes, source: Address, now: float) -> list[Transmit]:
        try:
            msg = parse_message(data)
        except StunDecodeError:
            self.dropped += 1
            return []
        if msg.method != Method.BINDING or msg.legacy:
            self.dropped += 1
            return []
        if msg.message_class == MessageClass.REQUEST:
            return self._request(role, msg, source, now)
        if msg.message_class == MessageClass.SUCCESS:
            self._response(role, msg, source)
        else:
            self.dropped += 1
        return []

    def _request(self, role: Role, msg: Message, source: Address, now: float) -> list[Transmit]:
        username = msg.get(A.USERNAME)
        local, _, remote = username.partition(":") if isinstance(username, str) else ("", "", "")
        session = self._sessions.get(local)
        # RFC 8445 §7.3: USERNAME is "our ufrag:their ufrag", MESSAGE-INTEGRITY keyed by our pwd.
        if (
            session is None
            or remote != session.remote_ufrag
            or session.answers_sent >= MAX_ANSWERS
            or not msg.check_integrity(session.local_pwd.encode())
            or (A.FINGERPRINT in msg and not check_fingerprint(msg.raw))
        ):
            self.dropped += 1
            return []
        allowed = MAPPING_ROLES if session.kind == "mapping" else (FILTER_ROLE,)
        if role not in allowed:  # a check to a socket this session never named
            self.dropped += 1
            return []
        priority = msg.get(A.PRIORITY)
        group = session.observed.setdefault(priority if isinstance(priority, int) else 0, {})
        group.setdefault(role, source)
        if session.kind == "filtering" and session.opener is None:
            session.opener, session.opened_at = source, now
        session.answers_sent += 1
        reply = Message(Method.BINDING, MessageClass.SUCCESS, msg.transaction_id)
        reply.add(A.XOR_MAPPED_ADDRESS, source)
        out = [Transmit(role, reply.encode(integrity_key=session.local_pwd.encode(),
                                           fingerprint=True), source)]  # fmt: skip
        return out + self._due(session, now)

    def _response(self, role: Role, msg: Message, source: Address) -> None:
        for session in self._sessions.values():
            probe = session._probe_ids.get(msg.transaction_id)
            if probe is None:
                continue
            # The answer must come from the opener, to the socket that probed, and be keyed
            # by the browser's pwd (RFC 8445 §7.2.5.2.1: symmetric addresses).
            if (
                probe == role
                and source == session.opener
                and msg.check_integrity(session.remote_pwd.encode())
            ):
                session.answered.add(role)
            else:
                self.dropped += 1
            return
        self.dropped += 1

    def tick(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        for session in self._sessions.values():
            out += self._due(session, now)
        return out

    def _due(self, session: IceSession, now: float) -> list[Transmit]:
        if session.opener is None or session.opened_at is None or session.probes_done:
            return []
        out: list[Transmit] = []
        while (
            not session.probes_done
            and now >= session.opened_at + PROBE_SCHEDULE[session._next_send]
        ):
            retransmit = session._next_send > 0
            session._next_send += 1
            for role in PROBE_ROLES:
                if role not in self.sockets or session.probes_sent >= MAX_PROBES:
                    continue
                out.append(Transmit(role, self._probe(session, role, retransmit), session.opener))
                session.probes_sent += 1
        return out

    def _probe(self, session: IceSession, role: Role, retransmit: bool) -> bytes:
        # RFC 8489 §6.2.1: a retransmission reuses the transaction id.
        tid = next((t for t, r in session._probe_ids.items() if r == role), None)
        if tid is None or not retransmit:
            tid = secrets.token_bytes(12)
            session._probe_ids[tid] = role
        msg = Message(Method.BINDING, MessageClass.REQUEST, tid)
        msg.add(A.USERNAME, f"{session.remote_ufrag}:{session.local_ufrag}")
        msg.add(A.PRIORITY, _PRIORITY)
        msg.add(A.ICE_CONTROLLED, session._tiebreaker)
        return msg.encode(integrity_key=session.remote_pwd.encode(), fingerprint=True)


def _main_group(session: IceSession) -> dict[Role, Address]:
    """The browser candidate natkit saw on the most sockets (IPv4 first on a tie)."""
    groups = sorted(
        session.observed.values(),
        key=lambda g: (len(g), all(a.family == 4 for a in g.values())),
        reverse=True,
    )
    return groups[0] if groups else {}


def mapping_of(
    session: IceSession, alternate: bool
) -> tuple[Behaviour | None, dict[Role, Address]]:
    """RFC 5780 §4.3 mapping class from what p1, a1 and p2 saw, and those addresses."""
    seen = _main_group(session)
    m0, m1, m2 = seen.get("p1"), seen.get("a1"), seen.get("p2")
    if m0 is None:
        return None, seen
    if m2 is not None and m2 != m0:
        return "address-and-port-dependent", seen
    if not alternate or m1 is None:
        return None, seen
    if m1 != m0:
        return "address-dependent" if m2 is not None else None, seen
    return "endpoint-independent", seen


def filtering_of(session: IceSession, alternate: bool) -> Behaviour | None:
    """RFC 4787 §5 filtering class from the probes the browser answered (None: unknown)."""
    if "a1" in session.answered and alternate:
        return "endpoint-independent"
    if "p1" in session.answered:
        return "address-dependent" if alternate else None
    if "p3" in session.answered:
        return "address-and-port-dependent"
    return None
