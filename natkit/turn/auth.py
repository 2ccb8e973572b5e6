"""TURN long-term credential authentication, sans-IO (RFC 8489 §9.2, RFC 8656 §5).

Theory of operation. `Authenticator.check(message, client_ip, now)` runs the server side of the
long-term mechanism in the order of RFC 8489 §9.2.4 and returns either the key (and user) to
sign the response with, or the error to answer:

1. neither MESSAGE-INTEGRITY nor MESSAGE-INTEGRITY-SHA256 → 401 with the challenge: REALM, a
   fresh NONCE and PASSWORD-ALGORITHMS (`challenge`);
2. `request_error`, the checks that need nothing but the request → 400: no USERNAME or
   USERHASH, REALM or NONCE; both USERNAME and USERHASH; a truncated MESSAGE-INTEGRITY-SHA256
   (§14.6: the full 32 bytes unless the usage allows less, and TURN does not); and, when the
   NONCE carries the "Password algorithms" bit, PASSWORD-ALGORITHM(S) that do not match the
   offer (the bid-down check, below);
3. a NONCE that is not ours, not for this client or older than ``nonce_lifetime`` → 438 with
   the challenge (the client retries at once: §9.2.5). RFC 8489 lists this after the password;
   checking it first tells an old nonce from a wrong password, and a nonce we cannot verify
   is not trusted for anything;
4. an unknown user or USERHASH, an expired or forged REST API credential → 401;
5. MESSAGE-INTEGRITY-SHA256 (when present, else MESSAGE-INTEGRITY) that does not verify with
   the user's key → 401.

Password algorithms (§9.2.2, §9.2.4). The challenge offers SHA-256, then MD5 (`OFFER`, in
preference order). A client that sends neither PASSWORD-ALGORITHMS nor PASSWORD-ALGORITHM is
processed as MD5 and answered with MESSAGE-INTEGRITY, exactly as before RFC 8489 (aioice,
coturn's turnutils, browsers). A client that sends them with one of our RFC 8489 nonces must
send both, PASSWORD-ALGORITHMS equal to `OFFER` and PASSWORD-ALGORITHM one of its entries, or
gets 400: a man in the middle that strips or edits the offer in the 401 cannot make it sign
with MD5 unnoticed (with an RFC 5389-form nonce there is no offer to match, and
PASSWORD-ALGORITHM only picks the key, as in RFC 8489 Appendix B.1). Its key is
the chosen hash of ``username:realm:password`` and every response to it carries
MESSAGE-INTEGRITY-SHA256 (the key is a `Sha256SignedKey`, which `natkit.turn.answers` reads).

Nonces are stateless: ``obMatJos2`` + the feature bits (`natkit.stun.integrity.nonce_cookie`)
+ base64url of 12 bytes, ``issued (4) | HMAC-SHA256(nonce key, cookie | issued | client
IP)[:8]``, 29 characters, where ``issued`` is `now` in milliseconds modulo 2**32 (ages are taken
modulo 2**32 too, so the wrap every 49.7 days is harmless for lifetimes below that). The MAC
covers the cookie, so the feature bits of a nonce cannot be changed: what the server offered
with a nonce is known from the nonce alone. The server stores nothing per client, a nonce is
bound to the client's IP (RFC 8489 §9.2: it "may encode the client's IP address"), and a forged
or replayed-from-elsewhere nonce fails the MAC (64 bits). The RFC 5389 form, the same without
the cookie (16 characters, no PASSWORD-ALGORITHMS beside it), is still issued where the full
challenge would break the amplification bound and no downgrade is possible
(`natkit.turn.answers.challenge`). The nonce key is random per process unless given.

Credentials: static users (``turn.auth.users``) and TURN REST API ephemeral credentials
(``turn.auth.secret``, ``expiry:user`` usernames, `natkit.turn.credentials`); a fleet
(`natkit.cluster`) replaces both live (`replace`, several secrets at once for rotation: a
request is checked against each secret's key) and names revoked users and credentials
(`revoked`: 401, as for an unknown user). USERHASH (§14.4,
SHA-256 of ``username:realm``) finds a static user in a table built at start (one dict lookup,
whatever the number of users). It cannot name a REST API user: that username embeds its expiry,
so no table holds it. The "Username anonymity" bit is therefore offered only when static users
are configured and no secret (a client that sees it may send USERHASH instead of USERNAME).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from natkit.stun.attributes import AttrValue, PasswordAlgorithm
from natkit.stun.constants import AttrType, PasswordAlgorithmId
from natkit.stun.integrity import (
    PASSWORD_ALGORITHMS_FEATURE,
    USERNAME_ANONYMITY_FEATURE,
    check_integrity,
    check_integrity_sha256,
    long_term_key,
    nonce_cookie,
    nonce_features,
    userhash,
)
from natkit.stun.message import Message
from natkit.turn import credentials

__all__ = [
    "OFFER",
    "AuthError",
    "Authenticator",
    "Credentials",
    "Sha256SignedKey",
    "request_error",
    "signed",
]

OFFER: tuple[PasswordAlgorithm, ...] = (
    PasswordAlgorithm(PasswordAlgorithmId.SHA256),
    PasswordAlgorithm(PasswordAlgorithmId.MD5),
)
"""PASSWORD-ALGORITHMS of every challenge: SHA-256 preferred, MD5 for RFC 5389 clients."""


class Sha256SignedKey(bytes):
    """The key of a request that named its password algorithm: its responses carry
    MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY (RFC 8489 §9.2.4, last paragraph).
    A `bytes` so an allocation keeps it (and how it signs) like any other key."""

    __slots__ = ()


class Credentials(NamedTuple):
    """A request that passed authentication: who, and the key that signs its response."""

    username: str
    user: str
    """Quota key: the user name (the part after ``expiry:`` for REST credentials)."""
    key: bytes
    """A `Sha256SignedKey` when the responses carry MESSAGE-INTEGRITY-SHA256."""


@dataclass(frozen=True, slots=True)
class AuthError:
    """The answer to a request that failed authentication (not an exception: it is data)."""

    code: int
    nonce: bool
    """Include the challenge: REALM, a fresh NONCE, PASSWORD-ALGORITHMS (401 and 438)."""
    reason: str = field(default="", compare=False)
    """For a 400 of `request_error`: the refusal reason (``bad_request`` or ``downgrade``)."""
    detail: str = field(default="", compare=False)
    """For a 400 of `request_error`: what was wrong, for the log."""


_ISSUED = struct.Struct("!I")
_NONCE_MAC = 8
_NONCE_CHARS = 4 * (_ISSUED.size + _NONCE_MAC) // 3  # 12 bytes → 16 base64 characters
_COOKIE_CHARS = len(nonce_cookie(0))

_UNAUTHENTICATED = AuthError(401, True)
_STALE = AuthError(438, True)
_ALGORITHMS = frozenset(a.algorithm for a in OFFER)


def signed(message: Message) -> bool:
    """True if `message` carries MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256."""
    return AttrType.MESSAGE_INTEGRITY in message or AttrType.MESSAGE_INTEGRITY_SHA256 in message


def _bad(detail: str) -> AuthError:
    return AuthError(400, False, "bad_request", detail)


def _downgrade(detail: str) -> AuthError:
    return AuthError(400, False, "downgrade", f"{detail} (RFC 8489 §9.2.4: a bid-down attempt?)")


def request_error(message: Message) -> AuthError | None:
    """The 400 a signed request gets from what it carries alone (step 2 of the module
    docstring), else None. Pure: `natkit.turn.refusals` names a refusal with it."""
    if not signed(message):
        return None
    name = isinstance(message.get(AttrType.USERNAME), str)
    hashed = isinstance(message.get(AttrType.USERHASH), bytes)
    nonce = message.get(AttrType.NONCE)
    if not (name or hashed) or not isinstance(nonce, str) or AttrType.REALM not in message:
        return _bad("MESSAGE-INTEGRITY without USERNAME or USERHASH, REALM or NONCE")
    if name and hashed:
        return _bad("both USERNAME and USERHASH")
    mac = message.get(AttrType.MESSAGE_INTEGRITY_SHA256)
    if isinstance(mac, bytes) and len(mac) != 32:
        return _bad(
            f"MESSAGE-INTEGRITY-SHA256 truncated to {len(mac)} bytes "
            "(RFC 8489 §14.6: TURN allows no truncation)"
        )
    return _algorithm_error(message, nonce)


def _algorithm_error(message: Message, nonce: str) -> AuthError | None:
    offered = message.get(AttrType.PASSWORD_ALGORITHMS)
    chosen = message.get(AttrType.PASSWORD_ALGORITHM)
    if offered is None and chosen is None:
        return None  # processed as MD5 (§9.2.4)
    if (nonce_features(nonce) or 0) & PASSWORD_ALGORITHMS_FEATURE:
        if offered is None:
            return _downgrade("PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS")
        if chosen is None:
            return _downgrade("PASSWORD-ALGORITHMS without PASSWORD-ALGORITHM")
        if offered != OFFER:
            return _downgrade("PASSWORD-ALGORITHMS differs from the server's offer")
        if chosen not in OFFER:
            return _downgrade("PASSWORD-ALGORITHM is not one of PASSWORD-ALGORITHMS")
    elif chosen is not None and chosen not in OFFER:
        return _bad("unknown PASSWORD-ALGORITHM")  # an RFC 5389 nonce: nothing to match
    return None


def _algorithm(message: Message) -> int:
    chosen = message.get(AttrType.PASSWORD_ALGORITHM)
    return chosen.algorithm if isinstance(chosen, PasswordAlgorithm) else PasswordAlgorithmId.MD5


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
        self.nonce_lifetime = nonce_lifetime
        self._nonce_key = nonce_key or secrets.token_bytes(32)
        self.unix_offset = 0.0
        """Added to `now` to get Unix time for REST API expiries (the caller's clock may be
        monotonic; the adapter keeps this current)."""
        self.revoked: frozenset[str] = frozenset()
        """User names (quota keys) and full credentials refused with 401 whatever they sign
        (a fleet's revocation list, `natkit.cluster`); one set lookup per request."""
        self.replace(users or {}, [secret] if secret else [])

    def replace(self, users: Mapping[str, str], secrets_: Sequence[str]) -> None:
        """Serve these static users and REST API secrets from now on (a fleet changes them
        live; several secrets at once let one be rotated out while the next is handed out).
        Outstanding nonces stay valid unless the offered features change."""
        # Keys and user hashes once: SASLprep + hashing per request would be waste.
        self._static = {
            u: {a: long_term_key(u, self.realm, p, a) for a in _ALGORITHMS}
            for u, p in users.items()
        }
        self._by_hash = {userhash(u, self.realm): u for u in self._static}
        self.secrets: tuple[str, ...] = tuple(dict.fromkeys(s for s in secrets_ if s))
        self.secret = self.secrets[0] if self.secrets else None
        anonymity = USERNAME_ANONYMITY_FEATURE if self._static and not self.secrets else 0
        self.features = PASSWORD_ALGORITHMS_FEATURE | anonymity
        """The security features every full challenge announces (module docstring)."""
        self._cookie = nonce_cookie(self.features)

    # -- nonces ----------------------------------------------------------------------------

    def _mac(self, cookie: str, issued: bytes, client_ip: str) -> bytes:
        material = cookie.encode("ascii") + issued + b"|" + client_ip.encode()
        return hmac.new(self._nonce_key, material, hashlib.sha256).digest()[:_NONCE_MAC]

    def nonce(self, client_ip: str, now: float, *, legacy: bool = False) -> str:
        """A fresh nonce for `client_ip`, valid `nonce_lifetime` seconds from `now`; with the
        nonce cookie unless `legacy` (the RFC 5389 form)."""
        cookie = "" if legacy else self._cookie
        issued = _ISSUED.pack(int(now * 1000) & 0xFFFFFFFF)
        body = base64.urlsafe_b64encode(issued + self._mac(cookie, issued, client_ip))
        return cookie + body.decode("ascii")

    def challenge(
        self, client_ip: str, now: float, *, legacy: bool = False
    ) -> list[tuple[int, AttrValue]]:
        """What a 401 or 438 carries (§9.2.4): REALM, a fresh NONCE and, unless `legacy`,
        PASSWORD-ALGORITHMS."""
        attrs: list[tuple[int, AttrValue]] = [
            (AttrType.REALM, self.realm),
            (AttrType.NONCE, self.nonce(client_ip, now, legacy=legacy)),
        ]
        if not legacy:
            attrs.append((AttrType.PASSWORD_ALGORITHMS, OFFER))
        return attrs

    def nonce_valid(self, nonce: str, client_ip: str, now: float) -> bool:
        """True if we issued `nonce` to `client_ip` less than `nonce_lifetime` ago."""
        # Remote input: decode only the exact shapes we issue, compare MACs as bytes.
        if len(nonce) == _NONCE_CHARS:
            cookie, body = "", nonce
        elif len(nonce) == _COOKIE_CHARS + _NONCE_CHARS and nonce[:_COOKIE_CHARS] == self._cookie:
            cookie, body = self._cookie, nonce[_COOKIE_CHARS:]
        else:
            return False
        if not body.isascii():
            return False
        try:
            raw = base64.urlsafe_b64decode(body.encode("ascii"))
        except (binascii.Error, ValueError):
            return False
        if base64.urlsafe_b64encode(raw) != body.encode("ascii"):
            return False  # b64decode skips stray characters: insist on the canonical form
        issued, mac = raw[: _ISSUED.size], raw[_ISSUED.size :]
        if not hmac.compare_digest(mac, self._mac(cookie, issued, client_ip)):
            return False
        issued_ms: int = _ISSUED.unpack(issued)[0]
        age_ms = (int(now * 1000) - issued_ms) & 0xFFFFFFFF
        return age_ms < self.nonce_lifetime * 1000

    # -- credentials -----------------------------------------------------------------------

    def credentials(
        self, username: str, now: float, algorithm: int = PasswordAlgorithmId.MD5
    ) -> Credentials | None:
        """The `algorithm` key for `username`, or None (unknown user or algorithm, expired or
        forged REST credential); with several REST secrets, the first one's key."""
        found = self._candidates(username, now, algorithm)
        return found[0] if found else None

    def _candidates(self, username: str, now: float, algorithm: int) -> list[Credentials]:
        """Every key `username` may sign with: one for a static user, one per REST secret."""
        if algorithm not in _ALGORITHMS:
            return []
        keys = self._static.get(username)
        if keys is not None:
            return [Credentials(username, username, keys[algorithm])]
        found = []
        user = username.partition(credentials.SEPARATOR)[2]
        for secret in self.secrets:
            password = credentials.password_for(secret, username)
            # verify() checks the "expiry:user" shape and the expiry (RFC-less draft §2.2).
            if not credentials.verify(secret, username, password, now + self.unix_offset):
                return []
            key = long_term_key(username, self.realm, password, algorithm)
            found.append(Credentials(username, user, key))
        return found

    def _lookup(self, message: Message, now: float) -> list[Credentials]:
        """The credentials a `request_error`-clean request names (USERNAME or USERHASH)."""
        username = message.get(AttrType.USERNAME)
        if not isinstance(username, str):
            hashed = message.get(AttrType.USERHASH)
            username = self._by_hash.get(hashed) if isinstance(hashed, bytes) else None
            if username is None:
                return []  # no such static user; REST API users have no USERHASH
        found = self._candidates(username, now, _algorithm(message))
        if found and (found[0].user in self.revoked or username in self.revoked):
            return []  # revoked: 401 as for an unknown user
        if AttrType.PASSWORD_ALGORITHM in message or AttrType.PASSWORD_ALGORITHMS in message:
            return [c._replace(key=Sha256SignedKey(c.key)) for c in found]
        return found

    def check(self, message: Message, client_ip: str, now: float) -> Credentials | AuthError:
        """Authenticate a request (the module docstring gives the order of the checks)."""
        if not signed(message):
            return _UNAUTHENTICATED
        error = request_error(message)
        if error is not None:
            return error
        nonce = message.get(AttrType.NONCE)
        if not isinstance(nonce, str) or not self.nonce_valid(nonce, client_ip, now):
            return _STALE
        sha256 = AttrType.MESSAGE_INTEGRITY_SHA256 in message  # §9.2.4: it wins over MI
        for creds in self._lookup(message, now):
            if sha256:
                valid = check_integrity_sha256(message.raw, creds.key)
            else:
                valid = check_integrity(message.raw, creds.key)
            if valid:
                return creds
        return _UNAUTHENTICATED
