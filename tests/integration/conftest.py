"""Fixtures that run `natkit serve` on loopback with free ports, and always stop it.

`natkit_serve(stun={...}, ...)` fills in loopback listeners on a free port, `workers: 1` and a
metrics port, then starts the server with `natkit.testing.launch` (the shipped helpers: config
file, own session, waits for the ``listening`` lines) and returns its `Served` handle. Every
process a test started is in a registry; teardown reaps it (SIGTERM to the process group, SIGKILL
to what remains), so a failed test never leaves a server (or a worker) behind. The helpers the
test files import from here are re-exported from `natkit.testing`.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from natkit import testing
from natkit.testing import Served, ServeError, children, launch, reap, start_serve, stop_process

__all__ = [
    "HOST",
    "MAGIC",
    "Served",
    "alive",
    "binding_request",
    "children",
    "free_port",
    "has_ipv6_loopback",
    "reap",
    "start_serve",
    "stop_process",
]

HOST = "127.0.0.1"
MAGIC = 0x2112A442


def free_port(host: str = HOST) -> int:
    """A port free for both UDP and TCP on `host`, outside the default relay port range."""
    return testing.free_port("udp+tcp", host)


def binding_request(tid: bytes | None = None) -> tuple[bytes, bytes]:
    tid = tid or os.urandom(12)
    return struct.pack("!HHI", 0x0001, 0, MAGIC) + tid, tid


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


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
        turn = extra.get("turn")
        if isinstance(turn, dict) and turn.get("engine", "builtin") == "builtin":
            # A test's live allocations would hold the stop for the default drain (10 s each
            # time); the drain tests set their own.
            extra["turn"] = {"drain_timeout": 0.5, **turn}
        config = {
            "version": 1,
            "stun": stun,
            "metrics": {"listen": f"{HOST}:{mport}" if mport else None},
            "logging": logging or {"level": "info"},
            **extra,
        }
        try:
            served = launch(config, tmp_path / f"natkit-{len(started)}.yaml")
        except ServeError as err:
            pytest.fail(str(err))
        started.append(served.proc)
        served.port = port
        return served

    yield start
    for proc in started:
        reap(proc)
