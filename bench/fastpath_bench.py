"""STUN Binding answered in the kernel (``stun.fast_path: kernel``, tc-BPF) vs natkit in user space
vs coturn: same load generator, same cores, one run (root: attaching tc-BPF needs it).

All on 127.0.0.1 and bounded in time (about 30 s): natkit serve twice (fast path off and
kernel, rate limit off like coturn's) and coturn ``--stun-only`` on free ports; closed-loop runs
alternate between the three (median of each), then an open loop at 2k/s for p50/p99 latency.
The kernel's answers run in the softirq of the sender's send call, so their CPU is charged to
the load generator, not to the server: the figure that cannot be blurred is the generator's
own CPU per response with each server (lower is cheaper for the whole machine). Every process
is started in its own session and killed in a finally block; serve detaches its program on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.stun_bench import (
    HERE,
    HOST,
    build_c,
    coturn_argv,
    loadgen,
    running,
    server_run,
    wait_stun,
)
from natkit.testing import free_port

__all__ = ["main"]


def _config(tmp: Path, name: str, port: int, fast_path: str) -> Path:
    config = tmp / f"{name}.yaml"
    config.write_text(
        "version: 1\n"
        f"stun:\n  listen: ['udp://{HOST}:{port}']\n  workers: {os.cpu_count() or 1}\n"
        f"  rate_limit: {{enabled: false}}\n  fast_path: {fast_path}\n"
        "metrics: {listen: null}\nlogging: {level: warning}\n"
    )
    return config


def measure(tmp: Path, duration: float, rounds: int) -> dict[str, dict[str, Any]]:
    servers: dict[str, list[str]] = {}
    ports: dict[str, int] = {}
    for name, mode in (("kernel", "kernel"), ("user", "off")):
        ports[name] = free_port()
        config = _config(tmp, name, ports[name], mode)
        servers[name] = [sys.executable, "-m", "natkit", "serve", "-c", str(config)]
    binary = shutil.which("turnserver")
    if binary is not None:
        ports["coturn"] = free_port()
        servers["coturn"] = coturn_argv(binary, tmp, ports["coturn"])
    results: dict[str, dict[str, Any]] = {name: {"closed": []} for name in servers}
    with ExitStack() as stack:
        procs = {}
        for name, argv in servers.items():
            log = tmp / f"{name}.log"
            procs[name] = stack.enter_context(running(argv, log))
            wait_stun(ports[name], procs[name], log, timeout=30)
        for _ in range(rounds):
            for name in servers:
                results[name]["closed"].append(server_run(ports[name], procs[name].pid, duration))
        for name in servers:
            results[name]["open"] = loadgen(ports[name], duration, rate=2000)
    for row in results.values():
        runs = row["closed"]
        row["rate"] = statistics.median(r["rate"] for r in runs)
        row["server_cpu_us"] = statistics.median(r["server_cpu_us_per_response"] for r in runs)
        row["generator_cpu_us"] = statistics.median(r["cpu_us_per_response"] for r in runs)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fastpath", description=__doc__)
    parser.add_argument("--duration", type=float, default=2.5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating closed-loop runs")
    parts = ("all", "lab", "stun", "turn")
    help_text = "lab: both lab parts; stun: loopback STUN; turn: lab TURN"
    parser.add_argument("--part", choices=parts, default="all", help=help_text)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("fastpath: skipped, attaching tc-BPF needs root")
        return 0
    started = time.monotonic()
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    if args.part in ("all", "lab", "turn"):
        from bench import fastpath_turn

        turn = fastpath_turn.measure()
        fastpath_turn.report(turn)
        (out / "fastpath-turn.json").write_text(json.dumps(turn, indent=2))
    if args.part in ("all", "lab"):
        lab_stun = fastpath_turn.measure_stun(args.duration, args.rounds)
        fastpath_turn.report_stun(lab_stun)
        (out / "fastpath-stun-lab.json").write_text(json.dumps(lab_stun, indent=2))
    if args.part in ("lab", "turn"):
        return 0
    build_c("loadgen")
    with tempfile.TemporaryDirectory(prefix="natkit-bench-") as tmpdir:
        res = measure(Path(tmpdir), args.duration, args.rounds)
    labels = {
        "kernel": "natkit, kernel fast path",
        "user": "natkit, user space",
        "coturn": "coturn --stun-only",
    }
    print(f"STUN Binding over UDP, 127.0.0.1, {os.cpu_count()} cores shared with the generator")
    print(f"  (median of {args.rounds} alternating {args.duration:g} s closed-loop runs each)")
    for name, row in res.items():
        print(
            f"  {labels[name]:<25} {row['rate']:>10,.0f} responses/s   p50/p99 at 2k/s "
            f"{row['open']['p50_us']}/{row['open']['p99_us']} us   CPU per response: server "
            f"{row['server_cpu_us']:.2f} us, generator {row['generator_cpu_us']:.2f} us"
        )
    kernel = res["kernel"]["rate"]
    print(f"  ratio kernel/user space: {kernel / res['user']['rate']:.2f}")
    summary: dict[str, Any] = {name: {k: v for k, v in row.items() if k != "closed"}
                               for name, row in res.items()}  # fmt: skip
    if "coturn" in res:
        print(f"  ratio kernel/coturn:     {kernel / res['coturn']['rate']:.2f}")
    print(f"  bench took {time.monotonic() - started:.1f} s")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "fastpath.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
