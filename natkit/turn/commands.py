"""What the sans-IO TURN core asks its caller to do (`natkit.turn.relay` documents the order).

NamedTuples: immutable like frozen dataclasses, and several times cheaper to build, which
matters on the per-packet path.
"""

from __future__ import annotations

from typing import NamedTuple

from natkit.addr import Address, FiveTuple

__all__ = ["CloseRelay", "Command", "OpenRelay", "SendToClient", "SendToPeer"]


class SendToClient(NamedTuple):
    data: bytes
    to: FiveTuple


class SendToPeer(NamedTuple):
    relay: Address
    data: bytes
    peer: Address


class OpenRelay(NamedTuple):
    relay: Address
    owner: FiveTuple
    dont_fragment: bool


class CloseRelay(NamedTuple):
    relay: Address


Command = SendToClient | SendToPeer | OpenRelay | CloseRelay
