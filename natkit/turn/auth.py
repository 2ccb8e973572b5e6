"""TURN long-term credential authentication, sans-IO (RFC 8489 §9.2, RFC 8656 §5).

Theory of operation. `Authenticator.check(message, client_ip, now)` runs the server side of the
long-term mechanism in the order of RFC 8489 §9.2.4 and returns either the key (and user) to
sign the response with, or the error to answer:

1. no MESSAGE-INTEGRITY → 401 with REALM and a fresh NONCE (the challenge);
2. MESSAGE-INTEGRITY without USERNAME, REALM or NONCE → 400;
3. a NONCE that is not ours, not for this client or older than ``nonce_lifetime`` → 438 with a
   fresh NONCE (the client retries at once: RFC 8489 §9.2.5);
4. an unknown user, an expired or forged REST API credential → 401;
5. MESSAGE-INTEGRITY that does not verify with the user's key → 401.

Nonces are stateless: base64url of 12 bytes, ``issued (4) | HMAC-SHA256(nonce key, issued |
client IP)[:8]``, where ``issued`` is `now` in milliseconds modulo 2**32 (ages are taken modulo
2**32 too, so the wrap every 49.7 days is harmless for lifetimes below that). The server stores
nothing per client, a nonce is bound to the client's IP (RFC 8489 §9.2: it "may encode the
client's IP address"), and a forged or replayed-from-elsewhere nonce fails the MAC (64 bits: an
online guess succeeds once in 2**64 tries). 16 characters keep the 401 challenge small: it is
the largest answer an unauthenticated client gets, so its size is an amplification factor
(`natkit.turn.relay` states the bound). The nonce key is random per process unless given.

Credentials: static users (``turn.auth.users``) and TURN REST API ephemeral credentials
(``turn.auth.secret``, ``expiry:user`` usernames, `natkit.turn.credentials`). The key is
MD5(username:realm:password) (RFC 8489 §9.2.2; PASSWORD-ALGORITHM negotiation is not offered, so
MD5 is the algorithm, as with every deployed TURN client).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from natkit.stun.constants import AttrType
from natkit.stun.integrity import check_integrity, long_term_key
from natkit.stun.message import Message
from natkit.turn import credentials

__all__ = ["AuthError", "Authenticator", "Credentials"]


class Credentials(NamedTuple):
    """A request that passed authentication: who, and the key that signs its response."""

    username: str
    user: str
    """Quota key: the user name (the part after ``expiry:`` for REST credentials)."""
    key: bytes


@dataclass(frozen=True, slots=True)
class AuthError:
    """The answer to a request that failed authentication (not an exception: it is data)."""

    code: int
    nonce: bool
    """Include REALM and a fresh NONCE (401 and 438, RFC 8489 §9.2.4)."""


_ISSUED = struct.Struct("!I")
_NONCE_MAC = 8
_NONCE_CHARS = 4 * (_ISSUED.size + _NONCE_MAC) // 3  # 12 bytes → 16 base64 characters

_MISSING = AuthError(400, False)
_UNAUTHENTICATED = AuthError(401, True)
_STALE = AuthError(438, True)


class Authenticator:
    """Long-term credentials for one realm: static users and/or a REST API secret."""

    def __init__(
        self,
        realm: str,
        *,
        users: Mapping[str, str] | None = None,
        secret: str | None = None,
        nonce_lifetime: float = 600.0,
        nonce_key: bytes | None = None,
    ) -> None:
        self.realm = realm
        self.secret = secret or None
        self.nonce_lifetime = nonce_lifetime
        self._nonce_key = nonce_key or secrets.token_bytes(32)
        # Static keys once, at start: SASLprep + MD5 per request would be wasted work.
        self._static = {u: long_term_key(u, realm, p) for u, p in (users or {}).items()}
        self.unix_offset = 0.0
        """Added to `now` to get Unix time for REST API expiries (the caller's clock may be
        monotonic; the adapter keeps this current)."""

    # -- nonces ----------------------------------------------------------------------------

    def _mac(self, issued: bytes, client_ip: str) -> bytes:
        digest = hmac.new(self._nonce_key, issued + b"|" + client_ip.encode(), hashlib.sha256)
        return digest.digest()[:_NONCE_MAC]

    def nonce(self, client_ip: str, now: float) -> str:
        """A fresh nonce for `client_ip`, valid `nonce_lifetime` seconds from `now`."""
        issued = _ISSUED.pack(int(now * 1000) & 0xFFFFFFFF)
        return base64.urlsafe_b64encode(issued + self._mac(issued, client_ip)).decode("ascii")

    def nonce_valid(self, nonce: str, client_ip: str, now: float) -> bool:
        # Remote input: decode only the exact shape we issue, compare MACs as bytes.
        if len(nonce) != _NONCE_CHARS or not nonce.isascii():
            return False
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (binascii.Error, ValueError):
            return False
        if base64.urlsafe_b64encode(raw) != nonce.encode("ascii"):
            return False  # b64decode skips stray characters: insist on the canonical form
        issued, mac = raw[: _ISSUED.size], raw[_ISSUED.size :]
        if not hmac.compare_digest(mac, self._mac(issued, client_ip)):
            return False
        issued_ms: int = _ISSUED.unpack(issued)[0]
        age_ms = (int(now * 1000) - issued_ms) & 0xFFFFFFFF
        return age_ms < self.nonce_lifetime * 1000

    # -- credentials -----------------------------------------------------------------------

    def credentials(self, username: str, now: float) -> Credentials | None:
        """The key for `username`, or None (unknown user, expired/forged REST credential)."""
        key = self._static.get(username)
        if key is not None:
            return Credentials(username, username, key)
        if self.secret is None:
            return None
        password = credentials.password_for(self.secret, username)
        # verify() checks the "expiry:user" shape and the expiry (RFC-less draft §2.2).
        if not credentials.verify(self.secret, username, password, now + self.unix_offset):
            return None
        user = username.partition(credentials.SEPARATOR)[2]
        return Credentials(username, user, long_term_key(username, self.realm, password))

    def check(self, message: Message, client_ip: str, now: float) -> Credentials | AuthError:
        """Authenticate a request (the module docstring gives the order of the checks)."""
        if AttrType.MESSAGE_INTEGRITY not in message:
            return _UNAUTHENTICATED
        username = message.get(AttrType.USERNAME)
        nonce = message.get(AttrType.NONCE)
        if (
            not isinstance(username, str)
            or not isinstance(nonce, str)
            or AttrType.REALM not in message
        ):
            return _MISSING
        if not self.nonce_valid(nonce, client_ip, now):
            return _STALE
        creds = self.credentials(username, now)
        if creds is None or not check_integrity(message.raw, creds.key):
            return _UNAUTHENTICATED
        return creds
