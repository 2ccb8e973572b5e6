"""STUN messages: `parse_message` (strict and total) and `Message.encode`.

Wire format (RFC 8489 §5): a 20-byte header (2 zero bits, 14-bit type, 16-bit length, 32-bit
magic cookie, 96-bit transaction id) and TLV attributes padded to 4 bytes. RFC 3489 messages have
no cookie and a 128-bit transaction id; they parse too and come back with `legacy` true.

`parse_message` accepts any byte string and either returns a `Message` or raises
`StunDecodeError`: never another exception. It is strict: the length must match the datagram
exactly and be a multiple of 4, every attribute must fit, known attributes must decode, a
FINGERPRINT must be last and must match, and attributes after MESSAGE-INTEGRITY other than
MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are ignored (RFC 8489 §14.5, §14.6).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from natkit.stun import integrity
from natkit.stun.attributes import KNOWN_TYPES, AttrValue, decode_attribute, encode_attribute
from natkit.stun.constants import (
    HEADER_LENGTH,
    MAGIC_COOKIE_BYTES,
    AttrType,
    MessageClass,
    Method,
    is_comprehension_required,
)
from natkit.stun.errors import StunDecodeError, StunEncodeError

__all__ = ["Message", "message_type", "parse_message", "split_message_type"]

_HEADER = struct.Struct("!HH")
_METHODS = frozenset(Method)
_MI, _MI256, _FP = (
    AttrType.MESSAGE_INTEGRITY,
    AttrType.MESSAGE_INTEGRITY_SHA256,
    AttrType.FINGERPRINT,
)


def message_type(method: int, message_class: int) -> int:
    """The 14-bit message type: method bits M0-M11 interleaved with class bits C0 C1 (§5)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 1) << 4)
        | ((message_class & 2) << 7)
    )


def split_message_type(value: int) -> tuple[int, MessageClass]:
    method = (value & 0x000F) | ((value >> 1) & 0x0070) | ((value >> 2) & 0x0F80)
    return method, MessageClass(((value >> 4) & 1) | ((value >> 7) & 2))


@dataclass(slots=True)
class Message:
    """A STUN message: method, class, transaction id and ordered (type, value) attributes.

    `raw` holds the wire bytes of a parsed message (integrity checks need them); values follow
    `natkit.stun.attributes`. A 16-byte `transaction_id` means an RFC 3489 message (`legacy`).
    """

    method: int
    message_class: MessageClass
    transaction_id: bytes
    attributes: list[tuple[int, AttrValue]] = field(default_factory=list)
    raw: bytes = b""

    @property
    def legacy(self) -> bool:
        """True for an RFC 3489 message (no magic cookie, 128-bit transaction id)."""
        return len(self.transaction_id) == 16

    @property
    def method_name(self) -> str:
        try:
            return Method(self.method).name
        except ValueError:
            return f"0x{self.method:03x}"

    def get(self, attr_type: int) -> AttrValue | None:
        """Value of the first attribute of `attr_type` (later duplicates are not significant)."""
        for t, value in self.attributes:
            if t == attr_type:
                return value
        return None

    def __contains__(self, attr_type: object) -> bool:
        return any(t == attr_type for t, _ in self.attributes)

    def add(self, attr_type: int, value: AttrValue) -> Message:
        self.attributes.append((attr_type, value))
        return self

    @property
    def unknown_required(self) -> tuple[int, ...]:
        """Comprehension-required types (< 0x8000) this codec does not know (RFC 8489 §15)."""
        seen: list[int] = []
        for t, _ in self.attributes:
            if is_comprehension_required(t) and t not in KNOWN_TYPES and t not in seen:
                seen.append(t)
        return tuple(seen)

    def check_integrity(self, key: bytes) -> bool:
        return integrity.check_integrity(self.raw, key)

    def check_integrity_sha256(self, key: bytes) -> bool:
        return integrity.check_integrity_sha256(self.raw, key)

    def encode(
        self,
        *,
        integrity_key: bytes | None = None,
        integrity_sha256_key: bytes | None = None,
        fingerprint: bool = False,
    ) -> bytes:
        """Wire bytes; optionally appends MESSAGE-INTEGRITY, -SHA256 and FINGERPRINT, in that
        order and last (RFC 8489 §14.5-14.7), replacing any such attribute in `attributes`."""
        tid = self.transaction_id
        if len(tid) not in (12, 16):
            raise StunEncodeError(f"transaction id must be 12 (or legacy 16) bytes, not {len(tid)}")
        if not 0 <= self.method <= 0xFFF:
            raise StunEncodeError(f"method {self.method} does not fit in 12 bits")
        xor_pad = tid if len(tid) == 16 else MAGIC_COOKIE_BYTES + tid
        skip = {
            t
            for t, on in ((_MI, integrity_key), (_MI256, integrity_sha256_key), (_FP, fingerprint))
            if on is not None and on is not False
        }
        parts = [b""]  # placeholder for the header
        for attr_type, value in self.attributes:
            if attr_type not in skip:
                parts.append(_tlv(attr_type, encode_attribute(attr_type, value, xor_pad)))
        body = b"".join(parts)
        msg = _HEADER.pack(message_type(self.method, self.message_class), len(body)) + xor_pad
        msg += body
        if integrity_key is not None:
            msg = _append(msg, _MI, integrity.message_integrity(msg, integrity_key))
        if integrity_sha256_key is not None:
            mac = integrity.message_integrity_sha256(msg, integrity_sha256_key)
            msg = _append(msg, _MI256, mac)
        if fingerprint:
            msg = _append(msg, _FP, integrity.fingerprint(msg).to_bytes(4, "big"))
        if len(msg) - HEADER_LENGTH > 0xFFFF:
            raise StunEncodeError("message longer than 65535 bytes after the header")
        return msg


def _tlv(attr_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise StunEncodeError(f"attribute 0x{attr_type:04x} longer than 65535 bytes")
    return _HEADER.pack(attr_type, len(value)) + value + bytes(-len(value) % 4)


def _append(msg: bytes, attr_type: int, value: bytes) -> bytes:
    out = msg + _tlv(attr_type, value)
    return out[:2] + (len(out) - HEADER_LENGTH).to_bytes(2, "big") + out[4:]


def parse_message(data: bytes) -> Message:
    """Decode one STUN message (a whole datagram or one framed message from a stream).

    Raises `StunDecodeError` for anything that is not a well-formed STUN message.
    """
    try:
        return _parse(bytes(data))
    except StunDecodeError:
        raise
    except Exception as exc:  # totality guard; the fuzz test asserts it never fires
        raise StunDecodeError(f"malformed STUN message ({type(exc).__name__})") from exc


def _parse(data: bytes) -> Message:
    size = len(data)
    if size < HEADER_LENGTH:
        raise StunDecodeError(f"{size} bytes is shorter than a STUN header")
    msg_type, length = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunDecodeError("the two most significant bits of a STUN message must be zero")
    if length % 4:
        raise StunDecodeError(f"message length {length} is not a multiple of 4")
    if length != size - HEADER_LENGTH:
        raise StunDecodeError(f"message length {length} but {size - HEADER_LENGTH} bytes follow")
    legacy = data[4:8] != MAGIC_COOKIE_BYTES
    xor_pad = data[4:20]
    method, message_class = split_message_type(msg_type)
    attributes: list[tuple[int, AttrValue]] = []
    pos, after_mi, after_mi256, after_fp = HEADER_LENGTH, False, False, False
    while pos < size:
        attr_type, attr_len = _HEADER.unpack_from(data, pos)
        start, end = pos + 4, pos + 4 + attr_len
        if end + (-attr_len % 4) > size:
            raise StunDecodeError(f"attribute 0x{attr_type:04x} overruns the message")
        if after_fp:
            raise StunDecodeError("FINGERPRINT must be the last attribute (RFC 8489 §14.7)")
        ignored = (after_mi256 and attr_type != _FP) or (
            after_mi and attr_type not in (_MI256, _FP)
        )
        if not ignored:
            value = decode_attribute(attr_type, data[start:end], xor_pad)
            if attr_type == _FP:
                after_fp = True
                if value != integrity.fingerprint(data[:pos]):
                    raise StunDecodeError("FINGERPRINT does not match")
            after_mi = after_mi or attr_type == _MI
            after_mi256 = after_mi256 or attr_type == _MI256
            attributes.append((attr_type, value))
        pos = end + (-attr_len % 4)
    if method in _METHODS:  # unknown methods parse too; the caller decides (RFC 8489 §6.3)
        method = Method(method)
    tid = xor_pad if legacy else data[8:20]
    return Message(method, message_class, tid, attributes, data)
