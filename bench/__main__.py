"""Run benchmarks: ``python -m bench [NAME ...] [--option ...]`` (default: all)."""

from __future__ import annotations

import sys

from bench import stun_bench

BENCHMARKS = {"stun": stun_bench.main}


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
