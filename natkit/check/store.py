"""The check tests natkit is running or keeps the report of. Pure (the clock is an argument).

Bounded on every axis a visitor controls: tests running or kept at once (`max_tests`, then 503),
tests one source (IPv4 address or IPv6 /64) may start per minute (then 429), how long a test may
run (`RUN_TTL`) and how long its report is kept (`report_ttl`). Visitor addresses live only in
the test (its ICE sessions) and go with it; a kept report holds what the report says (the
public address the visitor asked to be shown), nothing else.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from natkit.check.ice import IceSession
from natkit.check.sdp import Offer

__all__ = ["RUN_TTL", "CheckStore", "CheckTest", "Refused"]

RUN_TTL = 60.0
"""Seconds a test may run before natkit forgets it (the page needs ~5)."""
_MAX_SOURCES = 10_000  # rate-limit entries kept; the oldest go first


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class CheckTest:
    id: str
    source: str
    created: float
    sessions: dict[str, IceSession] = field(default_factory=dict)
    offers: dict[str, Offer] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    finished: float | None = None


class CheckStore:
    def __init__(
        self, *, max_tests: int = 256, report_ttl: float = 300.0, tests_per_minute: int = 10
    ) -> None:
        self.max_tests = max_tests
        self.report_ttl = report_ttl
        self.tests_per_minute = tests_per_minute
        self._tests: OrderedDict[str, CheckTest] = OrderedDict()
        self._starts: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tests)

    def create(self, source: str, now: float) -> CheckTest:
        """A new test for `source`; Refused(429) over its rate, Refused(503) when full."""
        starts = self._starts.pop(source, deque())
        while starts and starts[0] <= now - 60.0:
            starts.popleft()
        self._starts[source] = starts  # most recent last
        while len(self._starts) > _MAX_SOURCES:
            self._starts.popitem(last=False)
        if len(starts) >= self.tests_per_minute:
            raise Refused(429, f"at most {self.tests_per_minute} tests a minute; retry later")
        if len(self._tests) >= self.max_tests:
            raise Refused(503, "too many tests at once; retry in a minute")
        starts.append(now)
        test = CheckTest(secrets.token_urlsafe(9), source, now)
        self._tests[test.id] = test
        return test

    def get(self, test_id: str, now: float) -> CheckTest | None:
        test = self._tests.get(test_id) if len(test_id) <= 32 else None
        if test is None or self._expired(test, now):
            return None
        return test

    def finish(self, test: CheckTest, report: dict[str, Any], now: float) -> None:
        test.report, test.finished = report, now
        test.sessions.clear()
        test.offers.clear()

    def _expired(self, test: CheckTest, now: float) -> bool:
        if test.finished is not None:
            return now - test.finished > self.report_ttl
        return now - test.created > RUN_TTL

    def expire(self, now: float) -> list[CheckTest]:
        """Forget every test past its time; returns them (their ICE sessions must go too)."""
        gone = [t for t in self._tests.values() if self._expired(t, now)]
        for test in gone:
            del self._tests[test.id]
        return gone
