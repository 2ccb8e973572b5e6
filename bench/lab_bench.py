"""Lab build/teardown times: `python -m bench.lab_bench` (needs root).

Prints the median and worst of several `Lab.up` + `down` runs for a two-NAT topology
(pair-symmetric: 6 namespaces) and a 50-host topology (5 NATs x 10 hosts).
"""

from __future__ import annotations

import statistics
import sys
import time

from natkit.errors import NatkitError
from natkit.lab import Lab, Topology


def fifty_hosts() -> Topology:
    nats = {f"nat{i}": {"type": "port-restricted-cone"} for i in range(5)}
    hosts = {f"h{i:02d}": {"behind": f"nat{i % 5}"} for i in range(50)}
    return Topology.from_dict({"nats": nats, "hosts": hosts}, default_name="bench-50")


def measure(topology: Topology | str, runs: int) -> tuple[list[float], list[float]]:
    ups, downs = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        lab = Lab.up(topology)
        t1 = time.perf_counter()
        lab.down()
        ups.append(t1 - t0)
        downs.append(time.perf_counter() - t1)
    return ups, downs


def main() -> None:
    print("lab build/teardown (seconds): median / worst")
    try:
        for label, topo, runs in (
            ("two-NAT pair-symmetric (6 ns)", "pair-symmetric", 10),
            ("50 hosts behind 5 NATs (57 ns)", fifty_hosts(), 3),
        ):
            ups, downs = measure(topo, runs)
            total = [u + d for u, d in zip(ups, downs, strict=True)]
            print(
                f"  {label:<32} up {statistics.median(ups):.3f} / {max(ups):.3f}   "
                f"down {statistics.median(downs):.3f} / {max(downs):.3f}   "
                f"up+down {statistics.median(total):.3f} / {max(total):.3f}"
            )
    except NatkitError as err:
        print(f"  skipped: {err}", file=sys.stderr)


if __name__ == "__main__":
    main()
