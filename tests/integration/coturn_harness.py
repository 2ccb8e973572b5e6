"""Run the installed coturn with a natkit-rendered config on loopback (tests' harness).

`lab_config` is a coturn-engine config on a free port with this run's relay range; `start`
renders it and runs ``turnserver`` (`running_coturn`: always stopped, even on failure); `check`
runs `natkit turn check` against it. Used by test_coturn*.py and the conformance suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from natkit import testing
from natkit.config import Config, loads
from natkit.diag.turncheck import TurnCheckReport, check_turn
from natkit.turn import coturn

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
    """A port free for both UDP and TCP on `host` (coturn listens on both), outside the relay
    range of this run (natkit refuses a listener inside it) and the default one."""
    low, high = relay_range()
    return testing.free_port("udp+tcp", host, avoid=(testing.RELAY_PORTS, range(low, high + 1)))


def relay_range() -> tuple[int, int]:
    """201 relay ports inside natkit.testing.RELAY_PORTS, which `free_port` never returns: a
    listener port can never fall into them (it did, 1 run in ~100, with a range below)."""
    ports = testing.RELAY_PORTS
    low = ports.start + (os.getpid() * 131) % (len(ports) - 201)
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


def check(url: str, **kwargs: object) -> TurnCheckReport:
    return asyncio.run(check_turn(url, timeout=5, **kwargs))  # type: ignore[arg-type]
