"""An RFC 8489 §9.2 client's side of long-term credentials, on natkit's own codec (no Python
library speaks SHA-256 STUN auth): for the SHA-256 tests, sans-IO and over real sockets.

`Challenge.read` checks a 401/438 as a client must (§9.2.5) and `Challenge.sign` builds the
retry. It holds no tests itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from natkit.stun.attributes import AttrValue, PasswordAlgorithm
from natkit.stun.constants import AttrType, MessageClass, PasswordAlgorithmId
from natkit.stun.integrity import (
    PASSWORD_ALGORITHMS_FEATURE,
    long_term_key,
    nonce_features,
    userhash,
)
from natkit.stun.message import Message
from natkit.turn.auth import OFFER
from tests.unit.test_turn_relay_client import REALM, Client

SHA256 = PasswordAlgorithm(PasswordAlgorithmId.SHA256)
MD5 = PasswordAlgorithm(PasswordAlgorithmId.MD5)


class DowngradeDetected(Exception):
    """§9.2.5: a nonce cookie with the "Password algorithms" bit but no PASSWORD-ALGORITHMS."""


@dataclass
class Challenge:
    """What a 401/438 told the client: realm, nonce and the offered algorithms (None: none)."""

    realm: str
    nonce: str
    offered: tuple[PasswordAlgorithm, ...] | None

    @classmethod
    def read(cls, answer: Message) -> Challenge:
        realm, nonce = answer.get(AttrType.REALM), answer.get(AttrType.NONCE)
        assert isinstance(realm, str) and isinstance(nonce, str), answer
        offered = answer.get(AttrType.PASSWORD_ALGORITHMS)
        features = nonce_features(nonce) or 0
        if features & PASSWORD_ALGORITHMS_FEATURE and offered is None:
            raise DowngradeDetected("the nonce cookie promises PASSWORD-ALGORITHMS; none came")
        assert offered is None or isinstance(offered, tuple)
        return cls(realm, nonce, offered)

    def sign(
        self,
        msg: Message,
        username: str,
        password: str,
        *,
        hashed: bool = False,
        choose: PasswordAlgorithm | None = SHA256,
        send_offer: bool = True,
        md5_too: bool = False,
        fingerprint: bool = False,
    ) -> bytes:
        """`msg` with the credentials attributes and MESSAGE-INTEGRITY-SHA256 (also
        MESSAGE-INTEGRITY with `md5_too`). `choose` None: no PASSWORD-ALGORITHM; `send_offer`
        False: no PASSWORD-ALGORITHMS (what a client fed a stripped challenge might do)."""
        who: tuple[int, AttrValue] = (
            (AttrType.USERHASH, userhash(username, self.realm))
            if hashed
            else (AttrType.USERNAME, username)
        )
        # The order of RFC 8489 Appendix B.1, so the vector can check this builder.
        msg.attributes += [who, (AttrType.NONCE, self.nonce), (AttrType.REALM, self.realm)]
        if send_offer and self.offered is not None:
            msg.attributes.append((AttrType.PASSWORD_ALGORITHMS, self.offered))
        if choose is not None:
            msg.attributes.append((AttrType.PASSWORD_ALGORITHM, choose))
        algorithm = choose.algorithm if choose is not None else PasswordAlgorithmId.MD5
        if algorithm not in (PasswordAlgorithmId.MD5, PasswordAlgorithmId.SHA256):
            algorithm = PasswordAlgorithmId.MD5  # an unknown one: any key (the server refuses)
        key = long_term_key(username, self.realm, password, algorithm)
        return msg.encode(
            integrity_key=key if md5_too else None,
            integrity_sha256_key=key,
            fingerprint=fingerprint,
        )


@dataclass
class Sha256Client(Client):
    """The unit tests' `Client`, signing as an RFC 8489 client that picked SHA-256."""

    hashed: bool = False
    offered: tuple[PasswordAlgorithm, ...] = field(default=OFFER)

    @property
    def key(self) -> bytes:
        return long_term_key(self.username, REALM, self.password, PasswordAlgorithmId.SHA256)

    def build(
        self,
        method: int,
        attrs: list[tuple[int, AttrValue]] | None = None,
        *,
        sign: bool = True,
        tid: bytes | None = None,
    ) -> bytes:
        if not sign:
            return super().build(method, attrs, sign=False, tid=tid)
        msg = Message(method, MessageClass.REQUEST, tid or os.urandom(12), list(attrs or []))
        challenge = Challenge(REALM, self.nonce or "", self.offered)
        return challenge.sign(
            msg, self.username, self.password, hashed=self.hashed, fingerprint=self.fingerprint
        )
