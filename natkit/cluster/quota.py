"""Fleet-wide TURN quotas behind the relay's synchronous quota interface, sans-IO.

Theory of operation. The relay core asks its quota once per Allocate, synchronously
(`natkit.turn.shared_quota.Quota`: ``acquire(user) -> 0 | code``, ``release(user)``), and a
request path must never wait on the network there. So the decision is taken *before* the
relay sees the Allocate: the serve layer's gate (`natkit.serve.clustered`) awaits the fleet's
answer (`natkit.cluster.agent.ClusterAgent.acquire`, bounded by ``cluster.timeout``), hands it
to this object (`grant` the units Redis counted, or `refuse` with its code), lets the relay run
the Allocate, then `settle`s: units the relay did not take (it refused the request for another
reason) go back to Redis.

Without a decision (Redis unreachable, or slower than the budget) `acquire` applies the fail
policy: ``fail_open`` counts against this member's own allocations with the configured limits
(local quotas, as a server alone), else 508. Either way `held` is this member's exact truth,
written back to Redis on every resync (`natkit.cluster.scripts.SYNC`).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ClusterQuota"]


class ClusterQuota:
    """One member's allocations per user, and the fleet's verdicts waiting to be used."""

    def __init__(
        self,
        per_user: int,
        total: int,
        fail_open: bool,
        on_release: Callable[[str, int], None] | None = None,
    ) -> None:
        self.per_user, self.total, self.fail_open = per_user, total, fail_open
        self.on_release = on_release
        """Called with (user, units) when the relay gives allocations back: Redis is told."""
        self.held: dict[str, int] = {}
        self.active = 0
        self.local_admitted = 0
        """Allocations admitted without the fleet's word (fail-open), for the metrics."""
        self.local_refused = 0
        """Allocations refused for want of the fleet's word (fail-closed or local limits)."""
        self._tickets: dict[str, int] = {}
        self._verdicts: dict[str, int] = {}

    # -- the gate's side -------------------------------------------------------------------

    def grant(self, user: str, units: int) -> None:
        """Redis counted `units` allocations of `user` for this member: the next acquires."""
        self._tickets[user] = self._tickets.get(user, 0) + units

    def refuse(self, user: str, code: int) -> None:
        """The fleet refused `user`'s next Allocate with `code` (486 or 508)."""
        self._verdicts[user] = code

    def settle(self, user: str) -> int:
        """The Allocate is done: forget its verdict; the granted units the relay did not take
        (for the caller to give back to Redis)."""
        self._verdicts.pop(user, None)
        return self._tickets.pop(user, 0)

    # -- the relay's side (natkit.turn.shared_quota.Quota) ---------------------------------

    def acquire(self, user: str) -> int:
        tickets = self._tickets.get(user, 0)
        if tickets:
            if tickets > 1:
                self._tickets[user] = tickets - 1
            else:
                del self._tickets[user]
            self._count(user, 1)
            return 0
        code = self._verdicts.get(user, 0)
        if code:
            return code
        return self._local(user)

    def release(self, user: str) -> None:
        if self.held.get(user, 0) <= 0:
            return
        self._count(user, -1)
        if self.on_release is not None:
            self.on_release(user, 1)

    # -- state -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, int]:
        """What Redis must count for this member: what it holds and the grants in flight."""
        counts = dict(self.held)
        for user, units in self._tickets.items():
            counts[user] = counts.get(user, 0) + units
        return counts

    def _local(self, user: str) -> int:
        """The fail policy, without the fleet's word (module docstring)."""
        if not self.fail_open:
            self.local_refused += 1
            return 508
        if self.held.get(user, 0) >= self.per_user:
            self.local_refused += 1
            return 486
        if self.active >= self.total:
            self.local_refused += 1
            return 508
        self.local_admitted += 1
        self._count(user, 1)
        return 0

    def _count(self, user: str, delta: int) -> None:
        left = self.held.get(user, 0) + delta
        if left > 0:
            self.held[user] = left
        else:
            self.held.pop(user, None)
        self.active = max(0, self.active + delta)
