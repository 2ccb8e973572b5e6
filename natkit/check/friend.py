"""natkit check's "test with a friend": two browsers try a real data channel, direct and via TURN,
through a pairing on the check page's own origin (no CORS needed). Pure routes over the signal
rendezvous' store (`natkit.signal.store.SignalStore`: bounded pairings per source and in total,
a request rate per source, one write per slot, codes that die after `ttl`).

A friend code is two pairing codes, ``DIRECT.RELAY``: one offer/answer exchange per attempt.

    POST /check/api/pair                    201 {code, stun, turn}: the host's side
    GET  /check/api/pair/CODE               200 {stun, turn}: the friend's side (a live code)
    PUT  /check/api/pair/CODE/MODE/SLOT     {sdp} → 200 {}   (MODE direct|relay, SLOT offer|answer)
    GET  /check/api/pair/CODE/MODE/SLOT     200 {sdp}: null while not written (the page polls)

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


class FriendRoutes:
    def __init__(self, store: SignalStore, servers: Servers) -> None:
        self.store = store
        self.servers = servers

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


def _sdp(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError as err:
        raise HttpError(400, f"body is not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sdp"), str):
        raise HttpError(400, 'body must be {"sdp": "..."}')
    sdp: str = data["sdp"]
    return sdp
