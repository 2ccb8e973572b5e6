"""Why the TURN server refused a request: one `Refusal` per error response, sans-IO.

Theory of operation. The builtin engine's `Relay` answers a refused request with an error
response (a `SendToClient` command). `explain(request, response, ...)` reads both — the response
for the ERROR-CODE and method, the request for who asked and for what (USERNAME, XOR-PEER-ADDRESS)
— and returns a `Refusal`: a reason from the fixed `REASONS` table (the metric label, low
cardinality) and a one-line detail for the log (user names and peer addresses, never a password,
key or nonce). Only error responses are decoded; the caller checks the two type bytes first
(`is_error_response`), so successful traffic pays nothing.

The 401 that answers a request without MESSAGE-INTEGRITY(-SHA256) is the challenge every client
gets first (RFC 8489 §9.2.4): reason ``challenge``, kept apart so dashboards do not count it as
a refusal, and logged at debug only. A 400 of the authenticator (`natkit.turn.auth.request_error`,
which needs only the request) gets its reason and detail from there: ``downgrade`` for a
tampered password-algorithm offer. `RefusalLog` rate-limits the info lines per reason under a
flood (token buckets of `natkit.net.ratelimit`) and says how many it held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from natkit.addr import Address
from natkit.metrics import TURN_METHODS, TURN_REASONS
from natkit.net.demux import is_error_response
from natkit.net.ratelimit import RateLimiter
from natkit.stun.attributes import ErrorCode
from natkit.stun.constants import AttrType, Method
from natkit.stun.errors import StunDecodeError
from natkit.stun.integrity import USERNAME_ANONYMITY_FEATURE, nonce_features
from natkit.stun.message import Message, parse_message
from natkit.turn.allocation import Allocation
from natkit.turn.auth import request_error, signed

__all__ = [
    "METHODS",
    "REASONS",
    "AllocationLog",
    "Refusal",
    "RefusalLog",
    "explain",
    "is_error_response",
    "method_label",
]

METHODS = TURN_METHODS
"""The `method` label: the TURN methods, anything else as ``other``."""

REASONS = TURN_REASONS
"""(reason label, error code) of every refusal counted, in metric order (`natkit.metrics`):
challenge 401 (no MESSAGE-INTEGRITY yet, RFC 8489 §9.2.4), credentials 401 (unknown user, wrong
password, expired or forged REST credential), peer_policy 403 (RFC 8656 §9, turn.peers),
quota 486 (turn.quota.per_user), capacity 508 (turn.quota.total, turn.limits, no free port, no
file descriptor for a relay socket, a reservation), alternate_server 300 and draining 508 (a new
Allocate during a graceful drain, with and without turn.alternate_server), downgrade 400
(PASSWORD-ALGORITHMS stripped or altered, or a PASSWORD-ALGORITHM not offered: RFC 8489 §9.2.4's
bid-down check, `natkit.turn.auth.request_error`), connection_exists 446 (an RFC 6062 Connect
to a peer the TCP allocation already has a connection with), connection_failed 447 (that
Connect's dial from the relayed address failed or timed out). Connect and ConnectionBind count
under method ``other``."""

_METHOD_LABELS: dict[int, str] = {
    Method.ALLOCATE: "allocate",
    Method.REFRESH: "refresh",
    Method.CREATE_PERMISSION: "create_permission",
    Method.CHANNEL_BIND: "channel_bind",
}

# "draining" shares 508 with "capacity": the adapter, which knows it drains, relabels it;
# "downgrade" shares 400 with "bad_request": `auth.request_error` tells them apart.
_SHARED = ("challenge", "draining", "downgrade")
_BY_CODE = {code: reason for reason, code in REASONS if reason not in _SHARED}


class Refusal(NamedTuple):
    code: int
    method: str
    """One of `METHODS`."""
    reason: str
    """One of the reasons of `REASONS`."""
    detail: str
    """What the log says: who and what, no secret."""


def method_label(method: int) -> str:
    return _METHOD_LABELS.get(method, "other")


def explain(
    request: bytes,
    response: bytes,
    client: Address,
    allowed: Callable[[str], bool],
    unix_now: Callable[[], float] = time.time,
    *,
    draining: bool = False,
) -> Refusal | None:
    """The refusal `response` answers `request` with; None if it is not an error response.

    `allowed(ip)` is the peer policy (to name the refused peers of a 403); `draining` tells a
    508 of a graceful drain from one for want of capacity."""
    try:
        answer = parse_message(response)
    except StunDecodeError:
        return None
    error = answer.get(AttrType.ERROR_CODE)
    if not isinstance(error, ErrorCode):
        return None
    method = method_label(answer.method)
    try:
        msg = parse_message(request)
    except StunDecodeError:  # pragma: no cover - the relay answered it, so it parsed
        return Refusal(error.code, method, _BY_CODE.get(error.code, "bad_request"), "")
    who = f"{client} ({_who(msg)})"
    code = error.code
    if code == 401 and not signed(msg):
        return Refusal(code, method, "challenge", f"{who}: challenge (no credentials yet)")
    if code == 401:
        return Refusal(code, method, "credentials", f"{who}: {_credentials(msg, unix_now)}")
    problem = request_error(msg) if code == 400 else None
    if problem is not None:  # what the authenticator refused, named from the request alone
        return Refusal(code, method, problem.reason, f"{who}: {problem.detail}")
    if code == 400 and msg.method in _TCP_400:
        return Refusal(code, method, "bad_request", f"{who}: {_TCP_400[msg.method]}")
    if code == 403:
        peers = [
            v.host
            for t, v in msg.attributes
            if t == AttrType.XOR_PEER_ADDRESS and isinstance(v, Address) and not allowed(v.host)
        ]
        shown = ", ".join(peers[:3]) + (f" and {len(peers) - 3} more" if len(peers) > 3 else "")
        what = f"peer {shown} refused by the peer policy (turn.peers)" if peers else "forbidden"
        return Refusal(code, method, "peer_policy", f"{who}: {what}")
    reason = "draining" if draining and code == 508 else _BY_CODE.get(code, "bad_request")
    return Refusal(code, method, reason, f"{who}: {_DETAILS.get(reason, error.reason)}")


def _who(msg: Message) -> str:
    username, hashed = msg.get(AttrType.USERNAME), msg.get(AttrType.USERHASH)
    if isinstance(username, str):
        return f"user {username!r}"
    if isinstance(hashed, bytes):
        return f"userhash {hashed[:4].hex()}…"  # a pseudonym the client sent in the clear
    return "no user"


def _credentials(msg: Message, unix_now: Callable[[], float]) -> str:
    username = msg.get(AttrType.USERNAME)
    if isinstance(msg.get(AttrType.USERHASH), bytes) and not isinstance(username, str):
        nonce = msg.get(AttrType.NONCE)
        features = nonce_features(nonce) if isinstance(nonce, str) else None
        if not (features or 0) & USERNAME_ANONYMITY_FEATURE:
            return (
                "USERHASH, but this server offers no username anonymity: a REST API credential "
                "(turn.auth.secret) can only be named by USERNAME"
            )
        return "USERHASH of no user in turn.auth.users, or a wrong password"
    if not isinstance(username, str):
        return "credentials refused"
    expiry, sep, _ = username.partition(":")
    if sep and expiry.isdecimal() and int(expiry) < unix_now():
        return "REST API credential expired (mint a new one)"
    return "wrong password or unknown user (or a credential not minted with turn.auth.secret)"


_TCP_400: dict[int, str] = {
    Method.CONNECT: "Connect without a usable XOR-PEER-ADDRESS (RFC 6062 §5.2)",
    Method.CONNECTION_BIND: (
        "ConnectionBind: no pending TCP connection with that CONNECTION-ID, or not on a new "
        "TCP/TLS connection (RFC 6062 §5.4)"
    ),
}

_DETAILS = {
    "bad_request": "malformed request (bad or missing attribute)",
    "unknown_attribute": "unknown comprehension-required attribute",
    "allocation_mismatch": "no allocation for this 5-tuple, or one exists already",
    "stale_nonce": "stale nonce (the client retries with the fresh one)",
    "family_unsupported": "no relay address of the requested family",
    "wrong_user": "the allocation belongs to another user",
    "unsupported_transport": "REQUESTED-TRANSPORT neither UDP nor TCP (RFC 6062)",
    "connection_exists": "a TCP connection to that peer exists already (RFC 6062 §5.2)",
    "connection_failed": "the relay's TCP connection to the peer failed or timed out (RFC 6062)",
    "family_mismatch": "peer address family differs from the allocation's",
    "quota": "allocation quota per user reached (turn.quota.per_user)",
    "alternate_server": "server draining: sent to turn.alternate_server (300 Try Alternate)",
    "draining": "server draining: no new allocations (set turn.alternate_server to redirect)",
    "capacity": (
        "no capacity (turn.quota.total, turn.limits, no free relay port or file descriptor, "
        "or a port reservation; a TCP allocation's tcp_connections_per_allocation)"
    ),
}


class RefusalLog:
    """Logs each refusal at info (challenges at debug), at most `burst` lines at once and
    `rate` a second per reason; the next line that gets through says how many were held back."""

    def __init__(self, logger: logging.Logger, rate: float = 1.0, burst: int = 10) -> None:
        self.logger = logger
        self._limit = RateLimiter(rate, burst, max_sources=len(REASONS))
        self._held: dict[str, int] = {}

    def __call__(self, refusal: Refusal, now: float) -> None:
        level = logging.DEBUG if refusal.reason == "challenge" else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        if not self._limit.allow(refusal.reason, now):
            self._held[refusal.reason] = self._held.get(refusal.reason, 0) + 1
            return
        held = self._held.pop(refusal.reason, 0)
        more = f" ({held} more {refusal.reason} refusals not logged)" if held else ""
        self.logger.log(
            level,
            "TURN %s refused %d (%s): %s%s",
            refusal.method,
            refusal.code,
            refusal.reason,
            refusal.detail,
            more,
            extra={"code": refusal.code, "method": refusal.method, "reason": refusal.reason},
        )


class AllocationLog:
    """One info line per allocation created, expired or deleted, rate-limited like `RefusalLog`
    (per event: an allocation flood cannot flood the log) and saying how many it held back."""

    EVENTS = ("created", "expired", "deleted")

    def __init__(self, logger: logging.Logger, rate: float = 1.0, burst: int = 10) -> None:
        self.logger = logger
        self._limit = RateLimiter(rate, burst, max_sources=len(self.EVENTS))
        self._held: dict[str, int] = {}

    def __call__(self, event: str, alloc: Allocation, now: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        if not self._limit.allow(event, now):
            self._held[event] = self._held.get(event, 0) + 1
            return
        held = self._held.pop(event, 0)
        more = f" ({held} more allocations {event} not logged)" if held else ""
        five = alloc.five_tuple
        client = f"{five.client} over {five.transport} ({'user ' + repr(alloc.user)})"
        when = f", lifetime {max(0, round(alloc.expires - now))} s" if event == "created" else ""
        self.logger.info(
            "TURN allocation %s: relay %s for %s%s%s",
            event,
            alloc.relay,
            client,
            when,
            more,
            extra={"event": event},
        )
