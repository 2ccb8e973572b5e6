"""TURN allocation rate and the cost of a live allocation: natkit's builtin engine vs coturn.

Steps, all on 127.0.0.1 and bounded (N = 2000 allocations per engine, < 30 s in all):
1. start natkit serve (builtin TURN, 1 worker) and coturn (rendered by natkit from the same
   config) on free ports, REST API credentials (``turn.auth.secret``), quotas above N;
2. against each, the same Python client (natkit's codec, as bench/turn_bench.py sets up its
   relays): N UDP sockets, one allocation each, each the way a real client does it: an
   unauthenticated Allocate, the 401 with a nonce, the signed Allocate (its own REST username
   and password). WINDOW allocations are in flight at once; lost datagrams are retransmitted.
   allocations/s = N / the time from the first request to the last success;
3. the server's cost: file descriptors (/proc/PID/fd) and RSS (/proc/PID/status) summed over
   its process group, read at 0 and at N live allocations; the difference / N.
The client's CPU is printed beside the servers': a client near 1 core bounds the figure.
Every process is started in its own session and killed (group) in a finally block.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stun_bench import group_cpu
from bench.turn_bench import child, wait_udp
from natkit.config import loads
from natkit.stun import AttrType, Message, MessageClass, Method, parse_message
from natkit.stun.errors import StunDecodeError
from natkit.stun.integrity import long_term_key
from natkit.testing import free_port
from natkit.turn.credentials import mint

HOST = "127.0.0.1"
REALM = "natkit.bench"
SECRET = "natkit-bench-secret"
RETRANSMIT = 0.25  # seconds before an unanswered request of a window is sent again
CONFIG = """
version: 1
stun: {{listen: ["udp://127.0.0.1:{port}"], software: "", workers: 1,
        rate_limit: {{enabled: false}}}}
metrics: {{listen: null}}
logging: {{level: warning}}
turn:
  enabled: true
  engine: {engine}
  realm: natkit.bench
  auth: {{secret: {secret}}}
  relay: {{address: 127.0.0.1, ports: "{low}-{high}"}}
  lifetime: {{default: 600}}
  quota: {{per_user: 10, total: {total}}}
"""


def bench_config(engine: str, port: int, count: int) -> str:
    # Below the ephemeral range (32768-60999), so no client socket takes a relay port.
    low = 20000 + (os.getpid() * 7) % 8000
    high = low + count + 200
    return CONFIG.format(engine=engine, port=port, secret=SECRET, low=low, high=high,
                         total=count + 100)  # fmt: skip


@contextmanager
def server(engine: str, workdir: Path, count: int) -> Iterator[tuple[int, int]]:
    """The engine on a free port: yields (port, its process group)."""
    port = free_port()
    text = bench_config(engine, port, count)
    conf = workdir / f"{engine}.yaml"
    conf.write_text(text)
    if engine == "builtin":
        with child([sys.executable, "-m", "natkit", "serve", "-c", str(conf)], "listening",
                   workdir) as proc:  # fmt: skip
            wait_udp(port)
            yield port, proc.pid
        return
    from natkit.turn import coturn

    rendered = workdir / "turnserver.conf"
    version = coturn.detect_version()
    coturn.write_private(str(rendered), coturn.render(loads(text), version,
                                                      runtime_dir=str(workdir)))  # fmt: skip
    with child(["turnserver", "-c", str(rendered)], None, workdir) as proc:
        wait_udp(port)
        yield port, proc.pid


# -- the server's cost ------------------------------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def footprint(pgid: int) -> tuple[int, int]:
    """(open fds, RSS bytes) summed over process group `pgid`."""
    fds = rss = 0
    for pid in group_pids(pgid):
        try:
            fds += len(os.listdir(f"/proc/{pid}/fd"))
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return fds, rss


# -- the client -------------------------------------------------------------------------------


@dataclass
class Pending:
    sock: socket.socket
    username: str
    key: bytes
    nonce: str | None = None  # None: the unauthenticated first Allocate is out
    sent: float = 0.0
    done: bool = False


def _allocate(p: Pending) -> bytes:
    attrs: list[tuple[int, Any]] = [(AttrType.REQUESTED_TRANSPORT, 17)]
    tid = os.urandom(12)
    if p.nonce is None:
        return Message(Method.ALLOCATE, MessageClass.REQUEST, tid, attrs).encode()
    attrs += [(AttrType.USERNAME, p.username), (AttrType.REALM, REALM), (AttrType.NONCE, p.nonce)]
    return Message(Method.ALLOCATE, MessageClass.REQUEST, tid, attrs).encode(integrity_key=p.key)


def _answer(p: Pending, data: bytes) -> None:
    try:
        msg = parse_message(data)
    except StunDecodeError:
        return
    if msg.message_class is MessageClass.SUCCESS:
        p.done = True
    elif p.nonce is None and isinstance(msg.get(AttrType.NONCE), str):
        p.nonce = str(msg.get(AttrType.NONCE))
    else:
        raise RuntimeError(f"Allocate refused: {msg.get(AttrType.ERROR_CODE)!r}")


def _window(sel: selectors.BaseSelector, batch: list[Pending], deadline: float) -> None:
    """Drive `batch` to success: send what is due, read what comes, retransmit after a pause."""
    for p in batch:
        sel.register(p.sock, selectors.EVENT_READ, p)
    try:
        while not all(p.done for p in batch):
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError("allocations did not finish in time")
            for p in batch:
                if not p.done and now - p.sent > RETRANSMIT:
                    p.sock.send(_allocate(p))
                    p.sent = now
            for key, _ in sel.select(RETRANSMIT):
                p = key.data
                while not p.done:
                    try:
                        data = p.sock.recv(2048)
                    except BlockingIOError:
                        break
                    state = p.nonce
                    _answer(p, data)
                    if not p.done and p.nonce != state:
                        p.sock.send(_allocate(p))  # the signed Allocate, at once
                        p.sent = time.monotonic()
    finally:
        for p in batch:
            sel.unregister(p.sock)


def allocate_all(port: int, count: int, window: int, stack: ExitStack) -> tuple[float, float]:
    """`count` allocations on their own sockets, `window` at a time: (seconds, client CPU s)."""
    pending = []
    now = time.time()
    for i in range(count):
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sock.connect((HOST, port))
        sock.setblocking(False)
        cred = mint(SECRET, f"bench{i}", 3600, now)
        pending.append(Pending(sock, cred.username, long_term_key(cred.username, REALM,
                                                                  cred.password)))  # fmt: skip
    sel = selectors.DefaultSelector()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    for i in range(0, count, window):
        _window(sel, pending[i : i + window], started + 25)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    sel.close()
    return elapsed, (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)


def measure(engine: str, workdir: Path, count: int, window: int) -> dict[str, float]:
    with ExitStack() as stack:
        port, pgid = stack.enter_context(server(engine, workdir, count))
        time.sleep(0.3)  # let start-up settle before the baseline
        fds0, rss0 = footprint(pgid)
        cpu0 = group_cpu(pgid)
        seconds, client_cpu = allocate_all(port, count, window, stack)
        server_cpu = group_cpu(pgid) - cpu0
        fds1, rss1 = footprint(pgid)
    return {
        "allocations_per_s": round(count / seconds),
        "fds_per_allocation": round((fds1 - fds0) / count, 3),
        "rss_bytes_per_allocation": round((rss1 - rss0) / count),
        "server_cpu_cores": round(server_cpu / seconds, 2),
        "client_cpu_cores": round(client_cpu / seconds, 2),
        "fds_at_0": fds0,
        "rss_mb_at_0": round(rss0 / 2**20, 1),
    }


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench alloc", description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--engines", default="builtin,coturn", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    _raise_fd_limit(args.count + 256)
    engines = [e for e in args.engines.split(",") if e != "coturn" or shutil.which("turnserver")]
    started = time.monotonic()
    summary: dict[str, Any] = {"count": args.count, "window": args.window}
    print(
        f"TURN Allocate over UDP, 127.0.0.1, {os.cpu_count()} cores shared with the client: "
        f"{args.count} allocations (REST credentials, 401 + signed Allocate each), "
        f"{args.window} in flight"
    )
    with tempfile.TemporaryDirectory(prefix="natkit-alloc-bench-") as tmp:
        for engine in engines:
            summary[engine] = row = measure(engine, Path(tmp), args.count, args.window)
            print(f"  {engine:8} {row['allocations_per_s']:8,} alloc/s   "
                  f"{row['fds_per_allocation']:.2f} fd and "
                  f"{row['rss_bytes_per_allocation']:,} B RSS per allocation   "
                  f"CPU: server {row['server_cpu_cores']:.2f}, client "
                  f"{row['client_cpu_cores']:.2f} cores")  # fmt: skip
    if "builtin" in summary and "coturn" in summary:
        b, c = summary["builtin"], summary["coturn"]
        ratios = {
            "allocations_per_s": b["allocations_per_s"] / max(1, c["allocations_per_s"]),
            "fds_per_allocation": b["fds_per_allocation"] / max(1e-9, c["fds_per_allocation"]),
            "rss_per_allocation": b["rss_bytes_per_allocation"]
            / max(1, c["rss_bytes_per_allocation"]),
        }
        summary["ratio_builtin_vs_coturn"] = {k: round(v, 2) for k, v in ratios.items()}
        print(f"  ratio builtin/coturn: {ratios['allocations_per_s']:.2f}x alloc/s, "
              f"{ratios['fds_per_allocation']:.2f}x fds, {ratios['rss_per_allocation']:.2f}x RSS "
              "per allocation")  # fmt: skip
    print(f"  took {time.monotonic() - started:.1f} s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
