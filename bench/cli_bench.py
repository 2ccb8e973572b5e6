"""CLI start time: `python -m bench cli [--runs N] [--lab-runs N]`.

Prints, from one run on the same cores:
- `natkit --version` wall time (median / p90), against `python -c pass` (the interpreter's own
  start, the anchor) measured interleaved with it; the difference is what natkit's imports cost;
- `natkit lab up cgnat --name X` + `natkit lab down X` from the CLI (median / worst), against
  `Lab.up("cgnat")` + `down()` in this process (root only; otherwise one line says it skipped).

Targets (issue 10): `natkit --version` <= 80 ms, CLI lab up + down <= 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NATKIT = Path(sys.executable).with_name("natkit")  # the venv's entry point, as a user runs it
# As on a user's machine, modules load from their bytecode cache: with PYTHONDONTWRITEBYTECODE
# set (CI and sandboxes often do) every run would compile natkit from source, ~30 ms more.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wall(argv: list[str], cpu: list[float] | None = None) -> float:
    """Wall seconds of one run; its CPU seconds (user + system) go to `cpu`: on 2 shared cores
    the wall time also measures the neighbours, the CPU time much less so."""
    cpu_before, started = _children_cpu(), time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    wall = time.perf_counter() - started
    if cpu is not None:
        cpu.append(_children_cpu() - cpu_before)
    return wall


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def _interleaved(runs: int, *jobs: Callable[[], float]) -> list[list[float]]:
    """Alternate the jobs so a burst of load from a neighbour hits both alike."""
    times: list[list[float]] = [[] for _ in jobs]
    for _ in range(runs):
        for i, job in enumerate(jobs):
            times[i].append(job())
    return times


def start_time(runs: int) -> dict[str, Any]:
    _wall([str(NATKIT), "--version"])  # warm the page cache and __pycache__ first
    natkit_cpu: list[float] = []
    anchor_cpu: list[float] = []
    natkit, anchor = _interleaved(
        runs,
        lambda: _wall([str(NATKIT), "--version"], natkit_cpu),
        lambda: _wall([sys.executable, "-c", "pass"], anchor_cpu),
    )
    return {
        "version_median": statistics.median(natkit),
        "version_p90": _p90(natkit),
        "version_cpu_median": statistics.median(natkit_cpu),
        "pass_median": statistics.median(anchor),
        "pass_p90": _p90(anchor),
        "pass_cpu_median": statistics.median(anchor_cpu),
    }


def _cli_lab(index: int, cpu: list[float]) -> float:
    name = f"bench-cli-{os.getpid()}-{index}"
    cpu_before, started = _children_cpu(), time.perf_counter()
    try:
        subprocess.run(
            [str(NATKIT), "lab", "up", "cgnat", "--name", name],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    finally:  # never leave the lab behind, also when `up` failed half way
        subprocess.run([str(NATKIT), "lab", "down", name], check=False, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    cpu.append(_children_cpu() - cpu_before)  # includes ip/nft children of natkit
    return wall


def _inproc_lab() -> float:
    from natkit.lab import Lab

    started = time.perf_counter()
    Lab.up("cgnat").down()
    return time.perf_counter() - started


def lab_time(runs: int) -> dict[str, Any]:
    _inproc_lab()  # imports and page cache, so the in-process figure is the work alone
    _cli_lab(-1, [])  # writes the bytecode caches `lab up`/`down` need
    counter = iter(range(runs))
    cpu: list[float] = []
    cli, inproc = _interleaved(runs, lambda: _cli_lab(next(counter), cpu), _inproc_lab)
    return {
        "cli_median": statistics.median(cli),
        "cli_worst": max(cli),
        "cli_cpu_median": statistics.median(cpu),
        "inproc_median": statistics.median(inproc),
        "inproc_worst": max(inproc),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cli", description=__doc__)
    parser.add_argument("--runs", type=int, default=30, help="natkit --version runs")
    parser.add_argument("--lab-runs", type=int, default=10, help="lab up + down runs")
    args, _ = parser.parse_known_args(argv)  # other benchmarks' options may follow
    ms = 1000.0
    st = start_time(args.runs)
    print(f"CLI start, {os.cpu_count()} cores (median / p90 of {args.runs} interleaved runs)")
    if "PYTHONDONTWRITEBYTECODE" in os.environ:
        print("  (PYTHONDONTWRITEBYTECODE dropped for the runs: timed with bytecode caches)")
    print(
        f"  natkit --version     {st['version_median'] * ms:6.1f} / {st['version_p90'] * ms:6.1f}"
        f" ms   (target <= 80 ms)"
    )
    print(f"  python -c pass       {st['pass_median'] * ms:6.1f} / {st['pass_p90'] * ms:6.1f} ms")
    print(f"  natkit's own share   {(st['version_median'] - st['pass_median']) * ms:6.1f} ms")
    print(
        f"  CPU (user+sys) median: natkit --version {st['version_cpu_median'] * ms:.1f} ms, "
        f"python -c pass {st['pass_cpu_median'] * ms:.1f} ms"
    )
    summary: dict[str, Any] = {"start": st}
    if os.geteuid() != 0:
        print("  lab up + down: skipped, building namespaces needs root")
    else:
        lt = lab_time(args.lab_runs)
        print(f"CLI lab up cgnat + lab down (median / worst of {args.lab_runs})")
        print(
            f"  natkit lab up + down {lt['cli_median']:6.3f} / {lt['cli_worst']:6.3f} s "
            f"  (target <= 0.3 s)"
        )
        print(f"  Lab.up + down in-proc {lt['inproc_median']:5.3f} / {lt['inproc_worst']:6.3f} s")
        cpu = lt["cli_cpu_median"]
        print(f"  CPU (user+sys) median of the CLI pair, incl. ip/nft: {cpu:.3f} s")
        summary["lab"] = lt
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "cli.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
