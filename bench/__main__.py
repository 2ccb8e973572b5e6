"""Run benchmarks: ``python -m bench [NAME ...] [--option ...]`` (default: all).

Each prints its figures as ratios against an anchor measured in the same run (coturn, pystun3,
turnutils_natdiscovery) on the same cores; all traffic stays on loopback or inside lab
namespaces, and each stops everything it started. ``lab``, ``diagnose`` and ``impair`` need root;
``cli`` times its lab part only as root.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from bench import (
    alloc_bench,
    cli_bench,
    diagnose_bench,
    fastpath_bench,
    impair_bench,
    lab_bench,
    listener_bench,
    stun_bench,
    turn_bench,
)


def _lab(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("lab: skipped, building namespaces needs root")
        return 0
    lab_bench.main()
    return 0


BENCHMARKS: dict[str, Callable[[list[str]], int]] = {
    "stun": stun_bench.main,
    "fastpath": fastpath_bench.main,
    "listener": listener_bench.main,
    "turn": turn_bench.main,
    "alloc": alloc_bench.main,
    "lab": _lab,
    "diagnose": diagnose_bench.main,
    "impair": impair_bench.main,
    "cli": cli_bench.main,
}


def main() -> int:
    args = sys.argv[1:]
    names = []
    while args and not args[0].startswith("-"):
        names.append(args.pop(0))
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    status = 0
    for name in names or list(BENCHMARKS):
        status |= BENCHMARKS[name](args)  # options after the names go to each benchmark
    return status


if __name__ == "__main__":
    sys.exit(main())
