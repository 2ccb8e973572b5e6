"""Time to a NAT diagnosis: `natkit diagnose` vs pystun3 vs coturn's `turnutils_natdiscovery`.

All three run in the same run, against the same server (`natkit serve` with RFC 5780 sockets on
203.0.113.10:3478 + 203.0.113.11:3479 in the lab's `server` node), from the same client node,
one after another, `--repeat` times each; the median wall time (process start to exit, so Python
start-up counts for natkit and pystun3) is printed with the ratio to natkit.

    python -m bench.diagnose_bench [--presets full-cone,symmetric,udp-blocked] [--repeat 3]

With root it uses the NAT lab (one lab per preset); without, it falls back to loopback
(127.0.0.1 + alternate 127.0.0.2: no NAT) and says so. Every process is started in its own
session (or in the lab, which kills its processes on teardown) and is stopped in a finally
block; each tool run is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PRIMARY, ALTERNATE = "203.0.113.10", "203.0.113.11"
TOOL_TIMEOUT = 60.0
Runner = Callable[[list[str]], tuple[float, int, str]]


def tools(host: str, port: int) -> dict[str, list[str]]:
    py = sys.executable
    out = {
        "natkit diagnose": [py, "-m", "natkit", "diagnose", "--json", "--stun", f"{host}:{port}"],
        "pystun3": [
            py,
            "-c",
            f"import stun; print(stun.get_ip_info(source_port=0, stun_host={host!r}, "
            f"stun_port={port}))",
        ],
    }
    if shutil.which("turnutils_natdiscovery"):
        out["turnutils_natdiscovery"] = [
            "turnutils_natdiscovery",
            "-m",
            "-f",
            "-H",
            "-p",
            str(port),
            host,
        ]
    return out


def summary(name: str, output: str) -> str:
    """One short line of what the tool concluded."""
    if name == "natkit diagnose":
        try:
            d = json.loads(output)
        except ValueError:
            return "no JSON"
        return (
            f"{d['nat_type']} ({d['mapping']} / {d['filtering']}), "
            f"in-process {d['duration_s']:.3f} s"
        )
    if name == "pystun3":
        return output.strip().splitlines()[-1] if output.strip() else "-"
    lines = [ln.strip() for ln in output.splitlines() if "NAT with" in ln or "behavior" in ln]
    return "; ".join(lines[-3:]) or "-"


def measure(run: Runner, host: str, port: int, repeat: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, argv in tools(host, port).items():
        times, outs = [], []
        for _ in range(repeat):
            seconds, _status, out = run(argv)
            times.append(seconds)
            outs.append(out)
        results[name] = {
            "median_s": round(statistics.median(times), 3),
            "runs_s": times,
            "result": summary(name, outs[-1]),
        }
    return results


def _timed(popen: Callable[..., subprocess.Popen[str]], argv: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return round(time.perf_counter() - start, 3), proc.returncode, out


def serve_config(tmp: Path, primary: str, port: int, alternate: str) -> Path:
    path = tmp / "natkit.yaml"
    path.write_text(
        "version: 1\nstun:\n"
        f'  listen: ["udp://{primary}:{port}"]\n'
        f'  alternate: "{alternate}"\n  workers: 1\n'
        "metrics: {listen: null}\n"
    )
    return path


def run_lab(presets: list[str], repeat: int) -> dict[str, Any]:
    from natkit.lab import Lab

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = serve_config(Path(tmp), PRIMARY, 3478, f"{ALTERNATE}:3479")
        for preset in presets:
            with Lab.up(preset) as lab:  # removes the lab and kills its processes on exit
                lab.spawn(
                    "server",
                    [sys.executable, "-m", "natkit", "serve", "-c", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)  # python start-up of the server

                def popen(argv: list[str], **kw: Any) -> subprocess.Popen[str]:
                    return _lab_popen(lab, argv, **kw)

                out[preset] = measure(lambda argv: _timed(popen, argv), PRIMARY, 3478, repeat)
                _print(preset, out[preset])
    return out


def _lab_popen(lab: Any, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
    from natkit.lab import netlink

    proc: subprocess.Popen[str] = netlink.popen_in_netns(lab.netns("peer"), argv, **kw)
    return proc


def run_loopback(repeat: int) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        config = serve_config(Path(tmp), "127.0.0.1", port, f"127.0.0.2:{port + 1}")
        server = subprocess.Popen(
            [sys.executable, "-m", "natkit", "serve", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            time.sleep(1.0)
            out = {
                "loopback": measure(
                    lambda a: _timed(subprocess.Popen, a), "127.0.0.1", port, repeat
                )
            }
            _print("loopback", out["loopback"])
            return out
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def _print(where: str, results: dict[str, Any]) -> None:
    base = results["natkit diagnose"]["median_s"]
    print(f"\n[{where}]")
    for name, r in results.items():
        ratio = r["median_s"] / base if base else float("nan")
        print(f"  {name:24} {r['median_s']:7.3f} s  x{ratio:5.1f}  {r['result']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diagnose_bench")
    parser.add_argument("--presets", default="full-cone,port-restricted-cone,symmetric,udp-blocked")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loopback", action="store_true", help="skip the lab even as root")
    args = parser.parse_args(argv)
    lab_ok = os.geteuid() == 0 and not args.loopback
    print(
        "diagnose bench: median wall time per tool (process start to exit), "
        f"ratio to natkit; {'NAT lab' if lab_ok else 'LOOPBACK (no lab: not root)'}"
    )
    run = (
        (lambda: run_lab(args.presets.split(","), args.repeat))
        if lab_ok
        else (lambda: run_loopback(args.repeat))
    )
    results = run()
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "diagnose.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
