"""natkit's coturn engine against the installed coturn: render → turnserver → natkit turn check.

Everything stays on 127.0.0.1; ports are picked free at run time. Skipped when coturn's
``turnserver`` is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.config import Config, loads
from natkit.diag.turncheck import TurnCheckReport, check_turn
from natkit.turn import coturn
from natkit.turn.credentials import mint

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("turnserver") is None,
        reason="coturn's turnserver is not installed (apt-get install coturn)",
    ),
]

# A lab/test config. The check relays a packet back to itself on loopback, which natkit's
# default policy and coturn both refuse: `peers.allow` opens exactly that hole (never do this
# on a public server).
LAB_CONFIG = """
version: 1
stun:
  listen: ["udp://127.0.0.1:{port}", "tcp://127.0.0.1:{port}"]
turn:
  enabled: true
  engine: coturn
  realm: natkit.test
  auth: {auth}
  relay: {{address: 127.0.0.1, ports: "{low}-{high}"}}
  peers: {{allow: ["127.0.0.1/32"]}}
"""
USERS = "{users: {alice: wonderland}}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` (coturn listens on both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            low, high = relay_range()
            if low <= port <= high:  # refused at load: the relay range would collide
                continue
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def relay_range() -> tuple[int, int]:
    low = 40000 + (os.getpid() * 131) % 20000
    return low, low + 200


def lab_config(auth: str = USERS, port: int | None = None) -> Config:
    low, high = relay_range()
    text = LAB_CONFIG.format(port=port or free_port(), auth=auth, low=low, high=high)
    return loads(text, "lab.yaml")


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"turnserver exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"turnserver not listening on {port}:\n{log.read_text()[-2000:]}")


@contextlib.contextmanager
def running_coturn(text: str, host: str, port: int, workdir: Path) -> Iterator[Path]:
    """Run turnserver with the rendered `text`; always stopped, even on failure."""
    conf = workdir / "turnserver.conf"
    coturn.write_private(str(conf), text)
    log = workdir / "turnserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["turnserver", "-c", str(conf)], stdout=out, stderr=out)
    try:
        wait_listening(host, port, proc, log)
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start(cfg: Config, tmp_path: Path) -> contextlib.AbstractContextManager[Path]:
    text = coturn.render(cfg, coturn.detect_version(), runtime_dir=str(tmp_path))
    uri = cfg.stun.listen[0]
    return running_coturn(text, uri.host, uri.port, tmp_path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    cfg = lab_config()
    with start(cfg, tmp_path):
        yield f"127.0.0.1:{cfg.stun.listen[0].port}"


def check(url: str, **kwargs: object) -> TurnCheckReport:
    return asyncio.run(check_turn(url, timeout=5, **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("query", ["", "?transport=tcp"])
def test_render_start_allocate_and_round_trip(server: str, query: str) -> None:
    report = check(f"turn:{server}{query}", username="alice", password="wonderland")
    assert report.ok, report
    names = [s.name for s in report.steps]
    expected = ["resolve", "allocate", "permission", "channel", "relay"]
    if query:
        expected.insert(1, "connect")
    assert names == expected
    assert report.relayed_address is not None and report.relayed_address.startswith("127.0.0.1:")
    assert report.rtt_ms is not None and report.rtt_ms > 0


def test_wrong_password_is_401(server: str) -> None:
    report = check(f"turn:{server}", username="alice", password="nope")
    assert not report.ok
    failed = report.failed_step
    assert failed is not None and failed.name == "allocate" and failed.error_code == 401


@pytest.mark.parametrize("peer", ["10.1.2.3", "127.0.0.2", "192.168.1.1", "0.0.0.0"])
def test_denied_peers_are_403(server: str, peer: str) -> None:
    report = check(
        f"turn:{server}", username="alice", password="wonderland", peer=peer, until="permission"
    )
    failed = report.failed_step
    assert failed is not None and failed.name == "permission" and failed.error_code == 403


def test_public_peer_is_permitted(server: str) -> None:
    # Proves the deny list is not a deny-all (coturn reads a "::" bound as "no bound").
    # until="permission": nothing is sent to the peer (CreatePermission only installs state).
    report = check(
        f"turn:{server}",
        username="alice",
        password="wonderland",
        peer="8.8.8.8",
        until="permission",
    )
    assert report.ok, report
    assert report.steps[-1].name == "permission"


def test_rest_api_secret(tmp_path: Path) -> None:
    cfg = lab_config(auth="{secret: sesame}")
    url = f"turn:127.0.0.1:{cfg.stun.listen[0].port}"
    with start(cfg, tmp_path):
        assert check(url, secret="sesame").ok
        expired = mint("sesame", "alice", 60, now=time.time() - 3600)
        report = check(url, username=expired.username, password=expired.password)
        failed = report.failed_step
        assert failed is not None and failed.error_code == 401


def test_cli_check_json_and_exit_status(server: str) -> None:
    base = [sys.executable, "-m", "natkit", "turn", "check", f"turn:{server}", "--json"]
    ok = subprocess.run(
        [*base, "--user", "alice", "--password", "wonderland"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and [s["name"] for s in report["steps"]][-1] == "relay"
    bad = subprocess.run(
        [*base, "--user", "alice", "--password", "x"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["steps"][-1]["error_code"] == 401
    text = subprocess.run(
        [*base[:-1], "--user", "alice", "--password", "wonderland", "--peer", "127.0.0.2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert text.returncode == 1 and "403" in text.stdout
