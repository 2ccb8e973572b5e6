"""How the NAT picks external ports, from a short burst of fresh bindings; and whether port
prediction could help a peer that cannot be reached through its STUN-learned mapping.

Theory of operation. After the RFC 5780 tests, `probe_allocation` opens `count` fresh UDP
sockets and sends one Binding from each, back to back in order, to the same server address.
Every socket is a new mapping on any NAT (a new inside endpoint for EIM, a new flow for APDM), so
the mapped ports show the allocator: `classify_allocation` (pure) calls it

    preserving   every mapped port is the socket's own port
    sequential   the ports rise by a common step (the stride; a few larger steps that are
                 multiples of it are other traffic taking ports in between)
    random       anything else

The requests leave in socket order, so on a quiet network consecutive mappings are the NAT's
consecutive allocations. A socket that gets no answer (while the server answered the RFC 5780
tests) is counted in `refused`; when the burst ends in at least two refusals in a row the NAT has
stopped making new mappings: `exhausted` (a carrier-grade NAT whose port block ran out; the RFC
5780 tests may already have lost some of their own).

Port prediction (birthday-style punching, as frp's and others' hole punching do) only matters
when the mapping is not endpoint-independent: an EIM NAT reuses the STUN-learned port for every
peer. Behind a symmetric NAT a predictable allocator (sequential or preserving) lets a peer aim
at the next ports; a random one does not.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from natkit.addr import Address
from natkit.diag.classify import Behaviour
from natkit.diag.probes import RttEstimator, StunSocket

__all__ = ["Allocation", "PortSample", "classify_allocation", "probe_allocation"]

Pattern = Literal["preserving", "sequential", "random"]
BURST = 5
MIN_SAMPLES = 3
MAX_GAP = 8
"""The largest step, in strides, still counted as sequential (others' mappings in between)."""


@dataclass(frozen=True, slots=True)
class PortSample:
    """One fresh socket: its own port and the port the server saw (None: no answer)."""

    local: int
    mapped: int | None


@dataclass(frozen=True, slots=True)
class Allocation:
    pattern: Pattern | None
    """None: fewer than MIN_SAMPLES answers."""
    stride: int | None
    """The step between consecutive mappings (sequential only)."""
    samples: tuple[PortSample, ...]
    refused: int
    """Sockets left unanswered (the server itself answers)."""
    exhausted: bool
    """The burst ended in two or more refusals: the NAT makes no new mappings."""
    predictable: bool | None
    """The next mapping's port can be guessed (sequential or preserving)."""
    prediction_helps: bool | None
    """Port prediction could open a direct path the STUN mapping alone cannot: the mapping is
    not endpoint-independent and the ports are predictable."""
    next_port: int | None
    """Sequential: the port the next new mapping should get."""
    explanation: str


def _stride(ports: Sequence[int]) -> int | None:
    steps = [b - a for a, b in itertools.pairwise(ports)]
    if not steps or any(s <= 0 for s in steps):
        return None
    stride = math.gcd(*steps)
    return stride if max(steps) <= MAX_GAP * stride else None


def classify_allocation(samples: Sequence[PortSample], mapping: Behaviour | None) -> Allocation:
    """The pattern of `samples` (in the order the sockets were opened); see the module doc."""
    answered = [s for s in samples if s.mapped is not None]
    refused = sum(1 for s in samples if s.mapped is None)
    last = max((i for i, s in enumerate(samples) if s.mapped is not None), default=-1)
    exhausted = len(samples) - 1 - last >= 2
    pattern: Pattern | None = None
    stride = next_port = None
    ports = [s.mapped for s in answered if s.mapped is not None]
    if len(answered) >= MIN_SAMPLES:
        if all(s.mapped == s.local for s in answered):
            pattern = "preserving"
        elif (stride := _stride(ports)) is not None:
            pattern, next_port = "sequential", ports[-1] + stride
        else:
            pattern = "random"
    predictable = None if pattern is None else pattern != "random"
    helps = None
    if pattern is not None and mapping is not None:
        helps = bool(predictable) and mapping != "endpoint-independent"
    return Allocation(
        pattern, stride, tuple(samples), refused, exhausted, predictable, helps, next_port,
        _explain(pattern, stride, mapping, helps, refused, len(samples)),
    )  # fmt: skip


def _explain(
    pattern: Pattern | None,
    stride: int | None,
    mapping: Behaviour | None,
    helps: bool | None,
    refused: int,
    count: int,
) -> str:
    refusals = (
        f"{refused} of {count} new mappings were refused: the NAT makes no new mappings "
        "(a carrier-grade NAT's port block exhausted?)"
    )
    if pattern is None:
        return refusals if refused else "too few answers to see the port allocation"
    said = {
        "preserving": "the NAT keeps the local port",
        "sequential": f"the NAT allocates ports sequentially (stride {stride})",
        "random": "the NAT allocates random ports",
    }[pattern]
    if mapping == "endpoint-independent":
        said += "; the mapping is endpoint-independent, so no prediction is needed"
    elif helps:
        said += "; the mapping changes per destination, but the next port can be predicted: "
        said += "port-prediction (birthday) hole punching can help"
    elif helps is False:
        said += "; the mapping changes per destination and cannot be predicted"
    return f"{said}; {refusals}" if refused else said


async def probe_allocation(
    target: Address, local_ip: str, deadline: float, count: int = BURST
) -> list[PortSample]:
    """`count` fresh sockets, one Binding each to `target`, answered by `deadline`.

    The requests leave back to back in socket order (each task sends before its first await,
    and tasks start in order), so the NAT makes the mappings in that order; the answers are
    awaited together, so a long RTT costs one RTT, not `count`."""
    sockets: list[StunSocket] = []
    rtt = RttEstimator()
    try:
        for _ in range(count):
            sockets.append(await StunSocket.open(local_ip, rtt))
        found = await asyncio.gather(*(s.binding(target, deadline) for s in sockets))
    finally:
        for s in sockets:
            s.close()
    return [
        PortSample(s.local.port, b.mapped.port if b.mapped else None)
        for s, b in zip(sockets, found, strict=True)
    ]
