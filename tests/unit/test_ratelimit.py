"""The per-source token bucket: time is an argument, so every rule is checked in microseconds."""

from __future__ import annotations

import pytest

from natkit.net.ratelimit import RateLimiter


def test_burst_then_rate() -> None:
    rl = RateLimiter(rate=10, burst=5)
    assert [rl.allow("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert rl.dropped == 2
    assert rl.allow("a", 0.1)  # 0.1 s x 10/s = one token
    assert not rl.allow("a", 0.1)
    assert [rl.allow("a", 10.0) for _ in range(6)] == [True] * 5 + [False]  # refills to burst only


def test_sustained_rate_is_capped() -> None:
    rl = RateLimiter(rate=100, burst=200)
    # a source sending 1000/s for 10 s gets burst + rate x time through
    allowed = sum(rl.allow("flood", i / 1000) for i in range(10_000))
    assert allowed == pytest.approx(200 + 100 * 10, abs=2)


def test_sources_are_independent() -> None:
    rl = RateLimiter(rate=1, burst=1)
    assert rl.allow("a", 0.0) and not rl.allow("a", 0.0)
    assert rl.allow("b", 0.0)


def test_memory_is_bounded_and_lru_evicted() -> None:
    rl = RateLimiter(rate=1, burst=1, max_sources=3)
    for key in "abc":
        rl.allow(key, 0.0)
    rl.allow("a", 0.0)  # a is now the most recently used; b the least
    rl.allow("d", 0.0)
    assert len(rl) == 3 and rl.evicted == 1
    assert not rl.allow("a", 0.0)  # a kept its (empty) bucket
    assert rl.allow("b", 0.0)  # b was forgotten: a fresh bucket


def test_many_sources_stay_within_bound() -> None:
    rl = RateLimiter(rate=1, burst=1, max_sources=1000)
    for i in range(50_000):
        rl.allow(i, i * 1e-6)
    assert len(rl) == 1000


def test_reconfigure_keeps_state_and_shrinks() -> None:
    rl = RateLimiter(rate=10, burst=10)
    for i in range(10):
        rl.allow(i, 0.0)
    rl.reconfigure(rate=1, burst=2, max_sources=4)
    assert len(rl) == 4
    # source 9 had 9 tokens left; they are clamped to the new burst of 2
    assert [rl.allow(9, 0.0) for _ in range(3)] == [True, True, False]
    assert rl.rate == 1.0


@pytest.mark.parametrize("args", [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_rejects_nonsense(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(*args)
