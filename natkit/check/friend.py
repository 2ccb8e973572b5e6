"""natkit check's "test with a friend": two browsers try a real data channel, direct and via TURN,
through a pairing on the check page's own origin (no CORS needed). Pure routes over the signal
rendezvous' store (`natkit.signal.store.SignalStore`: bounded pairings per source and in total,
a request rate per source, one write per slot, codes that die after `ttl`).

A friend code is two pairing codes, ``DIRECT.RELAY``: one offer/answer exchange per attempt.

    POST /check/api/pair                    201 {code, stun, turn}: the host's side
    GET  /check/api/pair/CODE               200 {stun, turn}: the friend's side (a live code)
    PUT  /check/api/pair/CODE/MODE/SLOT     {sdp} → 200 {}   (MODE direct|relay, SLOT offer|answer)
    GET  /check/api/pair/CODE/MODE/SLOT     200 {sdp}: null while not written (the page polls)
    PUT  /check/api/pair/CODE/nat/ROLE      {report: ID} → 200 {}  (ROLE host|friend: the id of
                                            that side's own check report, kept by natkit)
    GET  /check/api/pair/CODE/nat           200 {host, friend, predicted_direct}: the two NAT
                                            types and what diagnose's table predicts for them

The page makes the direct attempt with natkit's STUN only, the relay attempt relay-only with
TURN credentials minted for it: the same two runs as ``natkit p2p`` in the NAT matrix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from natkit.check.http import HttpError, Request
from natkit.signal.store import SignalError, SignalStore, Slot

__all__ = ["FriendRoutes"]

_CODE = re.compile(r"[a-z0-9]{4,16}\.[a-z0-9]{4,16}")
_MODES = ("direct", "relay")

Servers = Callable[[str, str], dict[str, Any]]
"""(user, local host) → {"stun": [...], "turn": [...]} for the page."""
NatOf = Callable[[str, float], str | None]
"""(report id, now) → the nat_type of that kept check report, None if there is none."""


class FriendRoutes:
    def __init__(self, store: SignalStore, servers: Servers, nat_of: NatOf) -> None:
        self.store = store
        self.servers = servers
        self.nat_of = nat_of
        self._nats: dict[str, tuple[float, dict[str, str]]] = {}
        """NAT types per friend code, until the store's ttl after the code was first named
        (a pairing is dropped once answered; its outcome is asked for later)."""

    def route(self, req: Request, rest: list[str], now: float) -> tuple[int, Any]:
        """`rest` is the path after /check/api/pair; HttpError for the caller to answer."""
        try:
            self.store.check_rate(req.source, now)
            return self._route(req, rest, now)
        except SignalError as err:
            raise HttpError(err.status, str(err)) from None

    def _route(self, req: Request, rest: list[str], now: float) -> tuple[int, Any]:
        if not rest:
            if req.method != "POST":
                raise HttpError(405, "use POST")
            direct = self.store.create(now, req.source)
            relay = self.store.create(now, req.source)
            code = f"{direct.code}.{relay.code}"
            return 201, {"code": code, **self.servers(f"friend-{direct.code}", req.local.host)}
        code = rest[0]
        if not _CODE.fullmatch(code):
            raise HttpError(404, "no such pairing code")
        codes = dict(zip(_MODES, code.split("."), strict=True))
        if len(rest) == 1:
            if req.method != "GET":
                raise HttpError(405, "use GET")
            if not all(self.store.exists(c, now) for c in codes.values()):
                raise HttpError(404, "unknown or expired pairing code")
            return 200, self.servers(f"friend-{codes['direct']}", req.local.host)
        if rest[1] == "nat":
            return self._nat(req, codes, code, rest[2:], now)
        if len(rest) != 3 or rest[1] not in _MODES or rest[2] not in ("offer", "answer"):
            raise HttpError(404, "no such route")
        slot: Slot = "offer" if rest[2] == "offer" else "answer"
        pairing = codes[rest[1]]
        if req.method == "PUT":
            self.store.put(pairing, slot, _sdp(req.body), now)
            return 200, {}
        if req.method == "GET":
            return 200, {"sdp": self.store.get(pairing, slot, now)}
        raise HttpError(405, "use PUT or GET")

    def _nat(
        self, req: Request, codes: dict[str, str], code: str, rest: list[str], now: float
    ) -> tuple[int, Any]:
        for gone in [c for c, (expires, _) in self._nats.items() if expires < now]:
            del self._nats[gone]
        if code not in self._nats:
            # Only a live pairing gets an entry, so entries are bounded like pairings are.
            if not self.store.exists(codes["direct"], now):
                raise HttpError(404, "unknown or expired pairing code")
            self._nats[code] = (now + self.store.ttl, {})
        nats = self._nats[code][1]
        if rest and rest[0] in ("host", "friend") and len(rest) == 1:
            if req.method != "PUT":
                raise HttpError(405, "use PUT")
            report = _json(req.body).get("report")
            nat = self.nat_of(report, now) if isinstance(report, str) else None
            if nat is None:
                raise HttpError(400, 'body must be {"report": ID} of a kept check report')
            nats[rest[0]] = nat
            return 200, {}
        if rest or req.method != "GET":
            raise HttpError(404, "no such route")
        from natkit.p2p.matrix import predict_direct

        host, friend = nats.get("host"), nats.get("friend")
        return 200, {
            "host": host,
            "friend": friend,
            "predicted_direct": predict_direct(host, friend),
        }


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as err:
        raise HttpError(400, f"body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "body must be a JSON object")
    return data


def _sdp(body: bytes) -> str:
    data = _json(body)
    if not isinstance(data.get("sdp"), str):
        raise HttpError(400, 'body must be {"sdp": "..."}')
    sdp: str = data["sdp"]
    return sdp
