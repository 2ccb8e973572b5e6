"""MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256, FINGERPRINT, credential keys, the nonce cookie.

All functions work on wire bytes, so a server can check a request without decoding it.
The length-field rules (RFC 8489 §14.5-14.7): each of these attributes is computed over the
message up to (not including) itself, with the header length already counting the attribute
being computed (and nothing after it).

The nonce cookie (RFC 8489 §9.2): a server that supports RFC 8489 starts its NONCE with
``obMatJos2`` and the 4-character base64 of 24 "STUN Security Features" bits. Bit 0 is
"Password algorithms", bit 1 "Username anonymity" (§18.1), counted from the *least*
significant bit of the third byte: verified erratum 6290 (the prose says the opposite; the
Appendix B.1 vector, nonce ``obMatJos2AAAC…`` for a USERHASH request, agrees with the erratum).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import stringprep
import unicodedata

from natkit.stun.constants import FINGERPRINT_XOR, HEADER_LENGTH, AttrType, PasswordAlgorithmId

__all__ = [
    "NONCE_COOKIE",
    "PASSWORD_ALGORITHMS_FEATURE",
    "USERNAME_ANONYMITY_FEATURE",
    "check_fingerprint",
    "check_integrity",
    "check_integrity_sha256",
    "fingerprint",
    "long_term_key",
    "message_integrity",
    "message_integrity_sha256",
    "nonce_cookie",
    "nonce_features",
    "saslprep",
    "short_term_key",
    "userhash",
]


NONCE_COOKIE = "obMatJos2"
PASSWORD_ALGORITHMS_FEATURE = 0x000001  # bit 0 (erratum 6290: the rightmost bit)
USERNAME_ANONYMITY_FEATURE = 0x000002  # bit 1
_COOKIE_CHARS = len(NONCE_COOKIE) + 4


def _with_length(prefix: bytes, extra: int) -> bytes:
    """`prefix` with its header length covering itself plus an `extra`-byte attribute."""
    return prefix[:2] + (len(prefix) - HEADER_LENGTH + extra).to_bytes(2, "big") + prefix[4:]


def fingerprint(prefix: bytes) -> int:
    """FINGERPRINT value for a message whose bytes before the attribute are `prefix` (§14.7)."""
    return binascii.crc32(_with_length(prefix, 8)) ^ FINGERPRINT_XOR


def message_integrity(prefix: bytes, key: bytes) -> bytes:
    """HMAC-SHA1 MESSAGE-INTEGRITY value over `prefix` (RFC 8489 §14.5)."""
    return hmac.new(key, _with_length(prefix, 24), hashlib.sha1).digest()


def message_integrity_sha256(prefix: bytes, key: bytes, size: int = 32) -> bytes:
    """HMAC-SHA256 MESSAGE-INTEGRITY-SHA256 value, truncated to `size` bytes (§14.6)."""
    return hmac.new(key, _with_length(prefix, 4 + size), hashlib.sha256).digest()[:size]


def _find(data: bytes, wanted: int) -> tuple[int, int] | None:
    """Offset and length of the first `wanted` attribute; None if absent or malformed."""
    if len(data) < HEADER_LENGTH or int.from_bytes(data[2:4], "big") != len(data) - HEADER_LENGTH:
        return None
    pos = HEADER_LENGTH
    while pos + 4 <= len(data):
        attr_type = int.from_bytes(data[pos : pos + 2], "big")
        size = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if pos + 4 + size > len(data):
            return None
        if attr_type == wanted:
            return pos, size
        pos += 4 + size + (-size % 4)
    return None


def check_fingerprint(data: bytes) -> bool:
    """True if `data` ends with a FINGERPRINT attribute that matches (RFC 8489 §14.7)."""
    if len(data) < HEADER_LENGTH + 8 or data[-8:-4] != b"\x80\x28\x00\x04":
        return False
    if int.from_bytes(data[2:4], "big") != len(data) - HEADER_LENGTH:
        return False
    return fingerprint(data[:-8]) == int.from_bytes(data[-4:], "big")


def check_integrity(data: bytes, key: bytes) -> bool:
    """True if the first MESSAGE-INTEGRITY of `data` is valid for `key` (RFC 8489 §14.5)."""
    found = _find(data, AttrType.MESSAGE_INTEGRITY)
    if found is None or found[1] != 20:
        return False
    pos = found[0]
    return hmac.compare_digest(data[pos + 4 : pos + 24], message_integrity(data[:pos], key))


def check_integrity_sha256(data: bytes, key: bytes) -> bool:
    """True if MESSAGE-INTEGRITY-SHA256 is valid for `key` (RFC 8489 §14.6; 16-32 bytes)."""
    found = _find(data, AttrType.MESSAGE_INTEGRITY_SHA256)
    if found is None or not (16 <= found[1] <= 32 and found[1] % 4 == 0):
        return False
    pos, size = found
    expected = message_integrity_sha256(data[:pos], key, size)
    return hmac.compare_digest(data[pos + 4 : pos + 4 + size], expected)


def saslprep(text: str) -> str:
    """SASLprep (RFC 4013) as RFC 5389 §15.4 and the RFC 5769 vectors use it.

    RFC 8489 moved to the OpaqueString profile (RFC 8265); for the ASCII credentials nearly
    everyone uses both are the identity. Raises ValueError on prohibited characters.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    result = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
        stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
        stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
    )  # fmt: skip
    for c in result:
        if any(table(c) for table in prohibited):
            raise ValueError(f"character U+{ord(c):04X} is prohibited by SASLprep")
    rtl = any(stringprep.in_table_d1(c) for c in result)  # RFC 3454 §6 bidi rules
    if rtl and (
        any(stringprep.in_table_d2(c) for c in result)
        or not (stringprep.in_table_d1(result[0]) and stringprep.in_table_d1(result[-1]))
    ):
        raise ValueError("SASLprep: bad bidirectional text")
    return result


def short_term_key(password: str) -> bytes:
    """Short-term credential key: the prepared password itself (RFC 8489 §9.1.1)."""
    return saslprep(password).encode("utf-8")


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: int = PasswordAlgorithmId.MD5,
) -> bytes:
    """Long-term key (RFC 8489 §9.2.2): MD5 or SHA-256 of ``username:realm:password``.

    The algorithm is the one named by PASSWORD-ALGORITHM (MD5 when the attribute is absent).
    """
    material = f"{username}:{saslprep(realm)}:{saslprep(password)}".encode()
    if algorithm == PasswordAlgorithmId.MD5:
        return hashlib.md5(material, usedforsecurity=False).digest()
    if algorithm == PasswordAlgorithmId.SHA256:
        return hashlib.sha256(material).digest()
    raise ValueError(f"unknown password algorithm {algorithm}")


def userhash(username: str, realm: str) -> bytes:
    """USERHASH value (RFC 8489 §14.4): SHA-256 of ``username:realm``."""
    return hashlib.sha256(f"{username}:{saslprep(realm)}".encode()).digest()


def nonce_cookie(features: int) -> str:
    """The 13-character start of a NONCE announcing `features` (RFC 8489 §9.2)."""
    return NONCE_COOKIE + base64.b64encode(features.to_bytes(3, "big")).decode("ascii")


def nonce_features(nonce: str) -> int | None:
    """The security-feature bits of a NONCE that starts with the nonce cookie, else None.

    Remote input: only the exact cookie shape is read; this says what the NONCE claims, not
    that the server issued it (a server checks its own nonces)."""
    if len(nonce) < _COOKIE_CHARS or not nonce.startswith(NONCE_COOKIE):
        return None
    try:
        raw = base64.b64decode(
            nonce[len(NONCE_COOKIE) : _COOKIE_CHARS].encode("ascii"), validate=True
        )
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        return None
    return int.from_bytes(raw, "big") if len(raw) == 3 else None
