"""The TURN core's answers: responses and error responses as `SendToClient`, sans-IO.

Responses to authenticated requests carry SOFTWARE and MESSAGE-INTEGRITY, or
MESSAGE-INTEGRITY-SHA256 when the key is a `natkit.turn.auth.Sha256SignedKey` (the request
named its password algorithm, RFC 8489 §9.2.4); FINGERPRINT when the request had one (§7.3).

Amplification bound. A request without MESSAGE-INTEGRITY(-SHA256) may come from a spoofed
source, so its answer is kept within `AMPLIFICATION_LIMIT` (3.5x) of the request, UDP payload
bytes:
- a request that could not succeed whatever its credentials is not challenged
  (`natkit.turn.relay`, `Relay._hopeless`; RFC 8656 §7.2 puts authentication first; answering
  the error it would get after authentication instead changes nothing for a real client): an
  Allocate without REQUESTED-TRANSPORT, a CreatePermission without XOR-PEER-ADDRESS, a
  ChannelBind without CHANNEL-NUMBER or XOR-PEER-ADDRESS (400), a Refresh, CreatePermission or
  ChannelBind from a 5-tuple that has no allocation (437);
- unsigned answers carry no SOFTWARE, and drop the ERROR-CODE reason phrase (optional, RFC 8489
  §14.8: for diagnostics only) when it would break the bound;
- the challenge (`challenge`) is the RFC 8489 one: REALM, a 29-character NONCE with the nonce
  cookie, PASSWORD-ALGORITHMS (`natkit.turn.auth`). Where even that, reason dropped, breaks the
  bound, a 5-tuple whose allocation was made by an MD5-only client gets the RFC 5389 form
  (16-character nonce, no PASSWORD-ALGORITHMS): that client signs with MD5 anyway, so nothing
  is downgraded. Everyone else gets the RFC 8489 form regardless: a challenge chosen by request
  size would let a man in the middle who shrinks a request hand the client an MD5-only nonce.
Sizes with realm "natkit.local", measured by tests/unit/test_turn_amplification.py: the smallest
request that is challenged is an Allocate with REQUESTED-TRANSPORT, 28 -> 92 bytes (3.3x,
reason dropped; with FINGERPRINT, 36 -> 116 with the reason); an unsigned Refresh on the live
allocation of an MD5-only client 20 -> 64 (3.2x, RFC 5389 form, reason dropped); the 400 and
437 answers 20 -> 40 and 48 (2.0x, 2.4x). The challenge grows with the realm: on that
Allocate it stays within 3.5x for realms up to 16 bytes. Beyond the bound (stated, not
hidden): a longer realm, and an unsigned Refresh of 20 bytes on the live allocation of an RFC
8489 client, 20 -> 92 (4.6x; only that allocation's own client can be the target).
"""

from __future__ import annotations

from natkit.addr import Address
from natkit.stun.attributes import AttrValue, ErrorCode
from natkit.stun.constants import ERROR_REASONS, AttrType, MessageClass
from natkit.stun.message import Message
from natkit.turn.allocation import FiveTuple
from natkit.turn.auth import Sha256SignedKey
from natkit.turn.commands import SendToClient

__all__ = ["AMPLIFICATION_LIMIT", "challenge", "drain", "error", "response"]

AMPLIFICATION_LIMIT = 3.5  # largest answer / request, in bytes, for unauthenticated requests


def response(
    msg: Message,
    to: FiveTuple,
    key: bytes | None,
    attrs: list[tuple[int, AttrValue]],
    software: str,
    message_class: MessageClass = MessageClass.SUCCESS,
) -> SendToClient:
    """The answer to `msg` with `attrs`, signed with `key` (None: unsigned, no SOFTWARE)."""
    if software and key is not None:  # unsigned: the amplification bound
        attrs.append((AttrType.SOFTWARE, software))
    out = Message(msg.method, message_class, msg.transaction_id, attrs)
    fingerprint = AttrType.FINGERPRINT in msg  # RFC 8489 §7.3: mirror the request
    if isinstance(key, Sha256SignedKey):
        return SendToClient(out.encode(integrity_sha256_key=key, fingerprint=fingerprint), to)
    return SendToClient(out.encode(integrity_key=key, fingerprint=fingerprint), to)


def error(
    msg: Message,
    to: FiveTuple,
    code: int,
    key: bytes | None,
    extra: list[tuple[int, AttrValue]],
    software: str,
) -> SendToClient:
    """An error response; unsigned ones drop the reason phrase when over the bound."""
    attrs: list[tuple[int, AttrValue]] = [
        (AttrType.ERROR_CODE, ErrorCode(code, ERROR_REASONS[code]))
    ]
    out = response(msg, to, key, attrs + extra, software, MessageClass.ERROR)
    if key is None and len(out.data) > AMPLIFICATION_LIMIT * len(msg.raw):
        attrs = [(AttrType.ERROR_CODE, ErrorCode(code, ""))]  # the module docstring's bound
        out = response(msg, to, key, attrs + extra, software, MessageClass.ERROR)
    return out


def challenge(
    msg: Message,
    to: FiveTuple,
    code: int,
    full: list[tuple[int, AttrValue]],
    legacy: list[tuple[int, AttrValue]] | None,
    software: str,
) -> SendToClient:
    """A 401 or 438 with the RFC 8489 challenge `full`; with the RFC 5389 one, `legacy`, only
    when given and `full` breaks the bound (the module docstring says when to give it)."""
    out = error(msg, to, code, None, full, software)
    if legacy is not None and len(out.data) > AMPLIFICATION_LIMIT * len(msg.raw):
        out = error(msg, to, code, None, legacy, software)
    return out


def drain(
    msg: Message, to: FiveTuple, key: bytes, alternate: Address | None, software: str
) -> SendToClient:
    """A draining server's answer to a new Allocate: 300 Try Alternate with ALTERNATE-SERVER
    (RFC 8489 §10), signed like every answer to an authenticated request (a client should not
    follow an unsigned redirect), else 508 Insufficient Capacity (RFC 8656 §7.2)."""
    if alternate is None:
        return error(msg, to, 508, key, [], software)
    return error(msg, to, 300, key, [(AttrType.ALTERNATE_SERVER, alternate)], software)
