"""The link forwarder's model (natkit.lab.impair): delay, jitter, FIFO order, loss, reordering,
queue limit — time and randomness injected, no sockets."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from natkit.lab.impair import Direction, LinkModel
from natkit.lab.topology import Topology, seconds

IP = b"\x00" * 12 + b"\x08\x00" + b"payload"
ARP = b"\x00" * 12 + b"\x08\x06" + b"arp"


def frame(n: int) -> bytes:
    return IP + n.to_bytes(4, "big")


def run(way: Direction, arrivals: list[float], step: float = 0.0001) -> list[tuple[float, int]]:
    """Offer frame i at arrivals[i]; return (departure, i) in departure order."""
    out: list[tuple[float, int]] = []
    now, pending = 0.0, list(enumerate(arrivals))
    end = max(arrivals) + 20
    while now < end and (pending or len(way)):
        while pending and pending[0][1] <= now:
            i, _ = pending.pop(0)
            way.offer(frame(i), now)
        out += [(now, int.from_bytes(f[-4:], "big")) for f in way.due(now)]
        now = round(now + step, 7)
    return out


def test_delay_is_exact_and_order_kept() -> None:
    way = Direction(LinkModel(delay=0.1))
    out = run(way, [i * 0.001 for i in range(100)])
    assert [i for _, i in out] == list(range(100))
    assert all(abs(t - (i * 0.001 + 0.1)) < 0.00021 for t, i in out)  # two clock steps


def test_jitter_spreads_uniformly_and_never_reorders() -> None:
    way = Direction(LinkModel(delay=0.05, jitter=0.01), random.Random(1))
    sparse = run(way, [i * 0.03 for i in range(500)])  # gaps wider than the jitter window
    delays = [t - i * 0.03 for t, i in sparse]
    assert min(delays) >= 0.0399 and max(delays) <= 0.0601
    assert statistics.pstdev(delays) == pytest.approx(0.01 / 3**0.5, rel=0.1)
    dense = run(
        Direction(LinkModel(delay=0.05, jitter=0.01), random.Random(2)),
        [i * 0.001 for i in range(500)],
    )
    assert [i for _, i in dense] == list(range(500))  # FIFO: jitter alone does not reorder


def test_reorder_swaps_adjacent_frames_at_the_asked_rate() -> None:
    way = Direction(LinkModel(delay=0.02, reorder=0.1), random.Random(3))
    out = [i for _, i in run(way, [i * 0.001 for i in range(2000)])]
    assert sorted(out) == list(range(2000))
    late = sum(1 for a, b in itertools.pairwise(out) if a > b)
    assert 150 < late < 250 and way.counters.reordered == late
    assert all(abs(a - b) == 1 for a, b in itertools.pairwise(out) if a > b)  # adjacent swaps only


def test_a_held_frame_without_follower_leaves_on_time() -> None:
    way = Direction(LinkModel(delay=0.02, reorder=1.0), random.Random(4))
    assert run(way, [0.0]) == [(pytest.approx(0.02), 0)]


def test_loss_rate_and_arp_never_lost_nor_delayed() -> None:
    way = Direction(LinkModel(delay=0.01, loss=0.03), random.Random(5))
    out = run(way, [i * 0.0001 for i in range(20000)], step=0.001)
    assert len(out) == 20000 - way.counters.lost
    assert way.counters.lost == pytest.approx(600, abs=100)
    arp = Direction(LinkModel(delay=1.0, loss=1.0))
    arp.offer(ARP, 5.0)
    assert arp.next_departure() == float("-inf") and arp.due(5.0) == [ARP]


def test_queue_limit_bounds_memory_and_counts_drops() -> None:
    way = Direction(LinkModel(delay=1.0, limit=100))
    for i in range(250):
        way.offer(frame(i), 0.0)
    assert len(way) == 100 and way.counters.queue_drops == 150
    assert len(way.due(1.0)) == 100 and len(way) == 0


def test_link_keys_validated() -> None:
    def link(**keys: object) -> object:
        return Topology.from_dict({"hosts": {"h": {"link": keys}}}).hosts[0].link

    got = link(delay="300ms", jitter="30ms", loss=3, reorder=1, limit=500)
    assert got.forwarded and got.delay_s == 0.3 and got.jitter_s == pytest.approx(0.03)
    assert not link(loss=2).forwarded
    assert seconds("250us") == pytest.approx(0.00025) and seconds("1.5s") == 1.5
    for keys, message in [
        ({"jitter": "5ms"}, "hosts.h.link.jitter: jitter 5ms exceeds the delay"),
        ({"reorder": 5}, "hosts.h.link.reorder: reordering needs a delay"),
        ({"delay": "20ms", "reorder": 101}, "hosts.h.link.reorder: expected a percentage"),
        ({"delay": "11s"}, "hosts.h.link.delay: at most 10s"),
        ({"delay": "fast"}, "hosts.h.link.delay: expected a time like 20ms"),
        ({"limit": 0}, "hosts.h.link.limit: expected packets 1-1000000"),
        ({"dealy": "1ms"}, 'hosts.h.link.dealy: unknown key; did you mean "delay"?'),
    ]:
        with pytest.raises(Exception, match=message):
            link(**keys)


def test_impairment_presets() -> None:
    from natkit.lab import load_topology

    satellite = load_topology("satellite").nat("nat")
    assert (satellite.filtering, satellite.link.delay_s) == ("address-and-port-dependent", 0.3)
    mobile = load_topology("lossy-mobile").nat("nat").link
    assert (mobile.delay_s, mobile.jitter_s, mobile.loss) == (0.08, 0.03, 3.0)
    peers = {h.name: h.behind for h in load_topology("matrix-impaired").hosts}
    assert peers["peer-satellite"] == "nat-satellite"
    assert peers["peer-lossy-mobile"] == "nat-lossy-mobile"
