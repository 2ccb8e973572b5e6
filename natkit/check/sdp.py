"""The few SDP lines natkit check reads from a browser's offer, and the ice-lite answer it returns.

The browser's offer is remote input: bounded in size, number of lines and candidates, and only
the ICE credentials (RFC 8839 §5.4: ice-char, ufrag 4-256, pwd 22-256 characters), the first
m-line's mid and the candidates are read. Candidate addresses are reported back to the page but
never used as a destination: natkit probes only the address its own socket saw the browser's
checks come from (`natkit.check.ice`).

The answer makes natkit an ICE-lite agent (RFC 8445 §2.5) with one host candidate per server
socket the test uses: the browser (controlling, full ICE) sends its checks there. DTLS never
completes (the fingerprint is random): only ICE's connectivity checks matter to the test.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from natkit.addr import Address

__all__ = ["MAX_SDP", "Offer", "SdpError", "answer", "parse_offer", "random_credentials"]

MAX_SDP = 16384
"""Largest offer accepted, bytes (a data-channel offer is ~1 KB; 64 candidates fit)."""
MAX_CANDIDATES = 64
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_MID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_CANDIDATE = re.compile(
    r"candidate:(?P<foundation>[A-Za-z0-9+/]{1,32}) (?P<component>\d{1,3}) (?P<proto>udp|tcp) "
    r"(?P<priority>\d{1,10}) (?P<address>[0-9A-Fa-f.:]{2,45}|[A-Za-z0-9.-]{1,80}\.local) "
    r"(?P<port>\d{1,5}) typ (?P<type>host|srflx|prflx|relay)(?P<rest>.*)",
    re.IGNORECASE,
)


class SdpError(ValueError):
    """The offer is not one natkit check can answer (the message says why)."""


@dataclass(frozen=True, slots=True)
class OfferCandidate:
    type: str
    protocol: str
    address: str
    port: int
    priority: int

    def to_dict(self) -> dict[str, object]:
        return {
            "type": self.type,
            "protocol": self.protocol,
            "address": self.address,
            "port": self.port,
            "priority": self.priority,
        }


@dataclass(frozen=True, slots=True)
class Offer:
    ufrag: str
    pwd: str
    mid: str
    candidates: tuple[OfferCandidate, ...]


def _credential(value: str, low: int, what: str) -> str:
    if not low <= len(value) <= 256 or not _ICE_CHARS.fullmatch(value):
        raise SdpError(f"{what} must be {low}-256 ice-chars")
    return value


def parse_offer(sdp: object) -> Offer:
    """The ICE credentials, mid and candidates of a browser's offer; SdpError if unusable."""
    if not isinstance(sdp, str):
        raise SdpError("the offer must be SDP text")
    if len(sdp) > MAX_SDP:
        raise SdpError(f"offer larger than {MAX_SDP} bytes")
    ufrag = pwd = mid = None
    candidates: list[OfferCandidate] = []
    for line in sdp.splitlines()[:512]:
        if line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = _credential(line[12:].strip(), 4, "ice-ufrag")
        elif line.startswith("a=ice-pwd:") and pwd is None:
            pwd = _credential(line[10:].strip(), 22, "ice-pwd")
        elif line.startswith("a=mid:") and mid is None:
            mid = line[6:].strip()
        elif line.startswith("a=candidate:") and len(candidates) < MAX_CANDIDATES:
            cand = _candidate(line[2:])
            if cand is not None:
                candidates.append(cand)
    if ufrag is None or pwd is None:
        raise SdpError("the offer has no a=ice-ufrag / a=ice-pwd")
    if mid is None or not _MID.fullmatch(mid):
        raise SdpError("the offer has no usable a=mid")
    return Offer(ufrag, pwd, mid, tuple(candidates))


def _candidate(text: str) -> OfferCandidate | None:
    m = _CANDIDATE.fullmatch(text.strip())
    if m is None or not 0 < int(m["port"]) < 65536:
        return None
    return OfferCandidate(
        m["type"].lower(), m["proto"].lower(), m["address"], int(m["port"]), int(m["priority"])
    )


def random_credentials() -> tuple[str, str]:
    """A fresh (ufrag, pwd) for natkit's side: 8 and 24 ice-chars (RFC 8445 §5.3: ≥ 24/128 bits
    of randomness)."""
    return secrets.token_hex(4), secrets.token_hex(12)


def answer(offer: Offer, ufrag: str, pwd: str, candidates: list[Address]) -> str:
    """The ice-lite answer naming `candidates` (natkit's sockets) as host candidates."""
    fingerprint = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
    lines = [
        "v=0",
        f"o=natkit-check {secrets.randbelow(2**62)} 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=ice-lite",
        f"a=group:BUNDLE {offer.mid}",
        "a=msid-semantic: WMS",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:sha-256 {fingerprint}",
        "a=setup:active",
        f"a=mid:{offer.mid}",
        "a=sctp-port:5000",
    ]
    for n, addr in enumerate(candidates, 1):
        # RFC 8445 §5.1.2.1: host type preference 126, a distinct local preference each.
        priority = (126 << 24) | ((65535 - n) << 8) | 255
        lines.append(f"a=candidate:{n} 1 udp {priority} {addr.host} {addr.port} typ host")
    lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"
