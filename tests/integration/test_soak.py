"""Soak: natkit serve (builtin TURN + signal, 1 worker) under legitimate load and attacks at once.

For `SOAK_SECONDS` (bounded, the whole test < 2 minutes) on loopback:

- legitimate UDP clients (127.0.0.1) allocate with short lifetimes (``turn.lifetime``), bind a
  channel to a loopback echo peer (the one address ``turn.peers.allow`` opens), relay round trips
  through it, then end the allocation one of three ways: Refresh(0), letting it expire and
  re-allocating from the same 5-tuple right at expiry (issue 11 item 1), or abandoning it;
- a legitimate TCP client (Binding over TCP) and a legitimate signal client (whole pairings);
- attacks (`ATTACKS`, from 127.0.0.2/.3 where the source matters): fuzzed UDP datagrams and TCP
  frames, oversized USERNAME, unauthenticated Allocates, a permission flood (one allocation,
  CreatePermission with hundreds of XOR-PEER-ADDRESS: permissions only, nothing is ever sent to
  those addresses), TCP slowloris (1 byte every 2 s on as many connections as the server takes),
  a signal-rendezvous flood.

At the end: every legitimate client was served (each relay round trip, Binding and pairing
succeeded; lost datagrams are retried a bounded number of times), the worker is the same process,
its fd count is back to the baseline measured before any traffic (and the supervisor's too), its
RSS is within 10% of the RSS after the warm-up, and the log holds no traceback.

Run parts alone: ``NATKIT_SOAK_ATTACKS=fuzz,slowloris`` (or ``none``), ``NATKIT_SOAK_SECONDS=20``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from natkit.addr import Address
from tests.integration.conftest import HOST, children, free_port, stop_process
from tests.integration.soak_clients import (
    ATTACK_RUNNERS,
    LIFETIME,
    MAX_CONNECTIONS,
    REALM,
    USERS,
    Soak,
    echo_peer,
    legit_signal,
    legit_tcp,
    legit_udp,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ATTACKS = tuple(ATTACK_RUNNERS)  # fuzz, username, unauth, permissions, slowloris, signal
SOAK_SECONDS = float(os.environ.get("NATKIT_SOAK_SECONDS", "50"))
WARMUP = 6.0
RELAY_LOW = 20000 + os.getpid() % 10000


def selected() -> tuple[str, ...]:
    text = os.environ.get("NATKIT_SOAK_ATTACKS", "all")
    if text == "all":
        return ATTACKS
    chosen = tuple(a for a in text.split(",") if a and a != "none")
    unknown = set(chosen) - set(ATTACKS)
    assert not unknown, f"NATKIT_SOAK_ATTACKS: unknown {sorted(unknown)}; known {ATTACKS}"
    return chosen


def config(port: int, signal_port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "stun": {
            "listen": [f"udp://{HOST}:{port}", f"tcp://{HOST}:{port}"],
            "workers": 1,
            "rate_limit": {"enabled": False},  # the attacks must reach TURN, not the limiter
            "stream": {"max_connections": MAX_CONNECTIONS, "idle_timeout": 10.0},
        },
        "turn": {
            "enabled": True,
            "engine": "builtin",
            "realm": REALM,
            "auth": {"users": USERS},
            # 40 ports (below the ephemeral range): a leaked relay socket soon costs a client.
            "relay": {"ports": f"{RELAY_LOW}-{RELAY_LOW + 39}"},
            "lifetime": {"default": LIFETIME, "max": 2 * LIFETIME},
            "quota": {"per_user": 20, "total": 40},
            "peers": {"allow": [f"{HOST}/32"]},
        },
        "signal": {"enabled": True, "listen": f"{HOST}:{signal_port}"},
        "metrics": {"listen": None},
        "logging": {"level": "info"},
    }


# -- /proc ------------------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(ln for ln in f if ln.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def worker_pid(supervisor: int) -> int:
    for pid in children(supervisor):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                return pid
    raise AssertionError("no worker process found")


@contextlib.contextmanager
def running(soak: Soak, attacks: tuple[str, ...], peer: socket.socket) -> Iterator[None]:
    targets: list[Callable[[], None]] = [lambda: echo_peer(soak, peer)]
    targets += [lambda i=i: legit_udp(soak, i) for i in range(4)]  # type: ignore[misc]
    targets += [lambda: legit_tcp(soak), lambda: legit_signal(soak)]
    targets += [lambda a=a: ATTACK_RUNNERS[a](soak) for a in attacks]  # type: ignore[misc]
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        soak.until = min(soak.until, time.monotonic())
        for thread in threads:
            thread.join(timeout=15)


def settle(pid: int, target: int, timeout: float) -> int:
    """Poll `pid`'s fd count until it is at most `target` or `timeout` passes; the last."""
    deadline = time.monotonic() + timeout
    value = fd_count(pid)
    while value > target and time.monotonic() < deadline:
        time.sleep(0.25)
        value = fd_count(pid)
    return value


@contextlib.contextmanager
def serve(path: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """natkit serve with its log in a file (a pipe nobody reads would block it); always reaped."""
    with log.open("wb") as err:
        argv = [sys.executable, "-m", "natkit", "serve", "-c", str(path)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    try:
        assert proc.stdout is not None
        for _ in range(3):  # two listeners and the signal URL
            assert proc.stdout.readline(), f"natkit serve did not start: {log.read_text()}"
        yield proc
    finally:
        stop_process(proc)
        assert proc.stdout is not None
        proc.stdout.close()


# -- the test ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attacks", [selected()], ids=lambda a: "+".join(a) or "none")
def test_soak(attacks: tuple[str, ...], tmp_path: Path) -> None:
    port, signal_port = free_port(), free_port()
    path = tmp_path / "soak.yaml"
    path.write_text(yaml.safe_dump(config(port, signal_port)))
    log = tmp_path / "serve.log"
    with serve(path, log) as proc:
        worker = worker_pid(proc.pid)
        time.sleep(0.5)
        fds0 = {pid: fd_count(pid) for pid in (proc.pid, worker)}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((HOST, 0))
            until = time.monotonic() + WARMUP + SOAK_SECONDS
            echo = Address(*peer.getsockname())
            soak = Soak(Address(HOST, port), Address(HOST, signal_port), until, echo)
            with running(soak, attacks, peer):
                time.sleep(WARMUP)
                rss0 = rss(worker)
                while soak.running() and proc.poll() is None:
                    time.sleep(0.5)
        # Abandoned allocations expire (lifetime + the 1 s sweep); idle connections close.
        fds1 = {pid: settle(pid, fds0[pid], 2 * LIFETIME + 12) for pid in fds0}
        rss1 = rss(worker)
        assert worker_pid(proc.pid) == worker, "the worker was respawned (it crashed)"
    # Every criterion is checked, so one run names all that fail.
    problems = [verdict(soak.failures)] if soak.failures else []
    served = soak.served
    if served.get("round trip", 0) < 40 or served.get("pairing", 0) < 3:
        problems.append(f"too little legitimate traffic got through: {served}")
    if served.get("tcp binding", 0) < 10:
        problems.append(f"too few TCP Bindings answered: {served}")
    if fds1 != fds0:
        problems.append(f"leaked file descriptors: before {fds0}, after {fds1} (pid: count)")
    if rss1 > 1.10 * rss0:
        problems.append(f"worker RSS grew from {rss0 / 2**20:.1f} to {rss1 / 2**20:.1f} MB")
    text = log.read_text()
    if "Traceback" in text:
        problems.append("traceback in the log: " + text[text.index("Traceback") :][:1500])
    assert not problems, "\n".join(problems)


def verdict(failures: list[str]) -> str:
    """`failures` counted by client, with the first message of each."""
    kinds: dict[str, list[str]] = {}
    for failure in failures:
        kinds.setdefault(failure.split(":")[0].split(" cycle")[0], []).append(failure)
    parts = [f"{kind}: {len(f)}x, e.g. {f[0]}" for kind, f in sorted(kinds.items())]
    return "legitimate clients not served: " + "; ".join(parts)
