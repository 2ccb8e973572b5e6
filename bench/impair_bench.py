"""Link impairment accuracy: `python -m bench impair` (needs root).

Sends paced, timestamped UDP datagrams across a lab link impaired by the user-space forwarder
(natkit.lab.forwarder) and prints how far the one-way delays land from what the link asks for:
mean error, p50/p99 absolute error, spread, loss and reordering. The anchor, measured in the same
run, is the same path as a plain veth (no forwarder): the floor any user-space hop adds to.

    python -m bench impair [--quick]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from natkit.lab import Lab, Topology
from natkit.lab.linkcheck import measure

HERE = Path(__file__).parent
SERVER = ("203.0.113.10", 5000)

# label, link, configured one-way delay (s), rate (packets/s), count
CASES: list[tuple[str, dict[str, Any], float, float, int]] = [
    ("plain veth (anchor)", {}, 0.0, 1000, 2000),
    ("delay 100ms, 1k pkt/s", {"delay": "100ms"}, 0.100, 1000, 2000),
    ("delay 100ms, 20k pkt/s", {"delay": "100ms"}, 0.100, 20000, 60000),
    ("satellite 300ms, 1k pkt/s", {"delay": "300ms"}, 0.300, 1000, 2000),
    ("80ms ± 30ms, 20 pkt/s", {"delay": "80ms", "jitter": "30ms"}, 0.080, 20, 200),
    (
        "80ms ± 30ms loss 3%, 1k pkt/s",
        {"delay": "80ms", "jitter": "30ms", "loss": 3},
        0.080,
        1000,
        2000,
    ),
]


def run(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for label, link, configured, rate, count in CASES:
        if quick:
            count = max(100, count // 4)
        topo = Topology.from_dict(
            {"hosts": {"peer": {"behind": "internet", "link": link}}}, default_name="bench-impair"
        )
        with Lab.up(topo) as lab:
            m = measure(lab, "peer", "server", SERVER, rate=rate, count=count, settle=0.3)
            extra = lab.link_stats("peer") if link else {}
        row = {"case": label, "rate": round(m.sent / m.send_seconds), **m.summary(configured)}
        if extra:
            row["forwarder_rss_kib"] = extra["rss_kib"]
            row["queue_peak"] = extra["to_parent"]["max_queue"]
        rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("impair: skipped, building namespaces needs root")
        return 0
    rows = run("--quick" in argv)
    anchor = rows[0]
    print("link impairment accuracy (one-way delay vs configured, ms)")
    head = f"{'case':32} {'pkt/s':>6} {'mean err':>9} {'p50 |err|':>9} {'p99 |err|':>9}"
    print(head + f" {'stdev':>7} {'loss %':>7} {'reord':>6} {'p99/anchor':>10}")
    for r in rows:
        ratio = r["p99_abs_error_ms"] / max(anchor["p99_abs_error_ms"], 0.001)
        print(
            f"{r['case']:32} {r['rate']:>6} {r['mean_error_ms']:>9.3f}"
            f" {r['p50_abs_error_ms']:>9.3f} {r['p99_abs_error_ms']:>9.3f}"
            f" {r['stdev_ms']:>7.3f} {r['loss_pct']:>7.2f}"
            f" {r['reordered']:>6} {ratio:>9.1f}x"
        )
    print(
        "(jittered rows: the error is the jitter itself; their check is the spread, stdev ≈ 17.3)"
    )
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "impair.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
