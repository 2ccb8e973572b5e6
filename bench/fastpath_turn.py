"""TURN ChannelData relayed in the kernel (``stun.fast_path: kernel``) vs the builtin engine in user
space vs coturn, in a NAT lab (root): the server in node `server`, the load generator in node
`peer` with its checksum offload off (its datagrams then arrive as from a wire, complete, which
the kernel path needs; the same for every server).

Per server, in turn, on the same lab: ALLOCS allocations, each Allocate + ChannelBind to an echo
peer socket (all in node `peer`, long-term credentials), then bench/turnload.c keeps WINDOW
frames in flight per allocation (client → relay → peer → relay → client: 2 relayed packets per
round trip). Bounded in time (about 30 s); every process is started in the lab and removed with
it (`Lab.down`), the lab in a finally block.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

from bench.stun_bench import build_c, group_cpu
from bench.turn_bench import REALM, TURNLOAD, WARMUP, _request, _transact
from natkit.addr import Address
from natkit.config import loads
from natkit.stun import AttrType, Method

__all__ = ["measure"]

SERVER = "203.0.113.10"
PORT = 3478


def _config(engine: str, fast_path: str) -> dict[str, Any]:
    return {
        "version": 1,
        "stun": {
            "listen": [f"udp://{SERVER}:{PORT}"],
            "software": "",
            "workers": 1,
            "rate_limit": {"enabled": False},
            "fast_path": fast_path,
        },
        "metrics": {"listen": None},
        "logging": {"level": "warning"},
        "turn": {
            "enabled": True,
            "engine": engine,
            "realm": REALM,
            "auth": {"users": {"alice": "wonderland"}},
            "relay": {"address": SERVER, "ports": "50000-50999"},
            "quota": {"per_user": 1000, "total": 2000},
            "drain_timeout": 0.1,  # SIGTERM ends the run at once: the next server needs the ports
            "peers": {"allow": ["203.0.113.0/24"]},
        },
    }


@contextmanager
def _server(lab: Any, tmp: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    engine, fast_path = {"kernel": ("builtin", "kernel"), "user": ("builtin", "off"),
                         "coturn": ("coturn", "off")}[name]  # fmt: skip
    config = _config(engine, fast_path)
    if engine == "coturn":
        from natkit.turn import coturn

        rendered = tmp / "turnserver.conf"
        text = coturn.render(loads(yaml.safe_dump(config)), coturn.detect_version(),
                             runtime_dir=str(tmp))  # fmt: skip
        coturn.write_private(str(rendered), text)
        argv = ["turnserver", "-c", str(rendered)]
    else:
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [sys.executable, "-m", "natkit", "serve", "-c", str(path)]
    with _spawned(lab, tmp / f"{name}.log", argv, turn=True) as proc:
        yield proc


@contextmanager
def _spawned(lab: Any, log_path: Path, argv: list[str], turn: bool) -> Iterator[Any]:
    """`argv` in node server in a session of its own, until user space answers (`_wait`);
    SIGTERM to its group at the end (the workers too), SIGKILL after 10 s."""
    with log_path.open("wb") as log:
        proc = lab.spawn("server", argv, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)  # fmt: skip
    try:
        _wait(lab, turn)
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(lab: Any, turn: bool = True) -> None:
    """Until user space answers: an Allocate (its 401) with TURN, else a Binding with an
    attribute (the kernel answers plain ones before the workers have bound)."""
    sock = lab.socket("peer")
    sock.settimeout(0.2)
    if turn:
        probe = _request(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)])
    else:
        probe = _request(Method.BINDING, [(AttrType.SOFTWARE, "natkit-bench")])
    try:
        for _ in range(100):
            sock.sendto(probe, (SERVER, PORT))
            try:
                sock.recv(2048)
                return
            except TimeoutError:
                continue
    finally:
        sock.close()
    raise RuntimeError("the TURN server in the lab did not answer")


def _generate(lab: Any, pid: int, allocs: int, window: int, seconds: float) -> dict[str, float]:
    peer_ip = lab.address("peer")
    assert peer_ip.startswith("203.0.113."), peer_ip  # the relay sends to the lab only
    with ExitStack() as stack:
        peer = lab.socket("peer")
        stack.callback(peer.close)
        peer.bind((peer_ip, 0))
        peer_addr = Address(*peer.getsockname())
        clients = []
        for _ in range(allocs):
            sock = lab.socket("peer")
            stack.callback(sock.close)
            sock.bind((peer_ip, 0))
            sock.settimeout(2)
            sock.connect((SERVER, PORT))
            _transact(sock, Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)])
            bind = [(AttrType.CHANNEL_NUMBER, 0x4000), (AttrType.XOR_PEER_ADDRESS, peer_addr)]
            _transact(sock, Method.CHANNEL_BIND, bind)
            clients.append(sock)
        argv = [str(TURNLOAD), "-p", str(peer.fileno()), "-w", str(window), "-d", str(seconds),
                "-W", str(WARMUP)]  # fmt: skip
        for sock in clients:
            argv += ["-c", f"{sock.fileno()}:{0x4000}"]
        fds = [peer.fileno(), *(s.fileno() for s in clients)]
        cpu_before, started = group_cpu(pid), time.monotonic()
        proc = lab.spawn("peer", argv, stdout=subprocess.PIPE, pass_fds=fds, text=True)
        out, _ = proc.communicate(timeout=WARMUP + seconds + 10)
        if proc.returncode != 0:
            raise RuntimeError(f"turnload failed with status {proc.returncode}")
        result: dict[str, float] = json.loads(out)
        result["server_cpu_share"] = (group_cpu(pid) - cpu_before) / (time.monotonic() - started)
        return result


def measure(
    allocs: int = 16, window: int = 8, seconds: float = 3.0, rounds: int = 2
) -> dict[str, Any]:
    """relayed pkt/s per server (median of `rounds`), in one lab."""
    from natkit.lab import Lab

    build_c("turnload")
    names = ["kernel", "user"] + (["coturn"] if shutil.which("turnserver") else [])
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    lab = Lab.up("open")
    try:
        links = lab.exec("peer", ["ip", "-o", "link", "show"], check=True).stdout
        for line in links.splitlines():
            device = line.split(": ")[1].split("@")[0]
            if device != "lo":
                lab.exec("peer", ["ethtool", "-K", device, "tx", "off"], check=True)
        with tempfile.TemporaryDirectory(prefix="natkit-bench-") as tmpdir:
            for _ in range(rounds):
                for name in names:
                    with _server(lab, Path(tmpdir), name) as proc:
                        try:
                            rows[name].append(_generate(lab, proc.pid, allocs, window, seconds))
                        except RuntimeError as err:
                            raise RuntimeError(f"{name}: {err}") from None
    finally:
        lab.down()
    result: dict[str, Any] = {}
    for name, runs in rows.items():
        result[name] = {
            "relayed_pps": statistics.median(2 * r["round_trips_per_s"] for r in runs),
            "server_cpu_cores": statistics.median(r["server_cpu_share"] for r in runs),
        }
    return result


def report(result: dict[str, Any]) -> None:
    labels = {"kernel": "natkit, kernel fast path", "user": "natkit builtin, user space",
              "coturn": "coturn"}  # fmt: skip
    print("TURN ChannelData relay in a lab (server node / generator node, 1 server process, "
          "16 allocations x window 8)")  # fmt: skip
    for name, row in result.items():
        print(f"  {labels[name]:<27} {row['relayed_pps']:>10,.0f} relayed pkt/s   server CPU "
              f"{row['server_cpu_cores']:.2f} cores")  # fmt: skip
    kernel = result["kernel"]["relayed_pps"]
    print(f"  ratio kernel/user space: {kernel / result['user']['relayed_pps']:.2f}")
    if "coturn" in result:
        print(f"  ratio kernel/coturn:     {kernel / result['coturn']['relayed_pps']:.2f}")


# -- STUN Binding in the lab -------------------------------------------------------------------

SOURCES = 64  # client addresses in node peer (203.0.113.150-213): natkit steers by source


def _stun_config(fast_path: str) -> dict[str, Any]:
    config = _config("builtin", fast_path)
    config["stun"]["workers"] = os.cpu_count() or 1
    del config["turn"]
    return config


@contextmanager
def _stun_server(lab: Any, tmp: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    if name == "coturn":
        from bench.stun_bench import coturn_argv

        argv = coturn_argv("turnserver", tmp, PORT)
        argv[argv.index("-L") + 1] = SERVER
    else:
        path = tmp / f"stun-{name}.yaml"
        path.write_text(yaml.safe_dump(_stun_config("kernel" if name == "kernel" else "off")))
        argv = [sys.executable, "-m", "natkit", "serve", "-c", str(path)]
    with _spawned(lab, tmp / f"stun-{name}.log", argv, turn=False) as proc:
        yield proc


def _loadgen(lab: Any, seconds: float, rate: float = 0.0) -> dict[str, Any]:
    from bench.stun_bench import LOADGEN

    # Two generator threads: a kernel answer runs on the sender's CPU, so one thread would
    # measure the generator.
    argv = [str(LOADGEN), "-s", SERVER, "-b", "203.0.113.150", "-n", str(SOURCES), "-p",
            str(PORT), "-c", str(SOURCES), "-w", "4", "-d", str(seconds), "-W", "0.5",
            "-t", "2"]  # fmt: skip
    if rate:
        argv += ["-r", str(int(rate))]
    done = lab.exec("peer", argv, timeout=seconds + 20, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure_stun(seconds: float = 2.5, rounds: int = 3) -> dict[str, Any]:
    """Binding responses/s (closed loop, median of `rounds`) and p50/p99 at 2k/s per server,
    the generator in node `peer` with 64 source addresses."""
    from natkit.lab import Lab

    build_c("loadgen")
    names = ["kernel", "user"] + (["coturn"] if shutil.which("turnserver") else [])
    rows: dict[str, list[float]] = {name: [] for name in names}
    light: dict[str, dict[str, Any]] = {}
    lab = Lab.up("open")
    try:
        device = lab.exec("peer", ["ip", "-o", "-4", "addr", "show"], check=True).stdout
        device = next(line.split()[1] for line in device.splitlines() if "203.0.113." in line)
        for i in range(SOURCES):  # the lab's own internet: 203.0.113.0/24
            lab.exec("peer", ["ip", "addr", "add", f"203.0.113.{150 + i}/24", "dev", device],
                     check=True)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="natkit-bench-") as tmpdir:
            for name in names:
                with _stun_server(lab, Path(tmpdir), name):
                    for _ in range(rounds):
                        rows[name].append(_loadgen(lab, seconds)["rate"])
                    light[name] = _loadgen(lab, seconds, rate=2000)
    finally:
        lab.down()
    return {
        name: {
            "rps": statistics.median(rows[name]),
            "p50_us": light[name]["p50_us"],
            "p99_us": light[name]["p99_us"],
        }
        for name in names
    }


def report_stun(result: dict[str, Any]) -> None:
    labels = {"kernel": "natkit, kernel fast path", "user": "natkit, user space",
              "coturn": "coturn --stun-only"}  # fmt: skip
    print("STUN Binding in a lab (server node / generator node with 64 addresses)")
    for name, row in result.items():
        print(f"  {labels[name]:<27} {row['rps']:>10,.0f} responses/s   p50/p99 at 2k/s "
              f"{row['p50_us']}/{row['p99_us']} us")  # fmt: skip
    kernel = result["kernel"]["rps"]
    print(f"  ratio kernel/user space: {kernel / result['user']['rps']:.2f}")
    if "coturn" in result:
        print(f"  ratio kernel/coturn:     {kernel / result['coturn']['rps']:.2f}")
