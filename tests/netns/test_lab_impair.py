"""Link impairments without netem, with real packets (needs root): the user-space forwarder's
delay accuracy, jitter spread, loss, reordering (only when asked), 20k packets/s in bounded
memory, TCP through it, and nothing left after `Lab.down()` or a SIGTERM to the lab's owner.

The figures printed here (run with -s) are the ones the README quotes; `python -m bench impair`
prints the same measurement on its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from natkit.lab import Lab, Topology
from natkit.lab.linkcheck import measure
from natkit.lab.netlink import list_namespaces

pytestmark = pytest.mark.netns
MakeLab = Callable[..., Lab]
SERVER = ("203.0.113.10", 5000)


def public_peer(**link: Any) -> Topology:
    """A host on the internet whose uplink is impaired: both directions are easy to measure."""
    return Topology.from_dict({"hosts": {"peer": {"behind": "internet", "link": link}}})


def _forwarder_pids(lab: Lab) -> list[int]:
    return [p.pid for p in lab._procs if "natkit.lab.forwarder" in " ".join(map(str, p.args))]


def test_delay_is_accurate_both_ways_and_tcp_crosses(nat_lab: MakeLab) -> None:
    lab = nat_lab(public_peer(delay="100ms"))
    up = measure(lab, "peer", "server", SERVER, rate=1000, count=1000, settle=0.3)
    down = measure(
        lab, "server", "peer", (lab.address("peer"), 5001), rate=1000, count=1000, settle=0.3
    )
    for way, m in (("up", up), ("down", down)):
        figures = m.summary(0.100)
        print(f"\n100 ms link, {way}: {figures}")
        assert m.loss == 0 and m.reordered == 0
        # The issue's ±1 ms at 100 ms, as the median: a shared machine's odd stall of the
        # forwarder makes a few packets late by tens of ms, which moves a mean, not a median
        # (`python -m bench impair` reports the mean too).
        assert abs(m.percentile(50) - 0.100) <= 0.001, figures
        assert figures["min_ms"] >= 99.9 and m.percentile(90) <= 0.102, figures
    # A local TCP sender hands the veth checksum-offloaded, TSO-sized segments: the virtio-net
    # header must carry them across, or nothing arrives intact.
    server = lab.spawn(
        "server",
        [
            sys.executable,
            "-c",
            "import socket,sys\n"
            "s=socket.create_server(('203.0.113.10',9000));c,_=s.accept();n=0\n"
            "while d:=c.recv(65536): n+=len(d)\nprint(n)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    send = (
        "import socket;s=socket.create_connection(('203.0.113.10',9000));s.sendall(b'x'*2_000_000)"
    )
    lab.exec("peer", [sys.executable, "-c", send], check=True, timeout=30)
    assert server.communicate(timeout=30)[0].strip() == "2000000"


def test_jitter_spreads_uniformly_without_reordering(nat_lab: MakeLab) -> None:
    lab = nat_lab(public_peer(delay="50ms", jitter="4ms"))
    # Gaps of 10 ms exceed the ±4 ms window: each packet shows its own draw.
    sparse = measure(lab, "peer", "server", SERVER, rate=100, count=250, settle=0.2)
    figures = sparse.summary(0.050)
    print(f"\n50 ms ± 4 ms link, 100/s: {figures}")
    # Uniform in 46-54 ms: never early, centred on 50 ms, the middle half 4 ms wide, 90% by
    # 53.2 ms. Quantiles, not the max or the stdev: a shared machine's odd stall makes a few
    # packets late by tens of ms (CI saw a p98 of 55.6 ms with a mean of 50.9).
    quartiles = [sparse.percentile(q) for q in (25, 50, 75)]
    assert figures["min_ms"] >= 45.9 and sparse.percentile(90) <= 0.0555, figures
    assert abs(quartiles[1] - 0.050) <= 0.001, (quartiles, figures)
    assert 0.003 <= quartiles[2] - quartiles[0] <= 0.005, (quartiles, figures)
    # 1000/s: draws would overtake each other, but the link is FIFO.
    dense = measure(lab, "peer", "server", SERVER, rate=1000, count=1000, settle=0.2)
    assert dense.loss == 0 and dense.reordered == 0
    assert lab.link_stats("peer")["to_parent"]["reordered"] == 0


def test_reordering_happens_when_asked(nat_lab: MakeLab) -> None:
    lab = nat_lab(public_peer(delay="20ms", reorder=5))
    m = measure(lab, "peer", "server", SERVER, rate=1000, count=2000, settle=0.2)
    counted = lab.link_stats("peer")["to_parent"]["reordered"]
    print(f"\nreorder 5%: {m.reordered} of 2000 arrived after a later packet ({counted} counted)")
    assert m.loss == 0
    assert 50 <= m.reordered <= 150  # 5% ± 5 sigma
    assert abs(counted - m.reordered) <= 3  # the odd ARP/ICMP frame is counted too


def test_loss_rate_within_tolerance(nat_lab: MakeLab) -> None:
    lab = nat_lab(public_peer(delay="10ms", loss=3))
    m = measure(lab, "peer", "server", SERVER, rate=5000, count=5000, settle=0.2)
    stats = lab.link_stats("peer")["to_parent"]
    print(f"\nloss 3%: {100 * m.loss:.2f}% of 5000 lost ({stats['lost']} counted)")
    assert 0.02 <= m.loss <= 0.04  # binomial: 150 ± 36 at 3 sigma
    # Every frame on the link draws its 3%: now and then an ARP/ND frame is the one lost.
    assert 0 <= stats["lost"] - round(m.loss * 5000) <= 3, stats


@pytest.mark.slow
def test_twenty_thousand_packets_a_second_in_bounded_memory(nat_lab: MakeLab) -> None:
    lab = nat_lab(public_peer(delay="100ms"))
    samples: list[int] = []

    def sample() -> None:  # in steady state after 1 s (2000 packets in flight), and near the end
        for pause in (1.0, 1.8):
            time.sleep(pause)
            samples.append(lab.link_stats("peer")["rss_kib"])

    sampler = threading.Thread(target=sample)
    sampler.start()
    m = measure(lab, "peer", "server", SERVER, rate=20000, count=60000, settle=0.3)
    sampler.join()
    stats = lab.link_stats("peer")["to_parent"]
    figures = m.summary(0.100)
    rate = m.sent / m.send_seconds
    print(
        f"\n100 ms link at {rate:.0f} packets/s: {figures}; queue peak {stats['max_queue']}, "
        f"forwarder RSS {samples} KiB"
    )
    assert rate >= 18000
    assert m.loss <= 0.001 and stats["queue_drops"] == 0
    # Keeping up: never early, and the median on time (a forwarder falling behind would be
    # seconds late by the end). Not the mean: on a loaded CI machine one 75 ms stall moved it
    # 4.35 ms with the median at +0.97 ms; the bench reports the accuracy at this rate.
    assert figures["min_ms"] >= 99.9 and abs(m.percentile(50) - 0.100) <= 0.002, figures
    assert samples[1] - samples[0] <= 2048  # steady state: ~2000 packets in flight, no growth
    # With a small limit the queue stays bounded and the excess is dropped and counted.
    small = nat_lab(public_peer(delay="100ms", limit=200))
    m = measure(small, "peer", "server", SERVER, rate=20000, count=20000, settle=0.3)
    stats = small.link_stats("peer")["to_parent"]
    assert stats["max_queue"] <= 200 and stats["queue_drops"] >= 10000
    assert abs(stats["queue_drops"] - round(m.loss * 20000)) <= 5  # + the odd ND/ARP frame


def test_nothing_left_after_down(nat_lab: MakeLab) -> None:
    lab = nat_lab("satellite")
    pids = _forwarder_pids(lab)
    link_ns = lab.state.nodes["nat"]["link_netns"]
    assert len(pids) == 1 and link_ns in list_namespaces()
    lab.down()
    assert link_ns not in list_namespaces()
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]


_OWNER = textwrap.dedent(
    """
    import time
    from natkit.lab import Lab
    lab = Lab.up("lossy-mobile")
    print(lab.state.nodes["nat"]["link_netns"], *[p.pid for p in lab._procs], flush=True)
    time.sleep(60)
    """
)


def test_sigterm_to_the_owner_removes_the_forwarder() -> None:
    child = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        link_ns, *pids = child.stdout.readline().split()
        assert pids and all(os.path.exists(f"/proc/{p}") for p in pids)
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert link_ns not in list_namespaces()
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
