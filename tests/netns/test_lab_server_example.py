"""configs/examples/lab-server.yaml, started by the README's own commands, as written (root):

    sudo .venv/bin/natkit lab up port-restricted-cone --name demo
    sudo .venv/bin/natkit lab exec demo server -- .venv/bin/natkit serve -c configs/examples/... &
    sudo .venv/bin/natkit lab exec demo peer -- .venv/bin/natkit diagnose --stun 203.0.113.10 ...
    sudo .venv/bin/natkit lab down demo

(tests/integration/test_readme_commands.py lists them as run here). The server must come up on
both lab addresses (RFC 5780), TCP 443, the rendezvous and metrics; diagnose from `peer` must
classify the NAT as port-restricted cone and relay through the builtin TURN relay with the
file's lab-only secret.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.readme_shell import readme_env

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/examples/lab-server.yaml"
SERVER_LINES = 5  # three listeners, signal, metrics
SECRET = "natkit-lab-only-secret"


def _env(tmp: Path) -> dict[str, str]:
    return readme_env(tmp)


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


def _readme_demo_commands() -> list[str]:
    """The README's `demo` lab commands, in order, without their comments."""
    text = (ROOT / "README.md").read_text()
    found = [
        line.split("  #")[0].rstrip()
        for line in text.splitlines()
        if line.startswith("sudo .venv/bin/natkit lab ") and " demo" in line
    ]
    assert len(found) == 4, found
    return found


def _shell(command: str) -> list[str]:
    return ["bash", "-c", command]


def test_lab_server_example_serves_the_lab_and_diagnose_classifies_it(tmp_path: Path) -> None:
    up_cmd, serve_cmd, diagnose_cmd, down_cmd = _readme_demo_commands()
    assert serve_cmd.endswith(" &") and CONFIG in serve_cmd and "--json" not in diagnose_cmd
    env = _env(tmp_path)
    assert ROOT.joinpath(".venv/bin/natkit").exists(), "the README's commands need make install"
    up = subprocess.run(_shell(up_cmd), cwd=ROOT, env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    server: subprocess.Popen[str] | None = None
    try:
        assert up.stdout.strip() == "demo"
        # The `&`: `lab exec` runs in the foreground until serve ends; here it is our child.
        server = subprocess.Popen(
            _shell(serve_cmd.removesuffix(" &")),
            cwd=ROOT,
            env=env,
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
        text = subprocess.run(
            _shell(diagnose_cmd), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert "port-restricted" in text.stdout, (text.stdout, text.stderr)
        # The same diagnosis as data, for exact assertions (--json, --no-ice: the README's line
        # plus two flags).
        done = subprocess.run(
            _shell(f"{diagnose_cmd} --json --no-ice"),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
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
        # port-restricted NAT, and the whole round trip passes: exit 0, a direct path is possible.
        assert turn["ok"] and turn["method"] == "two-allocations", turn
        assert text.returncode == done.returncode == 0, text.stdout
    finally:
        down = subprocess.run(_shell(down_cmd), cwd=ROOT, env=env, capture_output=True, text=True)
        if server is not None:
            try:
                server.wait(10)  # lab down stops what runs in its nodes
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        assert down.returncode == 0, down.stderr
