"""configs/examples/lab-server.yaml, started exactly as its header documents (needs root):

    natkit lab up port-restricted-cone --name NAME
    natkit lab exec NAME server -- natkit serve -c configs/examples/lab-server.yaml &
    natkit lab exec NAME peer -- natkit diagnose --stun 203.0.113.10 \\
        --turn 'turn:203.0.113.10:3478?transport=udp' --secret natkit-lab-only-secret

The server must come up on both lab addresses (RFC 5780), TCP 443, the rendezvous and metrics;
diagnose from `peer` must classify the NAT as port-restricted cone and get a relayed address and
a permission from the builtin TURN relay (the lab ranges are allowed, the secret is the file's).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NATKIT = str(BIN / "natkit")
CONFIG = "configs/examples/lab-server.yaml"
SERVER_LINES = 5  # three listeners, signal, metrics
SECRET = "natkit-lab-only-secret"


def _env() -> dict[str, str]:
    # As a user's shell after activating the venv: `natkit` on PATH, the lab secret unset.
    env = {k: v for k, v in os.environ.items() if k not in ("NATKIT_TURN_SECRET", "NATKIT_CONFIG")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _natkit(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["natkit", *argv], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _read_lines(proc: subprocess.Popen[str], count: int, timeout: float) -> list[str]:
    """The first `count` stdout lines (a reader thread: select() cannot see text buffers)."""
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(x.rstrip("\n")) for x in stdout], daemon=True
    ).start()
    got: list[str] = []
    deadline = time.monotonic() + timeout
    with contextlib.suppress(queue.Empty):
        while len(got) < count:
            got.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
    return got


def test_lab_server_example_serves_the_lab_and_diagnose_classifies_it() -> None:
    name = f"lsrv{os.getpid() % 100000}"
    up = _natkit("lab", "up", "port-restricted-cone", "--name", name)
    assert up.returncode == 0, up.stderr
    server: subprocess.Popen[str] | None = None
    try:
        assert up.stdout.strip() == name
        # The `&` of the documented command: `lab exec` runs in the foreground until serve ends.
        server = subprocess.Popen(
            ["natkit", "lab", "exec", name, "server", "--", "natkit", "serve", "-c", CONFIG],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        lines = _read_lines(server, SERVER_LINES, timeout=20)
        assert lines == [
            "listening udp://203.0.113.10:3478 (STUN + TURN, 1 worker)",
            "listening tcp://203.0.113.10:3478 (STUN + TURN, 1 worker)",
            "listening tcp://203.0.113.10:443 (STUN + TURN, 1 worker)",
            "signal http://203.0.113.10:8765",
            "metrics http://203.0.113.10:9641/metrics",
        ]
        done = _natkit(
            "lab", "exec", name, "peer", "--",
            "natkit", "diagnose", "--stun", "203.0.113.10",
            "--turn", "turn:203.0.113.10:3478?transport=udp", "--secret", SECRET,
            "--json", "--no-ice",
        )  # fmt: skip
        assert done.stdout, done.stderr
        report = json.loads(done.stdout)
        assert report["nat_type"] == "port-restricted-cone"
        assert report["mapping"] == "endpoint-independent"
        assert report["filtering"] == "address-and-port-dependent"
        assert report["public_address"].startswith("203.0.113.100:")
        (turn,) = report["turn"]
        steps = {step["name"]: step for step in turn["steps"]}
        assert steps["allocate"]["ok"], turn  # the lab-only secret of the file
        assert re.match(r"relayed 203\.0\.113\.10:49\d{3},", steps["allocate"]["detail"])
        # The check's peer is its second allocation (relay to relay), so it works through the
        # port-restricted NAT, and the whole round trip passes.
        assert turn["ok"] and turn["method"] == "two-allocations", turn
    finally:
        down = _natkit("lab", "down", name)
        if server is not None:
            try:
                server.wait(10)  # lab down stops what runs in its nodes
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        assert down.returncode == 0, down.stderr
