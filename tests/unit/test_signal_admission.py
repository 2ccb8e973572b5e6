"""Connection admission (per-source and global caps, idle eviction), source keys, log limiting."""

from __future__ import annotations

import logging

import pytest

from natkit.admission import ConnectionTable, LogLimiter, source_key


def test_a_source_over_its_cap_is_refused_429_others_still_admitted() -> None:
    table = ConnectionTable(max_connections=10, max_per_source=2)
    assert table.admit("a1", "192.0.2.1").status == 0
    assert table.admit("a2", "192.0.2.1").status == 0
    verdict = table.admit("a3", "192.0.2.1")
    assert verdict.status == 429 and "this address" in verdict.reason
    assert table.admit("b1", "192.0.2.2").status == 0
    table.release("a1")
    assert table.admit("a3", "192.0.2.1").status == 0  # a released slot is the source's again


def test_full_evicts_the_oldest_reading_connection_then_refuses_503() -> None:
    table = ConnectionTable(max_connections=3, max_per_source=3)
    for conn in ("c1", "c2", "c3"):
        table.admit(conn, f"192.0.2.{conn[1]}")
    table.serving("c1")  # routed: a long-poll in progress is not evictable
    verdict = table.admit("c4", "192.0.2.4")
    assert verdict.status == 0 and verdict.evict == "c2"
    assert len(table) == 3 and table.held("192.0.2.2") == 0
    table.serving("c3")
    table.serving("c4")
    verdict = table.admit("c5", "192.0.2.5")
    assert verdict.status == 503 and verdict.evict is None
    table.release("c2")  # the evicted connection's own release is a no-op
    assert len(table) == 3


def test_caps_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ConnectionTable(max_connections=0)


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("192.0.2.7", 5000), "192.0.2.7"),
        (("2001:db8:1:2:aaaa::1", 5000, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bbbb::9", 6000, 0, 0), "2001:db8:1:2::/64"),
        (("::ffff:198.51.100.4", 1, 0, 0), "198.51.100.4"),
        (("fe80::1%lo", 1, 0, 1), "fe80::/64"),
        (None, "None"),
    ],
)
def test_source_key_is_the_ipv4_address_or_the_ipv6_64(peer: object, key: str) -> None:
    assert source_key(peer) == key


def test_log_limiter_folds_repeats_into_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = LogLimiter(logging.getLogger("natkit.test"), interval=10.0)
    with caplog.at_level(logging.WARNING, logger="natkit.test"):
        logged = [limiter.warning("full", "refused", now) for now in (0.0, 1.0, 2.0, 9.9)]
        assert logged == [True, False, False, False]
        assert limiter.warning("other", "evicted", 3.0)  # each kind has its own interval
        assert limiter.warning("full", "refused", 10.0)
    assert [r.getMessage() for r in caplog.records] == [
        "refused",
        "evicted",
        "refused (and 3 more in the last 10 s)",
    ]


def test_busy_connections_are_never_evicted() -> None:
    # The STUN server's use: a connection relaying for a TURN allocation keeps its slot.
    table = ConnectionTable(max_connections=3, max_per_source=10)
    for conn in ("relaying", "idle-1", "idle-2"):
        assert table.admit(conn, "192.0.2.1").status == 0
    busy = {"relaying"}.__contains__
    assert table.admit("new-1", "192.0.2.2", busy).evict == "idle-1"
    assert table.admit("new-2", "192.0.2.2", busy).evict == "idle-2"
    assert table.admit("new-3", "192.0.2.2", busy).evict == "new-1"
    table.serving("new-2")
    table.serving("new-3")
    assert table.admit("new-4", "192.0.2.2", busy).status == 503
