"""The wire constants against the IANA "STUN Parameters" registry, typed in from the RFCs.

Sources: RFC 8489 §18.2-18.5 (methods, attributes, error codes, password algorithms),
RFC 5780 §9.1, RFC 8656 §18, RFC 8445 §20, RFC 6062 §6, RFC 3489 §11.2 (reserved names).
This table is deliberately independent of natkit.stun.constants: a typo in one shows up here.
"""

from __future__ import annotations

from natkit.stun.attributes import KNOWN_TYPES
from natkit.stun.constants import (
    ATTRIBUTE_NAMES,
    ERROR_REASONS,
    METHOD_NAMES,
    ErrorCodeValue,
    PasswordAlgorithmId,
)

IANA_METHODS = {
    0x001: "BINDING", 0x002: "SHARED-SECRET", 0x003: "ALLOCATE", 0x004: "REFRESH",
    0x006: "SEND", 0x007: "DATA", 0x008: "CREATE-PERMISSION", 0x009: "CHANNEL-BIND",
    0x00A: "CONNECT", 0x00B: "CONNECTION-BIND", 0x00C: "CONNECTION-ATTEMPT",
}  # fmt: skip

IANA_ATTRIBUTES = {
    0x0001: "MAPPED-ADDRESS", 0x0002: "RESPONSE-ADDRESS", 0x0003: "CHANGE-REQUEST",
    0x0004: "SOURCE-ADDRESS", 0x0005: "CHANGED-ADDRESS", 0x0006: "USERNAME",
    0x0007: "PASSWORD", 0x0008: "MESSAGE-INTEGRITY", 0x0009: "ERROR-CODE",
    0x000A: "UNKNOWN-ATTRIBUTES", 0x000B: "REFLECTED-FROM", 0x000C: "CHANNEL-NUMBER",
    0x000D: "LIFETIME", 0x0012: "XOR-PEER-ADDRESS", 0x0013: "DATA", 0x0014: "REALM",
    0x0015: "NONCE", 0x0016: "XOR-RELAYED-ADDRESS", 0x0017: "REQUESTED-ADDRESS-FAMILY",
    0x0018: "EVEN-PORT", 0x0019: "REQUESTED-TRANSPORT", 0x001A: "DONT-FRAGMENT",
    0x001C: "MESSAGE-INTEGRITY-SHA256", 0x001D: "PASSWORD-ALGORITHM", 0x001E: "USERHASH",
    0x0020: "XOR-MAPPED-ADDRESS", 0x0022: "RESERVATION-TOKEN", 0x0024: "PRIORITY",
    0x0025: "USE-CANDIDATE", 0x0026: "PADDING", 0x0027: "RESPONSE-PORT",
    0x002A: "CONNECTION-ID",
    0x8000: "ADDITIONAL-ADDRESS-FAMILY", 0x8001: "ADDRESS-ERROR-CODE",
    0x8002: "PASSWORD-ALGORITHMS", 0x8003: "ALTERNATE-DOMAIN", 0x8004: "ICMP",
    0x8022: "SOFTWARE", 0x8023: "ALTERNATE-SERVER", 0x8028: "FINGERPRINT",
    0x8029: "ICE-CONTROLLED", 0x802A: "ICE-CONTROLLING", 0x802B: "RESPONSE-ORIGIN",
    0x802C: "OTHER-ADDRESS",
}  # fmt: skip

IANA_ERROR_CODES = {
    300: "Try Alternate", 400: "Bad Request", 401: "Unauthenticated", 403: "Forbidden",
    405: "Mobility Forbidden", 420: "Unknown Attribute", 437: "Allocation Mismatch",
    438: "Stale Nonce", 440: "Address Family not Supported", 441: "Wrong Credentials",
    442: "Unsupported Transport Protocol", 443: "Peer Address Family Mismatch",
    446: "Connection Already Exists", 447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached", 487: "Role Conflict", 500: "Server Error",
    508: "Insufficient Capacity",
}  # fmt: skip


def test_methods_match_iana() -> None:
    assert METHOD_NAMES == IANA_METHODS


def test_attributes_match_iana() -> None:
    assert ATTRIBUTE_NAMES == IANA_ATTRIBUTES


def test_every_registered_attribute_has_a_codec() -> None:
    assert set(IANA_ATTRIBUTES) == set(KNOWN_TYPES)


def test_error_codes_match_iana() -> None:
    assert ERROR_REASONS == IANA_ERROR_CODES
    assert {e.value for e in ErrorCodeValue} == set(IANA_ERROR_CODES)


def test_password_algorithms_match_iana() -> None:
    assert {a.name: a.value for a in PasswordAlgorithmId} == {"MD5": 0x0001, "SHA256": 0x0002}
