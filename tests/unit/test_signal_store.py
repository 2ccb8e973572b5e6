"""The rendezvous state: codes, one-time slots, TTL, limits and forgetting, on a fake clock."""

from __future__ import annotations

import random

import pytest

from natkit.signal.store import (
    CODE_ALPHABET,
    Conflict,
    Full,
    NotFound,
    RateLimited,
    SignalError,
    SignalStore,
    TooLarge,
    TooManyPairings,
    normalize_code,
)


def make(**kw: object) -> SignalStore:
    return SignalStore(rng=random.Random(7), **kw)  # type: ignore[arg-type]


def test_codes_are_short_unambiguous_and_distinct() -> None:
    store = make()
    codes = {store.create(0.0).code for _ in range(200)}
    assert len(codes) == 200
    assert all(len(c) == 10 and set(c) <= set(CODE_ALPHABET) for c in codes)
    assert not set("01lio") & set(CODE_ALPHABET)


def test_offer_answer_exchange_then_forgotten() -> None:
    store = make()
    code = store.create(0.0).code
    assert store.get(code, "offer", 1.0) is None  # not written yet: the caller may wait
    store.put(code, "offer", "v=0 offer", 1.0)
    assert store.get(code.upper(), "offer", 2.0) == "v=0 offer"  # codes are case-insensitive
    store.put(code, "answer", "v=0 answer", 3.0)
    # The answerer has read the offer: it is dropped, and nobody reads it again.
    with pytest.raises(NotFound):
        store.get(code, "offer", 3.5)
    assert store.get(code, "answer", 4.0) == "v=0 answer"
    # The offerer has read the answer: the pairing is gone.
    assert len(store) == 0
    with pytest.raises(NotFound):
        store.get(code, "answer", 4.1)


def test_slots_are_written_once_and_answer_needs_an_offer() -> None:
    store = make()
    code = store.create(0.0).code
    with pytest.raises(Conflict):
        store.put(code, "answer", "early", 0.1)
    store.put(code, "offer", "o", 0.2)
    with pytest.raises(Conflict):
        store.put(code, "offer", "replaced", 0.3)
    store.put(code, "answer", "a", 0.4)
    with pytest.raises(Conflict):
        store.put(code, "answer", "again", 0.5)


def test_pairing_expires_after_ttl_used_or_not() -> None:
    store = make(ttl=60.0)
    code = store.create(100.0).code
    store.put(code, "offer", "o", 159.9)
    with pytest.raises(NotFound):
        store.get(code, "offer", 160.0)
    assert len(store) == 0
    other = store.create(200.0).code
    assert store.expire(259.0) == 0 and store.exists(other, 259.0)
    assert store.expire(260.0) == 1 and not store.exists(other, 260.0)


def test_unknown_code_is_not_found() -> None:
    store = make()
    with pytest.raises(NotFound) as info:
        store.get("nosuchcode", "offer", 0.0)
    assert info.value.status == 404


def test_size_limit_counts_bytes() -> None:
    store = make(max_sdp_size=10)
    code = store.create(0.0).code
    store.put(code, "offer", "x" * 10, 0.0)
    code2 = store.create(0.0).code
    with pytest.raises(TooLarge) as info:
        store.put(code2, "offer", "é" * 6, 0.0)  # 6 characters, 12 bytes
    assert info.value.status == 413


def test_max_pairings_then_room_again_after_expiry() -> None:
    store = make(max_pairings=2, ttl=10.0)
    store.create(0.0)
    store.create(1.0)
    with pytest.raises(Full) as info:
        store.create(2.0)
    assert info.value.status == 503
    store.create(10.5)  # the first one expired: room again


def test_rate_limit_per_source_refills_with_time() -> None:
    store = make(rate=1.0, burst=3.0)
    for _ in range(3):
        store.check_rate("192.0.2.1", 0.0)
    with pytest.raises(RateLimited) as info:
        store.check_rate("192.0.2.1", 0.0)
    assert info.value.status == 429
    store.check_rate("192.0.2.2", 0.0)  # another source has its own bucket
    store.check_rate("192.0.2.1", 1.0)  # one token back after a second


def test_normalize_code_accepts_what_people_type() -> None:
    assert normalize_code(" AbCde-FGhjk ") == "abcdefghjk"


def test_one_source_owns_at_most_its_share_of_pairings() -> None:
    store = make(max_pairings=10, max_pairings_per_source=3, ttl=60.0)
    codes = [store.create(float(i), "192.0.2.1").code for i in range(3)]
    with pytest.raises(TooManyPairings) as info:
        store.create(5.0, "192.0.2.1")
    assert info.value.status == 429 and info.value.retry_after == 55.0  # the first one's expiry
    store.create(5.0, "192.0.2.2")  # everyone else still pairs
    # A finished exchange gives the place back.
    store.put(codes[0], "offer", "o", 6.0)
    store.put(codes[0], "answer", "a", 6.0)
    assert store.get(codes[0], "answer", 6.0) == "a"
    assert store.owned("192.0.2.1") == 2
    store.create(7.0, "192.0.2.1")
    # So does expiry, also when noticed by a lookup rather than `expire`.
    with pytest.raises(NotFound):
        store.get(codes[1], "offer", 61.5)
    assert store.owned("192.0.2.1") == 2
    assert store.expire(200.0) == 3 and store.owned("192.0.2.1") == 0 and len(store) == 0


def test_full_says_when_a_place_frees_up() -> None:
    store = make(max_pairings=2, ttl=60.0)
    store.create(0.0)
    store.create(10.0)
    with pytest.raises(Full) as info:
        store.create(20.0, "192.0.2.9")
    assert info.value.retry_after == 40.0


def test_a_lone_surrogate_is_refused_not_raised() -> None:
    store = make()
    code = store.create(0.0).code
    with pytest.raises(SignalError) as info:
        store.put(code, "offer", "v=0 \ud800", 0.0)
    assert info.value.status == 400 and "UTF-8" in str(info.value)
    store.put(code, "offer", "v=0", 0.0)  # the slot was not used up
