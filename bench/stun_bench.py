"""STUN Binding throughput and latency: `natkit serve` vs coturn, same load generator, same cores.

Steps, all on 127.0.0.1 and bounded in time (well under 60 s):
1. compile bench/loadgen.c into bench/bin/ (gcc, sendmmsg/recvmmsg batching);
2. start natkit serve (workers = cores, rate limit off like coturn's) and coturn `--stun-only`;
   alternate closed-loop runs between them (median of each), then RSS per worker;
3. open loop at half natkit's rate against both for p50/p99 latency;
4. print responses/s, the ratio natkit/coturn, each server's own CPU per response (an efficiency
   ratio the shared cores cannot blur), RSS/worker, p50/p99, and the load generator's own CPU per
   response (it must be far cheaper than a server's, else it would be the bottleneck).
Every process is started in its own session and killed (group) in a finally block.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from natkit.testing import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOADGEN = HERE / "bin" / "loadgen"
HOST = "127.0.0.1"


def build_c(name: str) -> Path:
    """Compile bench/NAME.c into bench/bin/NAME (gitignored) unless it is up to date."""
    src, binary = HERE / f"{name}.c", HERE / "bin" / name
    if binary.exists() and binary.stat().st_mtime >= src.stat().st_mtime:
        return binary
    binary.parent.mkdir(exist_ok=True)
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("bench: gcc is needed to build the load generator (apt-get install gcc)")
    subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", str(binary), str(src)], check=True)
    return binary


def wait_stun(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    """Until a Binding request on 127.0.0.1:port gets a success response; exits with the
    server's log if it dies or never answers."""
    req = struct.pack("!HHI", 1, 0, 0x2112A442) + os.urandom(12)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline and proc.poll() is None:
            s.sendto(req, (HOST, port))
            try:
                if s.recv(2048)[:2] == b"\x01\x01":
                    return
            except OSError:
                pass
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise SystemExit(
        f"bench: {str(proc.args)[:200]}\n"
        f"did not answer on port {port} (status {proc.poll()}):\n{tail}"
    )


@contextmanager
def running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we created, SIGKILL it after 5 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    with suppress(ProcessLookupError):  # workers that outlived their parent are in the group
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def loadgen(
    port: int, duration: float, *, rate: float = 0.0, sockets: int = 64, window: int = 4
) -> dict[str, Any]:
    # 64 client hosts (127.0.0.2-65), one socket each, as a server sees them: natkit steers a
    # host to one worker (natkit.net.steering), and with 16 the split between two workers is
    # often 10:6, which idles one of them (measured: 65k/s with 16 vs 110k/s with 64).
    argv = [
        str(LOADGEN),
        "-s",
        HOST,
        "-b",
        "127.0.0.2",
        "-n",
        str(sockets),
        "-p",
        str(port),
        "-c",
        str(sockets),
        "-w",
        str(window),
        "-d",
        str(duration),
        "-W",
        "0.5",
    ]
    if rate:
        argv += ["-r", str(int(rate))]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, check=True, timeout=duration + 15)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads(out.stdout)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # CPU over warm-up + measurement, per response of the measured window (scaled to match)
    result["cpu_us_per_response"] = (
        1e6 * cpu / max(1, result["received"]) * duration / (duration + 0.5)
    )
    return result


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by every process of process group `pgid`: the
    natkit supervisor and its workers, or coturn and its threads."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after comm: state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def server_run(port: int, pgid: int, duration: float) -> dict[str, Any]:
    """One closed-loop run plus the server's own CPU per response (the efficiency figure the
    shared cores cannot blur: it does not depend on how fast the load generator is)."""
    before = group_cpu(pgid)
    result = loadgen(port, duration)
    cpu = group_cpu(pgid) - before
    result["server_cpu_us_per_response"] = (
        1e6 * cpu / max(1, result["received"]) * duration / (duration + 0.5)
    )
    return result


def worker_rss(metrics_port: int) -> list[int]:
    text = urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=5).read()
    return [
        int(v)
        for v in re.findall(
            rb'^natkit_worker_resident_memory_bytes\{worker="\d+"\} (\d+)$', text, re.M
        )
    ]


def natkit_config(tmp: Path, port: int, mport: int, workers: int) -> Path:
    config = tmp / "natkit.yaml"
    config.write_text(
        "version: 1\n"
        f"stun:\n  listen: ['udp://{HOST}:{port}']\n  workers: {workers}\n"
        "  rate_limit: {enabled: false}\n"  # coturn has none: compare like with like
        f"metrics: {{listen: '{HOST}:{mport}'}}\nlogging: {{level: warning}}\n"
    )
    return config


def coturn_argv(binary: str, tmp: Path, port: int) -> list[str]:
    return [
        binary,
        "-n",
        "--stun-only",
        "--no-cli",
        "-p",
        str(port),
        "-L",
        HOST,
        "--no-tls",
        "--no-dtls",
        "--no-stdout-log",
        "--simple-log",
        "--log-file",
        str(tmp / "coturn-file.log"),
        "--pidfile",
        str(tmp / "coturn.pid"),
        "--userdb",
        str(tmp / "turndb"),
    ]


def measure(tmp: Path, workers: int, duration: float, rounds: int) -> dict[str, Any]:
    """Both servers up at once (idle ones cost nothing); closed-loop runs alternate between
    them so a noisy neighbour on the shared cores hits both alike; medians are reported."""
    port, mport = free_port(), free_port()
    natkit = [
        sys.executable,
        "-m",
        "natkit",
        "serve",
        "-c",
        str(natkit_config(tmp, port, mport, workers)),
    ]
    binary = shutil.which("turnserver")
    result: dict[str, Any] = {"natkit": {"closed": []}, "coturn": None}
    with running(natkit, tmp / "natkit.log") as nproc, ExitStack() as stack:
        cport = free_port()
        if binary is not None:
            clog = tmp / "coturn.log"
            cproc = stack.enter_context(running(coturn_argv(binary, tmp, cport), clog))
            result["coturn"] = {"closed": []}
            wait_stun(cport, cproc, clog)
        wait_stun(port, nproc, tmp / "natkit.log", timeout=20)
        for _ in range(rounds):
            result["natkit"]["closed"].append(server_run(port, nproc.pid, duration))
            if binary is not None:
                result["coturn"]["closed"].append(server_run(cport, cproc.pid, duration))
        result["natkit"]["rss"] = worker_rss(mport)
        half = statistics.median(r["rate"] for r in result["natkit"]["closed"]) / 2
        result["natkit"]["open"] = loadgen(port, duration, rate=half)
        if binary is not None:
            result["coturn"]["open"] = loadgen(cport, duration, rate=half)
    for server in ("natkit", "coturn"):
        if result[server] is not None:
            runs = result[server]["closed"]
            result[server]["rate"] = statistics.median(r["rate"] for r in runs)
            result[server]["cpu_us"] = statistics.median(
                r["server_cpu_us_per_response"] for r in runs
            )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench stun", description=__doc__)
    parser.add_argument("--duration", type=float, default=2.5, help="seconds per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3, help="alternating closed-loop runs")
    args = parser.parse_args(argv)
    build_c("loadgen")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="natkit-bench-") as tmpdir:
        tmp = Path(tmpdir)
        res = measure(tmp, args.workers, args.duration, args.rounds)
    nat, cot = res["natkit"], res["coturn"]
    n_rate = nat["rate"]
    print(
        f"STUN Binding over UDP, 127.0.0.1, {os.cpu_count()} cores shared with the load generator"
    )
    print(f"  (median of {args.rounds} alternating {args.duration:g} s closed-loop runs each)")
    print(f"  natkit serve ({args.workers} workers): {n_rate:>10,.0f} responses/s")
    summary: dict[str, Any] = {"natkit_rps": n_rate, "workers": args.workers}
    if cot is None:
        print("  coturn: turnserver not installed (apt-get install coturn); no ratio")
    else:
        c_rate = cot["rate"]
        print(f"  coturn --stun-only:        {c_rate:>10,.0f} responses/s")
        print(f"  ratio natkit/coturn:       {n_rate / c_rate:>10.2f}   (target >= 1.0)")
        summary |= {"coturn_rps": c_rate, "ratio": n_rate / c_rate}
        print(
            f"  server CPU per response:   natkit {nat['cpu_us']:.2f} us, coturn "
            f"{cot['cpu_us']:.2f} us (incl. kernel send path); "
            f"efficiency natkit/coturn {cot['cpu_us'] / nat['cpu_us']:.2f}"
        )
        summary |= {"efficiency": cot["cpu_us"] / nat["cpu_us"]}
    rss = [r / 2**20 for r in nat["rss"]]
    print(f"  natkit RSS per worker:     {', '.join(f'{r:.1f}' for r in rss)} MB (target <= 40)")
    print(f"  latency at half load ({n_rate / 2:,.0f}/s, open loop):")
    print(f"    natkit  p50 {nat['open']['p50_us']} us  p99 {nat['open']['p99_us']} us")
    if cot is not None:
        print(f"    coturn  p50 {cot['open']['p50_us']} us  p99 {cot['open']['p99_us']} us")
    lg = statistics.median(r["cpu_us_per_response"] for r in (cot or nat)["closed"])
    best = max(r["rate"] for r in (cot or nat)["closed"] + nat["closed"])
    print(
        f"  load generator: {lg:.1f} us CPU per response incl. the kernel's loopback delivery "
        f"it is charged for; best rate it drove in this run: {best:,.0f}/s"
    )
    print(f"  bench took {time.monotonic() - started:.1f} s")
    summary |= {"rss_mb": rss, "natkit": nat, "coturn": cot}
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "stun.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
