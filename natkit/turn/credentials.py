"""TURN REST API ephemeral credentials (draft-uberti-behave-turn-rest-00 §2.2).

A web app and the TURN server share a secret. The app mints, per user and per call::

    username = "<expiry unix time>:<user>"
    password = base64(HMAC-SHA1(secret, username))

and the server recomputes the password from the username alone, so no user database is needed
and a leaked credential dies at its expiry. coturn implements this as ``use-auth-secret`` +
``static-auth-secret``; the builtin engine reuses `verify`.

Pure functions: the clock (`now`) is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

__all__ = ["Credential", "ice_server", "mint", "parse_ttl", "password_for", "verify"]

# The draft's separator between expiry and user (coturn: --rest-api-separator, default ":").
SEPARATOR = ":"

# Digits of an expiry: Unix time fits 19 (int64, as coturn's turn_time_t). Checked before int(),
# which raises on more than 4,300 digits (CPython's int_max_str_digits) and would let a crafted
# USERNAME turn every datagram into a traceback.
_MAX_EXPIRY_DIGITS = 19

_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TTL_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


@dataclass(frozen=True, slots=True)
class Credential:
    """One ephemeral TURN credential."""

    username: str
    """``expiry:user``, the value of the STUN USERNAME attribute."""
    password: str
    """base64(HMAC-SHA1(secret, username)): the long-term password (RFC 8489 §9.2)."""
    expires: int
    """Unix time after which the server refuses it (401)."""
    ttl: int
    """Seconds it was minted for."""


def password_for(secret: str, username: str) -> str:
    """The password a REST API server derives from `username`."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def mint(secret: str, user: str, ttl: int, now: float) -> Credential:
    """Credentials for `user` valid for `ttl` seconds from `now`."""
    if not secret:
        raise ValueError("the TURN REST API secret is empty")
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    if SEPARATOR in user:
        # The server splits at the first separator; a user "a:b" would still verify, but the
        # user name it logs and counts quotas against would be wrong.
        raise ValueError(f"user name {user!r} must not contain {SEPARATOR!r}")
    expires = int(now) + ttl
    username = f"{expires}{SEPARATOR}{user}"
    return Credential(username, password_for(secret, username), expires, ttl)


def verify(secret: str, username: str, password: str, now: float) -> bool:
    """True if `password` is the REST API password for `username` and it has not expired.

    A username without a numeric expiry is refused: it is not an ephemeral credential.
    """
    expiry_text, sep, _user = username.partition(SEPARATOR)
    if not sep or not (
        0 < len(expiry_text) <= _MAX_EXPIRY_DIGITS
        and expiry_text.isascii()
        and expiry_text.isdigit()
    ):
        return False
    if int(expiry_text) < now:
        return False
    # Bytes: compare_digest raises TypeError on non-ASCII str, and the password is user input.
    return hmac.compare_digest(password_for(secret, username).encode(), password.encode())


def parse_ttl(text: str) -> int:
    """``"30s"``, ``"10m"``, ``"1h"``, ``"1d"`` or plain seconds → seconds (ValueError if not)."""
    match = _TTL_RE.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"bad ttl {text!r}: expected a positive number + s, m, h or d (e.g. 1h)")
    return int(match.group(1)) * _TTL_UNITS[match.group(2) or "s"]


def ice_server(urls: list[str], credential: Credential) -> dict[str, object]:
    """A WebRTC ``RTCIceServer`` dict (W3C webrtc-pc §4.2.1), ready for ``iceServers``."""
    return {"urls": urls, "username": credential.username, "credential": credential.password}
