"""Binding lifetime (RFC 5780 §4.6): how long the NAT keeps an idle UDP mapping.

For each wait T of a schedule, a socket X opens a mapping with one Binding to the server and then
stays silent; after T a second socket Y asks the server (RESPONSE-PORT = X's mapped port, RFC 5780
§7.5) to answer to X's mapping. If X receives the answer, the mapping outlived T. All waits run
in parallel from t=0, so the test takes as long as the longest wait, not their sum. The result is
a bracket: alive after `alive_s`, gone after `expired_s`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from natkit.addr import Address
from natkit.diag.probes import RttEstimator, StunSocket

__all__ = ["SCHEDULE", "LifetimeResult", "measure_lifetime"]

SCHEDULE = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0)


@dataclass(slots=True)
class LifetimeResult:
    alive_s: float | None = None
    """Longest wait after which the mapping still received."""
    expired_s: float | None = None
    """Shortest wait after which it no longer did (None: never seen expiring)."""
    samples: dict[float, bool] = field(default_factory=dict)
    error: str | None = None

    def summary(self) -> str:
        if self.error:
            return f"binding lifetime unknown: {self.error}"
        if self.expired_s is None:
            return f"binding lifetime > {self.alive_s:g} s (never expired in the test)"
        low = f"{self.alive_s:g}" if self.alive_s is not None else "0"
        return f"binding lifetime between {low} and {self.expired_s:g} s"


async def _one(server: Address, local_ip: str, wait: float, rtt: RttEstimator) -> bool | str:
    x = await StunSocket.open(local_ip, rtt)
    y = await StunSocket.open(local_ip, rtt)
    try:
        first = await x.binding(server, time.monotonic() + 2.0)
        if not first.ok or first.mapped is None:
            return first.error or "no answer to the opening Binding"
        await asyncio.sleep(wait)
        got = await y.exchange(
            server,
            time.monotonic() + rtt.quiet(),
            expect_on=x,
            response_port=first.mapped.port,
        )
        if isinstance(got, tuple):
            return True
        # No answer at X: expired, unless the server refused RESPONSE-PORT (it answers Y).
        check = await y.binding(server, time.monotonic() + rtt.quiet())
        if check.status == "error":
            return f"the server refuses RESPONSE-PORT ({check.error})"
        return False
    finally:
        x.close()
        y.close()


async def measure_lifetime(
    server: Address, local_ip: str, max_wait: float = 120.0
) -> LifetimeResult:
    """Bracket the idle mapping lifetime towards `server` with waits up to `max_wait` s."""
    waits = [w for w in SCHEDULE if w <= max_wait] or [max_wait]
    rtt = RttEstimator()
    outcomes = await asyncio.gather(
        *(_one(server, local_ip, w, rtt) for w in waits), return_exceptions=True
    )
    result = LifetimeResult()
    for wait, outcome in zip(waits, outcomes, strict=True):
        if isinstance(outcome, bool):
            result.samples[wait] = outcome
        elif result.error is None:
            result.error = str(outcome)
    if not result.samples:
        result.error = result.error or "no sample"
        return result
    result.error = None
    alive = [w for w, ok in result.samples.items() if ok]
    dead = [w for w, ok in result.samples.items() if not ok]
    result.alive_s = max(alive) if alive else None
    result.expired_s = min(dead) if dead else None
    return result
