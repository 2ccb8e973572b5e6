"""aioice's TURN client, following 300 Try Alternate (RFC 8489 §10, RFC 8656 §7.2 / §6.2).

A node of a natkit fleet that is full or draining answers a new Allocate with 300 and
ALTERNATE-SERVER (plus ALTERNATE-DOMAIN over TLS, the name of the next server's certificate).
aioice raises `TransactionFailed` on it and its codec skips both
attributes; `create_turn_endpoint` teaches the codec the two attributes and makes the
Allocate again at the alternate server, as RFC 8489 §10 tells a client to, at most
`MAX_REDIRECTS` times and never back to a server it already tried (a loop between two full
nodes would otherwise never end).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from aioice import stun, turn

__all__ = ["MAX_REDIRECTS", "Redirected", "create_turn_endpoint", "following_redirects"]

MAX_REDIRECTS = 2
_ALTERNATE_SERVER, _ALTERNATE_DOMAIN = 0x8023, 0x8003  # RFC 8489 §14.15, §14.16

P = TypeVar("P", bound=asyncio.DatagramProtocol)

# aioice's codec lacks both (idempotent, and a no-op once aioice knows them itself).
for _entry in (
    (_ALTERNATE_SERVER, "ALTERNATE-SERVER", stun.pack_address, stun.unpack_address),
    (_ALTERNATE_DOMAIN, "ALTERNATE-DOMAIN", stun.pack_string, stun.unpack_string),
):
    if _entry[1] not in stun.ATTRIBUTES_BY_NAME:
        stun.ATTRIBUTES_BY_TYPE.setdefault(_entry[0], _entry)
        stun.ATTRIBUTES_BY_NAME[_entry[1]] = _entry


class Redirected(Exception):
    """Every server tried answered 300 (or redirected back): the servers it named."""

    def __init__(self, tried: list[tuple[str, int]]) -> None:
        super().__init__("TURN redirect loop or too many redirects: " + ", ".join(
            f"{h}:{p}" for h, p in tried))  # fmt: skip
        self.tried = tried


async def create_turn_endpoint(
    protocol_factory: Callable[[], P],
    server_addr: tuple[str, int],
    username: str | None,
    password: str | None,
    *,
    transport: str = "udp",
    ssl: ssl_module.SSLContext | None = None,
    on_redirect: Callable[[tuple[str, int], str | None], None] | None = None,
    _create: Any = None,
    **kwargs: Any,
) -> tuple[turn.TurnTransport, P]:
    """`aioice.turn.create_turn_endpoint`, following 300 ALTERNATE-SERVER (`_create` is the one
    it calls: aioice's own, kept aside by `following_redirects`). `on_redirect(address,
    domain)` hears of each redirect, with ALTERNATE-DOMAIN when the server sent one (over TLS
    the name the next server's certificate is for; asyncio checks the certificate against the
    address connected to, so a caller verifying names needs a context that expects it)."""
    create = _create or turn.create_turn_endpoint
    tried = [server_addr]
    target, domain = server_addr, None
    while True:
        try:
            result: tuple[turn.TurnTransport, P] = await create(
                protocol_factory, target, username, password, ssl=ssl,
                transport=transport, **kwargs,
            )  # fmt: skip
            return result
        except stun.TransactionFailed as err:
            response = err.response
            alternate = response.attributes.get("ALTERNATE-SERVER")
            if response.error_code != 300 or not isinstance(alternate, tuple):
                raise
            target = (str(alternate[0]), int(alternate[1]))
            raw_domain = response.attributes.get("ALTERNATE-DOMAIN")
            domain = raw_domain if isinstance(raw_domain, str) else None
            if target in tried or len(tried) > MAX_REDIRECTS:
                raise Redirected([*tried, target]) from None
            tried.append(target)
            if on_redirect is not None:
                on_redirect(target, domain)


@contextlib.contextmanager
def following_redirects() -> Iterator[None]:
    """Within the block every TURN allocation aioice makes follows 300 Try Alternate: also
    those of its ICE agent (`aioice.Connection`), hence aiortc's. It swaps aioice's module
    function, so it is for one event loop at a time (a test, a diagnosis), not a library
    default."""
    original = turn.create_turn_endpoint

    async def following(
        protocol_factory: Any, server_addr: tuple[str, int], username: str | None,
        password: str | None, **kwargs: Any,
    ) -> Any:  # fmt: skip
        return await create_turn_endpoint(protocol_factory, server_addr, username, password,
                                          _create=original, **kwargs)  # fmt: skip

    turn.create_turn_endpoint = following  # type: ignore[assignment]
    try:
        yield
    finally:
        turn.create_turn_endpoint = original
