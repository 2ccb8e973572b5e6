"""`natkit p2p --map-port`: map the ICE sockets' ports through the gateway and offer the mapped
addresses as server-reflexive candidates.

aioice binds one UDP socket per host address while gathering; a PCP / NAT-PMP / UPnP mapping of
that socket's port (`natkit.diag.portmap`, best protocol first) makes it reachable from any peer
even behind a symmetric NAT. The mapped address is added to the gathered candidates as "srflx"
with the host candidate as its base (RFC 8445 §5.1.1.2: what the outside sees of that socket), so
aiortc puts it in the SDP; checks arriving there reach the host socket, which aioice answers.
The hook is a context variable like the host-address pin in `session`: concurrent sessions in one
process each map their own. Mappings are deleted (lifetime 0) when the session closes.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import aioice.ice
from aioice.candidate import Candidate, candidate_foundation, candidate_priority

from natkit.addr import Address
from natkit.diag.portmap import MappedPort, Mapper, detect

__all__ = ["PortMapper", "mapping_ports"]

LIFETIME = 600
"""Seconds asked for; longer than a test session, and deleted at its end anyway."""


class PortMapper:
    """The mappings of one session."""

    def __init__(self, lifetime: int = LIFETIME, timeout: float = 1.0) -> None:
        self.lifetime, self.timeout = lifetime, timeout
        self.made: list[tuple[Mapper, MappedPort]] = []
        self.notes: list[str] = []

    async def extra_candidates(self, local: list[Candidate]) -> list[Candidate]:
        probe = await detect()
        if not probe.offered or probe.local is None:
            self.notes.append("the gateway offers no port-mapping protocol")
            return []
        out = []
        for cand in local:
            if cand.type != "host" or cand.transport.lower() != "udp" or cand.host != probe.local:
                continue
            mapper = Mapper(probe, probe.offered[0], cand.port)
            record = MappedPort(probe.offered[0], Address(cand.host, cand.port))
            try:
                external, record.lifetime = await mapper.make(self.lifetime, self.timeout)
            except Exception as err:
                self.notes.append(f"mapping {cand.host}:{cand.port} failed: {err}")
                continue
            self.made.append((mapper, record))
            if external is None:
                continue
            record.external = external
            out.append(
                Candidate(
                    foundation=candidate_foundation("srflx", "udp", cand.host),
                    component=cand.component,
                    transport=cand.transport,
                    priority=candidate_priority(cand.component, "srflx"),
                    host=external.host,
                    port=external.port,
                    type="srflx",
                    related_address=cand.host,
                    related_port=cand.port,
                )
            )
        return out

    def close(self) -> None:
        """Delete every mapping (blocking: also runs while the loop is being cancelled)."""
        for mapper, record in self.made:
            try:
                mapper.request(0, self.timeout)
                record.deleted = True
            except Exception as err:
                record.error = f"deleting failed: {err}"

    def to_json(self) -> list[dict[str, Any]]:
        return [record.to_dict() for _, record in self.made]


_MAPPER: contextvars.ContextVar[PortMapper | None] = contextvars.ContextVar(
    "natkit_p2p_port_mapper", default=None
)
_original_gather = aioice.ice.Connection.gather_candidates


async def _gather_and_map(self: aioice.ice.Connection) -> None:
    fresh = not self._local_candidates_start
    await _original_gather(self)
    mapper = _MAPPER.get()
    if fresh and mapper is not None:
        self._local_candidates += await mapper.extra_candidates(list(self._local_candidates))


@contextlib.contextmanager
def mapping_ports(mapper: PortMapper | None) -> Iterator[None]:
    """While the block runs, gathering in this context also maps ports through `mapper`."""
    aioice.ice.Connection.gather_candidates = _gather_and_map  # type: ignore[method-assign]
    token = _MAPPER.set(mapper)
    try:
        yield
    finally:
        _MAPPER.reset(token)
