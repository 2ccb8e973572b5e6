"""The matrix's pair schedule: every pair once, never two running pairs with a solo peer in
common (an exhausted CGNAT's), the others as parallel as the limit allows."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from natkit.p2p.matrix import PairRecord, pair_rounds, run_pairs


@pytest.mark.parametrize("count", [2, 3, 4, 7, 15, 16])
def test_rounds_hold_every_pair_once_and_each_round_is_disjoint(count: int) -> None:
    peers = [f"peer-{i:02d}" for i in range(count)]
    order = pair_rounds(peers)
    assert sorted(order) == list(itertools.combinations(peers, 2))
    size = count // 2
    for start in range(0, len(order), size):
        names = [p for pair in order[start : start + size] for p in pair]
        assert len(names) == len(set(names)), order[start : start + size]


def test_a_peers_pairs_are_spread_over_the_run() -> None:
    peers = [f"peer-{i:02d}" for i in range(15)]
    first = [i for i, pair in enumerate(pair_rounds(peers)) if peers[0] in pair]
    assert first[-1] >= 90, first  # not bunched at the start as combinations() would have them


def record(pair: tuple[str, str]) -> PairRecord:
    return PairRecord(
        a=pair[0], b=pair[1], a_type=None, b_type=None, direct=True, relay=True,
        predicted_direct=None, held=None, ice_s=None, selected=None,
    )  # fmt: skip


def test_a_solo_peer_runs_one_pair_at_a_time_and_the_rest_reach_the_limit() -> None:
    peers = [f"peer-{i:02d}" for i in range(9)]
    lock, running, solo_at_once, at_once = threading.Lock(), list[tuple[str, str]](), [], []

    def run(pair: tuple[str, str]) -> PairRecord:
        with lock:
            running.append(pair)
            solo_at_once.append(sum("peer-00" in p for p in running))
            at_once.append(len(running))
        time.sleep(0.05 if "peer-00" in pair else 0.01)  # others would start beside it
        with lock:
            running.remove(pair)
        return record(pair)

    with ThreadPoolExecutor(6) as pool:
        records = run_pairs(pool, run, peers, concurrency=5, solo={"peer-00"})
    assert [(r.a, r.b) for r in records] == list(itertools.combinations(peers, 2))
    assert max(solo_at_once) == 1 and max(at_once) == 5, (solo_at_once, at_once)


def test_the_first_failure_is_raised() -> None:
    def run(pair: tuple[str, str]) -> PairRecord:
        if pair == ("b", "c"):
            raise RuntimeError("pair b-c broke")
        return record(pair)

    with ThreadPoolExecutor(2) as pool, pytest.raises(RuntimeError, match="b-c"):
        run_pairs(pool, run, ["a", "b", "c", "d"], concurrency=2, solo=set())
