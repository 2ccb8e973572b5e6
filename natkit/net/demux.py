"""RFC 7983 §7 demultiplexing: what kind of message a datagram or stream frame is, in one place.

The first byte tells the protocol apart (0-3 STUN, 64-79 TURN ChannelData; 16-19 ZRTP, 20-63
DTLS and 128-191 RTP are not served here and fall into OTHER); for STUN the method in the type
field then picks the handler: Binding goes to the Binding handler, every other method (the TURN
methods, Send indications) to TURN. `classify` is the only function in natkit that reads these
bits; the listeners call it once per datagram or frame.
"""

from __future__ import annotations

__all__ = [
    "BINDING",
    "CHANNEL_DATA",
    "KINDS",
    "OTHER",
    "STUN",
    "classify",
    "is_error_response",
    "is_indication",
    "is_request",
]

# Kinds are small ints, not an Enum: the listeners index per-kind tables with them per packet.
BINDING = 0  # STUN, method Binding (0x001), any class
STUN = 1  # STUN, any other method
CHANNEL_DATA = 2  # TURN ChannelData (RFC 8656 §12)
OTHER = 3  # not for a STUN/TURN server
KINDS = ("binding", "stun", "channel_data", "other")


def classify(data: bytes) -> int:
    """The kind of `data` by its first bytes; says nothing about validity. A STUN type is
    0b00MMMMMC MMMCMMMM (RFC 8489 §5): Binding has every M bit 0 except the lowest."""
    if len(data) < 2:
        return OTHER
    first = data[0]
    if first < 4:
        return BINDING if not first & 0x3E and data[1] & 0xEF == 0x01 else STUN
    if 64 <= first <= 79:
        return CHANNEL_DATA
    return OTHER


def is_request(data: bytes) -> bool:
    """A STUN message of class request (both class bits 0: RFC 8489 §5). Indications, responses
    and ChannelData are not requests: with TURN they carry relayed media at media rates."""
    return len(data) > 1 and data[0] < 4 and not data[0] & 0x01 and not data[1] & 0x10


def is_indication(data: bytes) -> bool:
    """A STUN message of class indication (C1 0, C0 1): answered by nobody, by design."""
    return len(data) > 1 and data[0] < 4 and not data[0] & 0x01 and bool(data[1] & 0x10)


def is_error_response(data: bytes) -> bool:
    """A STUN error response (both class bits set) at least a header long."""
    return len(data) >= 20 and data[0] < 4 and bool(data[0] & 0x01) and bool(data[1] & 0x10)
