"""The rendezvous state, sans-IO: pairing codes and their offer/answer slots.

Theory of operation. A peer that wants to be called asks for a pairing (`create`) and gets a short
random code; it tells the code to the other peer out of band (reads it aloud, pastes it in chat).
Each pairing has two slots, ``offer`` and ``answer``, each written once (`put`) and read by the
other side (`get`). The store is deliberately forgetful, because SDP carries the peers' addresses:

- a pairing lives `ttl` seconds from its creation, then it is gone (404), used or not;
- when the answerer writes the answer it has read the offer, so the offer is dropped then;
- when the offerer has read the answer the exchange is over and the whole pairing is dropped.

Limits keep a public instance cheap to run: descriptions larger than `max_sdp_size` are refused
(413), each source IP has a token bucket of requests (429), at most `max_pairings` pairings exist
at once (503) and one source owns at most `max_pairings_per_source` of them (429): without that
one address fills the table at the request rate and everyone else gets 503 for a whole `ttl`.
Time is always an argument (`now`, monotonic seconds) and randomness comes from an injected
`random.Random`, so every rule is tested without sleeping.

The store never logs anything: what it holds is exactly what must not end up in a log file.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from typing import Literal

from natkit.net.ratelimit import RateLimiter

__all__ = [
    "CODE_ALPHABET",
    "Conflict",
    "Full",
    "NotFound",
    "Pairing",
    "RateLimited",
    "SignalError",
    "SignalStore",
    "Slot",
    "TooLarge",
    "TooManyPairings",
    "normalize_code",
]

Slot = Literal["offer", "answer"]

# No 0/o, 1/l/i: codes are read aloud and typed by people. 31 symbols, 10 of them: ~49 bits, and
# the per-source rate limit keeps guessing a live code out of reach within its `ttl`.
CODE_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
CODE_LENGTH = 10


class SignalError(Exception):
    """A request the rendezvous refuses; `status` is the HTTP status it is answered with.

    `retry_after` (seconds) is set when waiting helps: the HTTP answer carries it as Retry-After.
    """

    status = 400

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(SignalError):
    """Unknown, expired or already used pairing code."""

    status = 404


class Conflict(SignalError):
    """The slot was already written: each description is written once."""

    status = 409


class TooLarge(SignalError):
    """The description is larger than `max_sdp_size`."""

    status = 413


class RateLimited(SignalError):
    """The source sent more requests than its bucket allows."""

    status = 429


class TooManyPairings(SignalError):
    """The source already owns `max_pairings_per_source` live pairings."""

    status = 429


class Full(SignalError):
    """`max_pairings` pairings already exist."""

    status = 503


def normalize_code(code: str) -> str:
    """Codes are case-insensitive and may be typed with dashes or spaces in between."""
    return "".join(ch for ch in code.lower() if ch not in "- ")


@dataclass(slots=True)
class Pairing:
    """One pairing: its code, when it dies and the two descriptions (None until written)."""

    code: str
    expires: float
    owner: str | None = None
    """The source that created it (its live pairings are capped), None when not attributed."""
    slots: dict[str, str | None] = field(default_factory=lambda: {"offer": None, "answer": None})
    used: set[str] = field(default_factory=set)
    """Slots written at least once (a slot emptied after use stays written: no rewrite)."""


class SignalStore:
    """Pairings in memory; every method takes the caller's `now` (monotonic seconds)."""

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        max_sdp_size: int = 16384,
        max_pairings: int = 1000,
        max_pairings_per_source: int = 20,
        rate: float = 20.0,
        burst: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        if ttl <= 0 or min(max_sdp_size, max_pairings, max_pairings_per_source) < 1:
            raise ValueError("ttl must be > 0; max_sdp_size and the max_pairings caps >= 1")
        self.ttl = ttl
        self.max_sdp_size = max_sdp_size
        self.max_pairings = max_pairings
        self.max_pairings_per_source = max_pairings_per_source
        self._limiter = RateLimiter(rate, burst, max_sources=10_000)
        # Codes must be unguessable in production; tests inject a seeded Random.
        self._rng = rng or secrets.SystemRandom()
        # Insertion order is expiry order (one `ttl`, monotonic `now`): the first entry dies first.
        self._pairings: dict[str, Pairing] = {}
        self._owned: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pairings)

    def check_rate(self, source: str, now: float) -> None:
        """Spend one of `source`'s tokens; RateLimited when it has none left."""
        if not self._limiter.allow(source, now):
            raise RateLimited("too many requests from this address; retry later")

    def owned(self, source: str) -> int:
        """How many live pairings `source` created (expired ones count until `expire`)."""
        return self._owned.get(source, 0)

    def create(self, now: float, source: str | None = None) -> Pairing:
        """A new pairing with a fresh code, alive until `now + ttl`, owned by `source`."""
        self.expire(now)
        if source is not None and self.owned(source) >= self.max_pairings_per_source:
            raise TooManyPairings(
                f"too many pairings from this address (at most {self.max_pairings_per_source} "
                "at once); finish or let one expire",
                retry_after=self._first_expiry(now, source),
            )
        if len(self._pairings) >= self.max_pairings:
            raise Full(
                "too many pairings in progress; retry later", retry_after=self._first_expiry(now)
            )
        while True:  # a collision needs ~2^24 live pairings; the loop practically runs once
            code = "".join(self._rng.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            if code not in self._pairings:
                break
        pairing = Pairing(code, now + self.ttl, owner=source)
        self._pairings[code] = pairing
        if source is not None:
            self._owned[source] = self.owned(source) + 1
        return pairing

    def put(self, code: str, slot: Slot, sdp: str, now: float) -> None:
        """Write `slot` once. Writing the answer drops the offer (the answerer has read it)."""
        try:
            size = len(sdp.encode())
        except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in JSON) is no UTF-8 text
            raise SignalError("sdp is not valid UTF-8 text (lone surrogate)") from None
        if size > self.max_sdp_size:
            raise TooLarge(f"description larger than {self.max_sdp_size} bytes")
        pairing = self._live(code, now)
        if slot in pairing.used:
            raise Conflict(f"the {slot} of this pairing was already sent")
        if slot == "answer" and "offer" not in pairing.used:
            raise Conflict("no offer to answer yet")
        pairing.slots[slot] = sdp
        pairing.used.add(slot)
        if slot == "answer":
            pairing.slots["offer"] = None

    def get(self, code: str, slot: Slot, now: float) -> str | None:
        """The description in `slot`, or None while it is not written yet (the caller may wait).

        Reading the answer ends the exchange: the pairing is forgotten right away.
        """
        pairing = self._live(code, now)
        sdp = pairing.slots[slot]
        if sdp is None and slot in pairing.used:
            # The offer was read and answered already: a third party reading late gets nothing.
            raise NotFound("unknown or expired pairing code")
        if sdp is not None and slot == "answer":
            self._drop(pairing)
        return sdp

    def exists(self, code: str, now: float) -> bool:
        """Whether `code` names a live pairing (a waiting reader re-checks this)."""
        try:
            self._live(code, now)
        except NotFound:
            return False
        return True

    def expire(self, now: float) -> int:
        """Forget every pairing past its TTL; returns how many were dropped."""
        dropped = 0
        while self._pairings:
            first = next(iter(self._pairings.values()))
            if first.expires > now:
                break  # the rest were created later and die later
            self._drop(first)
            dropped += 1
        return dropped

    def _first_expiry(self, now: float, source: str | None = None) -> float:
        """Seconds until the first pairing (of `source`, if given) expires and frees a place."""
        for pairing in self._pairings.values():
            if source is None or pairing.owner == source:
                return max(0.0, pairing.expires - now)
        return self.ttl

    def _drop(self, pairing: Pairing) -> None:
        # The only place that forgets a pairing, so the per-source counts cannot drift.
        del self._pairings[pairing.code]
        if pairing.owner is not None:
            left = self._owned[pairing.owner] - 1
            if left:
                self._owned[pairing.owner] = left
            else:
                del self._owned[pairing.owner]

    def _live(self, code: str, now: float) -> Pairing:
        pairing = self._pairings.get(normalize_code(code))
        if pairing is None:
            raise NotFound("unknown or expired pairing code")
        if pairing.expires <= now:
            self._drop(pairing)
            raise NotFound("unknown or expired pairing code")
        return pairing
