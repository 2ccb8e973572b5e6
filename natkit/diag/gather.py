"""What a WebRTC/ICE agent on this machine would offer: aioice's candidates, and local interfaces.

Candidates come from aioice (code natkit did not write, as a browser's agent would): host,
server-reflexive (aioice asks one STUN server, IPv4 only) and relayed (one TURN server). aioice
retransmits for ~30 s; here the gathering is cut at the budget and whatever was gathered by then
is reported, with a note.

Interfaces come from `natkit.hostaddr` (re-exported here): VPN/tunnel interfaces are flagged,
since traffic to the STUN server may leave through them and the peer then sees the VPN's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

from natkit.addr import Candidate
from natkit.hostaddr import Interface, default_route_interfaces, interfaces

__all__ = [
    "Candidate",
    "GatherResult",
    "Interface",
    "default_route_interfaces",
    "gather",
    "interfaces",
]


@dataclass(slots=True)
class GatherResult:
    candidates: list[Candidate] = field(default_factory=list)
    stun_server: str | None = None
    turn_server: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def gather(
    timeout: float,
    stun: tuple[str, int] | None = None,
    turn: tuple[str, int] | None = None,
    turn_username: str | None = None,
    turn_password: str | None = None,
    turn_transport: str = "udp",
    turn_ssl: bool = False,
) -> GatherResult:
    """Gather ICE candidates with aioice within `timeout` seconds; never raises."""
    from aioice import Connection  # imported late: the CLI's start-up stays fast

    result = GatherResult(
        stun_server=f"{stun[0]}:{stun[1]}" if stun else None,
        turn_server=f"{turn[0]}:{turn[1]}" if turn else None,
    )
    try:
        conn = Connection(
            ice_controlling=True,
            stun_server=stun,
            turn_server=turn,
            turn_username=turn_username,
            turn_password=turn_password,
            turn_transport=turn_transport,
            turn_ssl=turn_ssl,
        )
    except Exception as err:
        result.error = f"aioice: {err}"
        return result
    try:
        try:
            await asyncio.wait_for(conn.gather_candidates(), timeout)
            found = list(conn.local_candidates)
        except TimeoutError:
            # Only the host candidates are sure to exist by now; the servers did not answer.
            protocols = getattr(conn, "_protocols", [])
            found = [p.local_candidate for p in protocols if hasattr(p, "local_candidate")]
            result.error = f"gathering not finished within {timeout:.1f} s (servers silent?)"
        except Exception as err:  # aioice raises plain exceptions for TURN failures
            result.error = f"aioice: {type(err).__name__}: {err}"
            found = list(conn.local_candidates)
        result.candidates = [Candidate.from_aioice(c) for c in found]
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 0.5)
    return result
