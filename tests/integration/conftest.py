"""Fixtures that run `natkit serve` on loopback with free ports, and always stop it.

`natkit_serve(stun={...}, ...)` writes a config file, starts ``python -m natkit serve -c FILE`` in
its own session, waits for its ``listening`` lines and returns a `Served` handle. Every process a
test started is in a registry; teardown SIGTERMs its process group and SIGKILLs what remains, so a
failed test never leaves a server (or a worker) behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

HOST = "127.0.0.1"
MAGIC = 0x2112A442


RELAY_PORTS = range(49152, 65536)
"""The default turn.relay.ports: a listener there is refused at load (it would collide)."""


def free_port(host: str = HOST) -> int:
    """A port free for both UDP and TCP on `host`, outside the default relay port range."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port: int = u.getsockname()[1]
            if port in RELAY_PORTS:
                continue
            try:
                with socket.socket(family, socket.SOCK_STREAM) as t:
                    t.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def binding_request(tid: bytes | None = None) -> tuple[bytes, bytes]:
    tid = tid or os.urandom(12)
    return struct.pack("!HHI", 0x0001, 0, MAGIC) + tid, tid


def children(pid: int) -> list[int]:
    """Direct children of `pid` from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry))
    return out


def _is_resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"resource_tracker" in f.read()
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Served:
    proc: subprocess.Popen[str]
    config_path: Path
    port: int
    metrics_port: int | None
    lines: list[str] = field(default_factory=list)

    def metrics(self) -> str:
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
        return body.decode()

    def metric(self, pattern: str) -> float:
        """Sum of every sample whose `name{labels}` matches the regex `pattern`."""
        total = 0.0
        for line in self.metrics().splitlines():
            name, _, value = line.rpartition(" ")
            if not line.startswith("#") and re.fullmatch(pattern, name):
                total += float(value)
        return total

    def workers(self) -> list[int]:
        """Worker pids: children but multiprocessing's resource tracker (the TURN quota lock's
        semaphore starts one)."""
        return [pid for pid in children(self.proc.pid) if not _is_resource_tracker(pid)]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def reap(proc: subprocess.Popen[Any]) -> int:
    """`stop_process`, then close the pipes we opened to it; returns the exit status."""
    status = stop_process(proc)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return status


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM the session we started, then SIGKILL it; returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def start_serve(
    config_path: Path, expect_lines: int, timeout: float = 30.0
) -> tuple[subprocess.Popen[str], list[str]]:
    """Start natkit serve; return once it printed `expect_lines` lines (or exited)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "natkit", "serve", "-c", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    # Raw reads: a buffered readline would hide the second line from the selector.
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    raw = b""
    while raw.count(b"\n") < expect_lines and time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            raw += chunk
    lines = raw.decode().splitlines()[:expect_lines] if raw.count(b"\n") else []
    sel.close()
    return proc, lines


@pytest.fixture
def natkit_serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[subprocess.Popen[str]] = []

    def start(
        *,
        stun: dict[str, Any] | None = None,
        metrics: bool = True,
        port: int | None = None,
        logging: dict[str, Any] | None = None,
        **extra: Any,
    ) -> Served:
        port = port or free_port()
        stun = dict(stun or {})
        stun.setdefault("listen", [f"udp://{HOST}:{port}", f"tcp://{HOST}:{port}"])
        stun.setdefault("workers", 1)
        mport = free_port() if metrics else None
        config = {
            "version": 1,
            "stun": stun,
            "metrics": {"listen": f"{HOST}:{mport}" if mport else None},
            "logging": logging or {"level": "info"},
            **extra,
        }
        path = tmp_path / f"natkit-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        expect = len(stun["listen"]) + (1 if mport else 0)
        proc, lines = start_serve(path, expect)
        started.append(proc)
        if len(lines) < expect:
            status = stop_process(proc)
            assert proc.stderr is not None
            pytest.fail(
                f"natkit serve did not start (status {status}): {lines} "
                f"{proc.stderr.read()[-2000:]}"
            )
        return Served(proc, path, port, mport, lines)

    yield start
    for proc in started:
        reap(proc)
