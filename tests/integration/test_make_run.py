"""A fresh clone: `make run`, then the README's health check, as a new operator types them.

The clone reuses this worktree's virtualenv (a symlink, and ``make -o install`` so make does not
reinstall: the clone's pyproject.toml is newer than the venv's stamp) — everything else is the
clone's own: configs/natkit.yaml (wildcard listeners, the relay on this host's default-route
address, the default deny list) and the secret `make run` generates in .natkit/turn-secret.
The check passes because its peer is a second allocation on the same relay, which the default
policy allows (relay to relay, relay ports only). SIGTERM to make must stop everything it started.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from natkit.turn.engine import host_relay_ips

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Exactly as the README prints it (run from the clone).
HEALTH_CHECK = (
    '.venv/bin/natkit turn check turn:127.0.0.1:3478 --secret "$(cat .natkit/turn-secret)"'
)
PORTS = [(socket.SOCK_DGRAM, 3478), (socket.SOCK_STREAM, 3478), (socket.SOCK_STREAM, 9641)]


def _port_free(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("0.0.0.0" if port == 3478 else "127.0.0.1", port))
        except OSError:
            return False
    return True


def _session(sid: int) -> list[int]:
    """Live processes of session `sid` (from /proc: field 6 of stat)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _wait_for_lines(proc: subprocess.Popen[bytes], count: int, timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout.fileno(), selectors.EVENT_READ)
    out, deadline = b"", time.monotonic() + timeout
    while out.count(b"listening") + out.count(b"metrics http") < count:
        if time.monotonic() > deadline or proc.poll() is not None:
            break
        if sel.select(0.2):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
    sel.close()
    return out.decode()


def test_fresh_clone_make_run_passes_the_readme_health_check(tmp_path: Path) -> None:
    if not host_relay_ips().get(4):
        pytest.skip("this host has no non-loopback IPv4 address for the relay to use")
    busy = [f"{port}/{'udp' if k == socket.SOCK_DGRAM else 'tcp'}" for k, port in PORTS
            if not _port_free(k, port)]  # fmt: skip
    if busy:
        pytest.skip(f"configs/natkit.yaml's ports are in use here: {', '.join(busy)}")
    clone = tmp_path / "natkit"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=60)
    (clone / ".venv").symlink_to(REPO / ".venv")
    env = {k: v for k, v in os.environ.items() if k not in ("NATKIT_TURN_SECRET", "NATKIT_CONFIG")}
    make = subprocess.Popen(
        ["make", "-o", "install", "run"], cwd=clone, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        out = _wait_for_lines(make, 3, timeout=30)
        assert "listening udp://0.0.0.0:3478" in out, out
        check = subprocess.run(
            ["bash", "-c", HEALTH_CHECK], cwd=clone, env=env, capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        assert "result: ok" in check.stdout and "method: two-allocations" in check.stdout
        make.send_signal(signal.SIGTERM)  # make only, as a CI cancel or `kill` would
        make.wait(timeout=15)
        deadline = time.monotonic() + 10
        while _session(make.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session(make.pid) == [], "make run left processes behind after SIGTERM"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(make.pid, signal.SIGKILL)
        make.wait()
        assert make.stdout is not None
        make.stdout.close()
