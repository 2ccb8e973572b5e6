"""STUN wire constants: the IANA "STUN Parameters" registries as tables.

Methods, attribute types, error codes and password algorithms are `IntEnum`s so a decoded value
prints with its name; `ATTRIBUTE_NAMES`, `ERROR_REASONS` and friends are the registries as data.
`tests/unit/test_stun_registry.py` checks them against values typed in from the RFCs' IANA
sections (RFC 8489 §18, RFC 5780 §9, RFC 8656 §18, RFC 8445 §20, RFC 6062 §6, RFC 3489 §11.2).
"""

from __future__ import annotations

import enum

__all__ = [
    "ATTRIBUTE_NAMES",
    "COMPREHENSION_OPTIONAL",
    "ERROR_REASONS",
    "FINGERPRINT_XOR",
    "HEADER_LENGTH",
    "LEGACY_ADDITIONAL_ADDRESS_FAMILY",
    "LEGACY_ADDRESS_ERROR_CODE",
    "MAGIC_COOKIE",
    "MAGIC_COOKIE_BYTES",
    "METHOD_NAMES",
    "AddressFamily",
    "AttrType",
    "ErrorCodeValue",
    "MessageClass",
    "Method",
    "PasswordAlgorithmId",
    "is_comprehension_required",
]

MAGIC_COOKIE = 0x2112A442  # RFC 8489 §5
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7: CRC-32 XOR "STUN"
COMPREHENSION_OPTIONAL = 0x8000  # RFC 8489 §14: types 0x8000-0xFFFF


class MessageClass(enum.IntEnum):
    """The two class bits C1 C0 of the message type (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Method(enum.IntEnum):
    """IANA STUN Methods (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1)."""

    BINDING = 0x001
    SHARED_SECRET = 0x002  # RFC 3489 only; reserved since RFC 5389
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


METHOD_NAMES: dict[int, str] = {m.value: m.name.replace("_", "-") for m in Method}


class AttrType(enum.IntEnum):
    """IANA STUN Attributes: every type this codec decodes (RFC 8489 §18.3 and the others)."""

    # comprehension-required (0x0000-0x7FFF)
    MAPPED_ADDRESS = 0x0001
    RESPONSE_ADDRESS = 0x0002  # RFC 3489; reserved, never honoured (reflection)
    CHANGE_REQUEST = 0x0003  # RFC 5780 §7.2
    SOURCE_ADDRESS = 0x0004  # RFC 3489
    CHANGED_ADDRESS = 0x0005  # RFC 3489
    USERNAME = 0x0006
    PASSWORD = 0x0007  # RFC 3489; reserved
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REFLECTED_FROM = 0x000B  # RFC 3489
    CHANNEL_NUMBER = 0x000C  # RFC 8656
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024  # RFC 8445
    USE_CANDIDATE = 0x0025
    PADDING = 0x0026  # RFC 5780
    RESPONSE_PORT = 0x0027
    CONNECTION_ID = 0x002A  # RFC 6062
    # comprehension-optional (0x8000-0xFFFF)
    ADDITIONAL_ADDRESS_FAMILY = 0x8000  # RFC 8656
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    ICMP = 0x8004
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B  # RFC 5780
    OTHER_ADDRESS = 0x802C


ATTRIBUTE_NAMES: dict[int, str] = {a.value: a.name.replace("_", "-") for a in AttrType}


def is_comprehension_required(attr_type: int) -> bool:
    return attr_type < COMPREHENSION_OPTIONAL


class ErrorCodeValue(enum.IntEnum):
    """IANA STUN Error Codes (RFC 8489 §18.4, RFC 8656 §18, RFC 8445 §20, RFC 6062 §6.3)."""

    TRY_ALTERNATE = 300
    BAD_REQUEST = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    MOBILITY_FORBIDDEN = 405
    UNKNOWN_ATTRIBUTE = 420
    ALLOCATION_MISMATCH = 437
    STALE_NONCE = 438
    ADDRESS_FAMILY_NOT_SUPPORTED = 440
    WRONG_CREDENTIALS = 441
    UNSUPPORTED_TRANSPORT_PROTOCOL = 442
    PEER_ADDRESS_FAMILY_MISMATCH = 443
    CONNECTION_ALREADY_EXISTS = 446
    CONNECTION_TIMEOUT_OR_FAILURE = 447
    ALLOCATION_QUOTA_REACHED = 486
    ROLE_CONFLICT = 487
    SERVER_ERROR = 500
    INSUFFICIENT_CAPACITY = 508


# Reason phrases as the registry spells them; kept short on purpose (they travel in responses).
ERROR_REASONS: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    405: "Mobility Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    487: "Role Conflict",
    500: "Server Error",
    508: "Insufficient Capacity",
}


class PasswordAlgorithmId(enum.IntEnum):
    """IANA STUN Password Algorithms (RFC 8489 §18.5)."""

    MD5 = 0x0001
    SHA256 = 0x0002


class AddressFamily(enum.IntEnum):
    """Family byte of the address attributes (RFC 8489 §14.1) and REQUESTED-ADDRESS-FAMILY."""

    IPV4 = 0x01
    IPV6 = 0x02


# The draft code points coturn used for ADDITIONAL-ADDRESS-FAMILY and ADDRESS-ERROR-CODE before
# 4.10 (Debian's 4.6.1 among them; coturn#1740, fixed by coturn 0749cd7e): outside the IANA
# registry, so not in `AttrType` and without a codec (raw bytes); the TURN core reads and
# answers them as aliases of 0x8000 and 0x8001 (natkit.turn.allocate).
LEGACY_ADDITIONAL_ADDRESS_FAMILY = 0x8032
LEGACY_ADDRESS_ERROR_CODE = 0x8033
