"""Attribute values: decode and encode every attribute type natkit knows.

Each attribute type maps to one Python value type:

- addresses (MAPPED-ADDRESS, XOR-*, RESPONSE-ORIGIN, OTHER-ADDRESS, ALTERNATE-SERVER, RFC 3489's
  SOURCE/CHANGED/RESPONSE-ADDRESS, REFLECTED-FROM): `natkit.addr.Address`; XOR ones are XORed
  with the 16 header bytes after the type and length (cookie + id, RFC 8489 §14.2);
- text (USERNAME, REALM, NONCE, SOFTWARE, ALTERNATE-DOMAIN): `str`, strict UTF-8, at most
  `MAX_TEXT_BYTES` bytes (a longer one is a decode error and cannot be encoded);
- integers (PRIORITY, LIFETIME, FINGERPRINT, CONNECTION-ID, ICE-CONTROLLED/-CONTROLLING,
  CHANNEL-NUMBER, RESPONSE-PORT, REQUESTED-TRANSPORT (protocol number), *-ADDRESS-FAMILY): `int`;
- flags (USE-CANDIDATE, DONT-FRAGMENT): `True`; EVEN-PORT: `bool` (its R bit);
- opaque (DATA, PADDING, USERHASH, RESERVATION-TOKEN, MESSAGE-INTEGRITY[-SHA256]): `bytes`;
- structured: `ErrorCode`, `ChangeRequest`, `PasswordAlgorithm` (and a tuple of them for
  PASSWORD-ALGORITHMS), `tuple[int, ...]` for UNKNOWN-ATTRIBUTES, `AddressErrorCode`, `Icmp`.

Unknown types stay raw `bytes`. Decoders raise only `StunDecodeError`; encoders `StunEncodeError`.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from natkit.addr import Address
from natkit.stun.constants import AttrType as A
from natkit.stun.errors import StunDecodeError, StunEncodeError

__all__ = [
    "KNOWN_TYPES",
    "MAX_PASSWORD_ALGORITHMS",
    "MAX_TEXT_BYTES",
    "AddressErrorCode",
    "AttrValue",
    "ChangeRequest",
    "ErrorCode",
    "Icmp",
    "PasswordAlgorithm",
    "decode_attribute",
    "encode_attribute",
]


class ErrorCode(NamedTuple):
    """ERROR-CODE (RFC 8489 §14.8): code 300-699 and a reason phrase."""

    code: int
    reason: str = ""


class ChangeRequest(NamedTuple):
    """CHANGE-REQUEST (RFC 5780 §7.2): flag A (0x4) change IP, flag B (0x2) change port."""

    change_ip: bool = False
    change_port: bool = False


class PasswordAlgorithm(NamedTuple):
    """PASSWORD-ALGORITHM (RFC 8489 §14.12) and the entries of PASSWORD-ALGORITHMS (§14.11)."""

    algorithm: int
    parameters: bytes = b""


class AddressErrorCode(NamedTuple):
    """ADDRESS-ERROR-CODE (RFC 8656 §18.12)."""

    family: int
    code: int
    reason: str = ""


class Icmp(NamedTuple):
    """ICMP (RFC 8656 §18.13): type, code and the 32-bit error data."""

    type: int
    code: int
    data: int = 0


AttrValue = (
    Address
    | ErrorCode
    | ChangeRequest
    | PasswordAlgorithm
    | AddressErrorCode
    | Icmp
    | tuple[PasswordAlgorithm, ...]
    | tuple[int, ...]
    | str
    | bytes
    | bool
    | int
)

_Decoder = Callable[[bytes, bytes], AttrValue]
_Encoder = Callable[[object, bytes], bytes]
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


# Longest text value accepted, in bytes. RFC 8489: USERNAME "fewer than 509 bytes" (§14.3; RFC
# 5389 §15.3 said < 513, so decoders allow 512); REALM, NONCE, SOFTWARE and the ERROR-CODE reason
# "fewer than 128 characters (... as long as 763 bytes when decoding them)" (§14.9, §14.10,
# §14.14, §14.8); ADDRESS-ERROR-CODE's reason follows ERROR-CODE (RFC 8656 §18.12), and
# ALTERNATE-DOMAIN is a DNS name (RFC 8489 §14.16: at most 255). The bound keeps remote text
# small before anything parses it (a 5,000-digit REST API username made int() raise).
MAX_TEXT_BYTES: dict[int, int] = {
    A.USERNAME: 512,
    A.REALM: 763,
    A.NONCE: 763,
    A.SOFTWARE: 763,
    A.ALTERNATE_DOMAIN: 255,
    A.ERROR_CODE: 763,
    A.ADDRESS_ERROR_CODE: 763,
}
_MAX_REASON = MAX_TEXT_BYTES[A.ERROR_CODE]


def _fail(what: str) -> StunDecodeError:
    return StunDecodeError(what)


def _pad4(n: int) -> int:
    return -n % 4


# -- addresses (RFC 8489 §14.1, §14.2) -------------------------------------------------------


def _dec_address(v: bytes, xor: bytes | None) -> Address:
    if len(v) == 8 and v[1] == 1:
        family, size = socket.AF_INET, 4
    elif len(v) == 20 and v[1] == 2:
        family, size = socket.AF_INET6, 16
    else:
        raise _fail(f"address attribute: bad family {v[1:2].hex() or '-'} or length {len(v)}")
    port, raw = _U16.unpack_from(v, 2)[0], v[4:]
    if xor is not None:
        port ^= 0x2112
        raw = bytes(a ^ b for a, b in zip(raw, xor, strict=False))
    if family == socket.AF_INET:
        return Address(socket.inet_ntop(family, raw[:size]), port)
    return Address(str(ipaddress.IPv6Address(raw[:size])), port)  # RFC 5952 text, as Python


def _enc_address(value: object, xor: bytes | None) -> bytes:
    if not isinstance(value, tuple) or len(value) != 2:
        raise StunEncodeError(f"not an (ip, port) address: {value!r}")
    host, port = value
    if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise StunEncodeError(f"not an (ip, port) address: {value!r}")
    try:
        raw, family = socket.inet_pton(socket.AF_INET, host), 1
    except OSError:
        try:
            raw, family = socket.inet_pton(socket.AF_INET6, host), 2
        except OSError:
            raise StunEncodeError(f"{host!r} is not an IP address literal") from None
    if xor is not None:
        port ^= 0x2112
        raw = bytes(a ^ b for a, b in zip(raw, xor, strict=False))
    return bytes((0, family)) + _U16.pack(port) + raw


# -- scalars ---------------------------------------------------------------------------------


def _dec_text(v: bytes, _: bytes, limit: int = _MAX_REASON) -> str:
    if len(v) > limit:
        raise _fail(f"text attribute of {len(v)} bytes is longer than {limit}")
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail("text attribute is not valid UTF-8") from None


def _enc_text(value: object, _: bytes, limit: int = _MAX_REASON) -> bytes:
    if not isinstance(value, str):
        raise StunEncodeError(f"expected str, got {value!r}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise StunEncodeError(f"{value!r} cannot be encoded as UTF-8") from None
    if len(raw) > limit:
        raise StunEncodeError(f"text of {len(raw)} bytes is longer than {limit}")
    return raw


def _text_codec(limit: int) -> tuple[_Decoder, _Encoder]:
    return (lambda v, pad: _dec_text(v, pad, limit)), (lambda x, pad: _enc_text(x, pad, limit))


def _bytes_codec(sizes: Callable[[int], bool]) -> tuple[_Decoder, _Encoder]:
    def dec(v: bytes, _: bytes) -> bytes:
        if not sizes(len(v)):
            raise _fail(f"opaque attribute has a bad length {len(v)}")
        return bytes(v)

    def enc(value: object, _: bytes) -> bytes:
        if not isinstance(value, bytes | bytearray) or not sizes(len(value)):
            raise StunEncodeError(f"expected bytes of a valid length, got {value!r}")
        return bytes(value)

    return dec, enc


def _int_codec(fmt: struct.Struct, size: int) -> tuple[_Decoder, _Encoder]:
    """An unsigned integer in `fmt` followed by RFFU zero bytes up to `size`."""

    limit = 1 << (8 * fmt.size)

    def dec(v: bytes, _: bytes) -> int:
        if len(v) != size:
            raise _fail(f"integer attribute has length {len(v)}, expected {size}")
        value: int = fmt.unpack_from(v)[0]
        return value

    def enc(value: object, _: bytes) -> bytes:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
            raise StunEncodeError(f"expected an integer below {limit}, got {value!r}")
        return fmt.pack(value) + bytes(size - fmt.size)

    return dec, enc


_U8 = struct.Struct("!B")


def _dec_flag(v: bytes, _: bytes) -> bool:
    if v:
        raise _fail("flag attribute must be empty")
    return True


def _enc_flag(value: object, _: bytes) -> bytes:
    if value is not True:
        raise StunEncodeError(f"flag attributes take True, got {value!r}")
    return b""


def _dec_even_port(v: bytes, _: bytes) -> bool:
    if len(v) != 1:
        raise _fail("EVEN-PORT must be 1 byte")
    return bool(v[0] & 0x80)


def _enc_even_port(value: object, _: bytes) -> bytes:
    if not isinstance(value, bool):
        raise StunEncodeError(f"EVEN-PORT takes a bool, got {value!r}")
    return b"\x80" if value else b"\x00"


def _dec_change_request(v: bytes, _: bytes) -> ChangeRequest:
    if len(v) != 4:
        raise _fail("CHANGE-REQUEST must be 4 bytes")
    flags = v[3]
    return ChangeRequest(bool(flags & 0x04), bool(flags & 0x02))


def _enc_change_request(value: object, _: bytes) -> bytes:
    if not isinstance(value, ChangeRequest):
        raise StunEncodeError(f"expected ChangeRequest, got {value!r}")
    return _U32.pack((0x04 if value.change_ip else 0) | (0x02 if value.change_port else 0))


# -- error codes (RFC 8489 §14.8, RFC 8656 §18.12) -------------------------------------------


def _split_code(v: bytes) -> tuple[int, str]:
    cls, number = v[2] & 0x07, v[3]
    if not 3 <= cls <= 6 or number > 99:
        raise _fail(f"error code class {cls} number {number} out of range")
    return cls * 100 + number, _dec_text(v[4:], b"")


def _join_code(code: object, reason: object) -> bytes:
    if not isinstance(code, int) or not 300 <= code <= 699 or not isinstance(reason, str):
        raise StunEncodeError(f"error code must be 300-699 with a str reason, got {code!r}")
    return bytes((code // 100, code % 100)) + _enc_text(reason, b"")


def _dec_error_code(v: bytes, _: bytes) -> ErrorCode:
    if len(v) < 4:
        raise _fail("ERROR-CODE shorter than 4 bytes")
    return ErrorCode(*_split_code(v))


def _enc_error_code(value: object, _: bytes) -> bytes:
    if isinstance(value, tuple) and len(value) == 2:  # a plain (code, reason) works too
        value = ErrorCode(*value)
    if not isinstance(value, ErrorCode):
        raise StunEncodeError(f"expected ErrorCode, got {value!r}")
    return b"\x00\x00" + _join_code(value.code, value.reason)


def _dec_address_error(v: bytes, _: bytes) -> AddressErrorCode:
    if len(v) < 4:
        raise _fail("ADDRESS-ERROR-CODE shorter than 4 bytes")
    return AddressErrorCode(v[0], *_split_code(v))


def _enc_address_error(value: object, _: bytes) -> bytes:
    if not isinstance(value, AddressErrorCode) or value.family not in (1, 2):
        raise StunEncodeError(f"expected AddressErrorCode with family 1 or 2, got {value!r}")
    return bytes((value.family, 0)) + _join_code(value.code, value.reason)


# -- lists -----------------------------------------------------------------------------------


def _dec_unknown(v: bytes, _: bytes) -> tuple[int, ...]:
    if len(v) % 2:
        raise _fail("UNKNOWN-ATTRIBUTES has an odd length")
    return tuple(_U16.unpack_from(v, i)[0] for i in range(0, len(v), 2))


def _enc_unknown(value: object, _: bytes) -> bytes:
    if not isinstance(value, tuple | list) or not all(
        isinstance(t, int) and 0 <= t <= 0xFFFF for t in value
    ):
        raise StunEncodeError(f"UNKNOWN-ATTRIBUTES takes a tuple of 16-bit types, got {value!r}")
    return b"".join(_U16.pack(t) for t in value)


def _read_algorithm(v: bytes, pos: int) -> tuple[PasswordAlgorithm, int]:
    if len(v) - pos < 4:
        raise _fail("truncated password algorithm")
    alg, size = struct.unpack_from("!HH", v, pos)
    end = pos + 4 + size
    if end > len(v):
        raise _fail("password algorithm parameters overrun the attribute")
    return PasswordAlgorithm(alg, bytes(v[pos + 4 : end])), end + _pad4(size)


def _write_algorithm(value: object) -> bytes:
    if (
        not isinstance(value, PasswordAlgorithm)
        or not 0 <= value.algorithm <= 0xFFFF
        or len(value.parameters) > 0xFFFF
    ):
        raise StunEncodeError(f"expected PasswordAlgorithm, got {value!r}")
    size = len(value.parameters)
    return struct.pack("!HH", value.algorithm, size) + value.parameters + bytes(_pad4(size))


def _dec_algorithm(v: bytes, _: bytes) -> PasswordAlgorithm:
    algorithm, end = _read_algorithm(v, 0)
    if end != len(v):
        raise _fail("PASSWORD-ALGORITHM has trailing bytes")
    return algorithm


# The registry holds two algorithms (RFC 8489 §18.5); a longer list is hostile, and would cost
# one object per 4 bytes of a 64 KiB attribute.
MAX_PASSWORD_ALGORITHMS = 16


def _dec_algorithms(v: bytes, _: bytes) -> tuple[PasswordAlgorithm, ...]:
    algorithms: list[PasswordAlgorithm] = []
    pos = 0
    while pos < len(v):
        if len(algorithms) == MAX_PASSWORD_ALGORITHMS:
            raise _fail(f"PASSWORD-ALGORITHMS lists more than {MAX_PASSWORD_ALGORITHMS} entries")
        algorithm, pos = _read_algorithm(v, pos)
        algorithms.append(algorithm)
    if pos != len(v):
        raise _fail("PASSWORD-ALGORITHMS entry padding overruns the attribute")
    return tuple(algorithms)


def _enc_algorithms(value: object, _: bytes) -> bytes:
    if not isinstance(value, tuple | list):
        raise StunEncodeError(f"PASSWORD-ALGORITHMS takes a tuple, got {value!r}")
    return b"".join(_write_algorithm(a) for a in value)


def _dec_icmp(v: bytes, _: bytes) -> Icmp:
    if len(v) != 8:
        raise _fail("ICMP must be 8 bytes")
    return Icmp(v[2], v[3], _U32.unpack_from(v, 4)[0])


def _enc_icmp(value: object, _: bytes) -> bytes:
    if not isinstance(value, Icmp):
        raise StunEncodeError(f"expected Icmp, got {value!r}")
    try:
        return struct.pack("!HBBI", 0, value.type, value.code, value.data)
    except struct.error as exc:
        raise StunEncodeError(f"ICMP value out of range: {value!r}") from exc


def _dec_family(v: bytes, _: bytes) -> int:
    if len(v) != 4 or v[0] not in (1, 2):
        raise _fail("address family attribute must be 4 bytes with family 1 or 2")
    return v[0]


def _enc_family(value: object, _: bytes) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or value not in (1, 2):
        raise StunEncodeError(f"address family must be 1 or 2, got {value!r}")
    return bytes((value, 0, 0, 0))


# -- the table -------------------------------------------------------------------------------


def _plain(xor: bool) -> tuple[_Decoder, _Encoder]:
    if xor:
        return (lambda v, pad: _dec_address(v, pad)), (lambda x, pad: _enc_address(x, pad))
    return (lambda v, _: _dec_address(v, None)), (lambda x, _: _enc_address(x, None))


_CODECS: dict[int, tuple[_Decoder, _Encoder]] = {
    **{t: _plain(False) for t in (
        A.MAPPED_ADDRESS, A.RESPONSE_ADDRESS, A.SOURCE_ADDRESS, A.CHANGED_ADDRESS,
        A.REFLECTED_FROM, A.ALTERNATE_SERVER, A.RESPONSE_ORIGIN, A.OTHER_ADDRESS)},
    **{t: _plain(True) for t in (
        A.XOR_MAPPED_ADDRESS, A.XOR_PEER_ADDRESS, A.XOR_RELAYED_ADDRESS)},
    **{t: _text_codec(MAX_TEXT_BYTES[t]) for t in (
        A.USERNAME, A.REALM, A.NONCE, A.SOFTWARE, A.ALTERNATE_DOMAIN)},
    **{t: _bytes_codec(lambda n: True) for t in (A.PASSWORD, A.DATA, A.PADDING)},
    A.USERHASH: _bytes_codec(lambda n: n == 32),
    A.MESSAGE_INTEGRITY: _bytes_codec(lambda n: n == 20),
    A.MESSAGE_INTEGRITY_SHA256: _bytes_codec(lambda n: 16 <= n <= 32 and n % 4 == 0),
    A.RESERVATION_TOKEN: _bytes_codec(lambda n: n == 8),
    **{t: _int_codec(_U32, 4) for t in (
        A.LIFETIME, A.PRIORITY, A.CONNECTION_ID, A.FINGERPRINT)},
    A.ICE_CONTROLLED: _int_codec(_U64, 8),
    A.ICE_CONTROLLING: _int_codec(_U64, 8),
    A.CHANNEL_NUMBER: _int_codec(_U16, 4),
    A.RESPONSE_PORT: _int_codec(_U16, 4),
    A.REQUESTED_TRANSPORT: _int_codec(_U8, 4),
    A.REQUESTED_ADDRESS_FAMILY: (_dec_family, _enc_family),
    A.ADDITIONAL_ADDRESS_FAMILY: (_dec_family, _enc_family),
    A.USE_CANDIDATE: (_dec_flag, _enc_flag),
    A.DONT_FRAGMENT: (_dec_flag, _enc_flag),
    A.EVEN_PORT: (_dec_even_port, _enc_even_port),
    A.CHANGE_REQUEST: (_dec_change_request, _enc_change_request),
    A.ERROR_CODE: (_dec_error_code, _enc_error_code),
    A.ADDRESS_ERROR_CODE: (_dec_address_error, _enc_address_error),
    A.UNKNOWN_ATTRIBUTES: (_dec_unknown, _enc_unknown),
    A.PASSWORD_ALGORITHM: (_dec_algorithm, lambda x, _: _write_algorithm(x)),
    A.PASSWORD_ALGORITHMS: (_dec_algorithms, _enc_algorithms),
    A.ICMP: (_dec_icmp, _enc_icmp),
}  # fmt: skip

KNOWN_TYPES: frozenset[int] = frozenset(_CODECS)


def decode_attribute(attr_type: int, value: bytes, xor_pad: bytes) -> AttrValue:
    """Decode one attribute value; unknown types come back as raw bytes.

    `xor_pad` is header bytes 4-20 (magic cookie + transaction id, RFC 8489 §14.2).
    """
    codec = _CODECS.get(attr_type)
    if codec is None:
        return bytes(value)
    return codec[0](value, xor_pad)


def encode_attribute(attr_type: int, value: object, xor_pad: bytes) -> bytes:
    """Encode one attribute value (without the TLV header); unknown types take raw bytes."""
    codec = _CODECS.get(attr_type)
    if codec is None:
        if not isinstance(value, bytes | bytearray):
            raise StunEncodeError(f"attribute 0x{attr_type:04x} is unknown: give raw bytes")
        return bytes(value)
    return codec[1](value, xor_pad)
