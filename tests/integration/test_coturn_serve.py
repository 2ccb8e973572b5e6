"""natkit.turn.coturn.serve as `natkit serve` runs it: a supervised turnserver child."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natkit.errors import DependencyError
from natkit.turn import coturn
from tests.integration.coturn_harness import LAB_CONFIG, USERS, check, free_port, relay_range

pytestmark = [
    pytest.mark.integration,
    pytest.mark.coturn,
    pytest.mark.skipif(
        shutil.which("turnserver") is None,
        reason="coturn's turnserver is not installed (apt-get install coturn)",
    ),
]

SERVE = (
    "import logging, sys\n"
    "from natkit.config import load\n"
    "from natkit.turn.coturn import serve\n"
    "logging.basicConfig(level=logging.INFO, format='%(name)s %(levelname)s %(message)s')\n"
    "sys.exit(serve(load(sys.argv[1])))\n"
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


class Served:
    def __init__(self, tmp_path: Path) -> None:
        low, high = relay_range()
        self.port = free_port()
        config = tmp_path / "natkit.yaml"
        config.write_text(LAB_CONFIG.format(port=self.port, auth=USERS, low=low, high=high))
        self.log = tmp_path / "serve.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVE, str(config)], stdout=out, stderr=out
            )
        self.child, self.conf = self._started()

    def _started(self) -> tuple[int, str]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            match = re.search(r"started \(pid (\d+), (\S+)\)", self.log.read_text())
            if (
                match
                and check(f"turn:127.0.0.1:{self.port}", username="alice", password="wonderland").ok
            ):
                return int(match[1]), match[2]
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"coturn never served:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    served = Served(tmp_path)
    try:
        assert _alive(served.child)
        assert os.stat(served.conf).st_mode & 0o777 == 0o600
        served.proc.send_signal(signal.SIGHUP)  # re-render + HUP/USR2: coturn keeps serving
        time.sleep(0.5)
        assert served.proc.poll() is None
        assert check(f"turn:127.0.0.1:{served.port}", username="alice", password="wonderland").ok
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=15) == 0
        assert not _alive(served.child)
        assert not os.path.exists(os.path.dirname(served.conf))  # temp dir removed
        log = served.log.read_text()
        assert "natkit.coturn INFO" in log  # coturn's lines went through logging
    finally:
        served.stop()


def test_child_dies_with_natkit(tmp_path: Path) -> None:
    served = Served(tmp_path)
    try:
        served.proc.kill()  # SIGKILL: no finally runs; PR_SET_PDEATHSIG must do it
        served.proc.wait()
        deadline = time.monotonic() + 5
        while _alive(served.child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(served.child)
    finally:
        served.stop()
        if _alive(served.child):
            os.kill(served.child, signal.SIGKILL)
        shutil.rmtree(os.path.dirname(served.conf), ignore_errors=True)


def test_missing_binary() -> None:
    from tests.integration.coturn_harness import lab_config

    cfg = lab_config()
    cfg = dataclasses.replace(
        cfg,
        turn=dataclasses.replace(
            cfg.turn, coturn=dataclasses.replace(cfg.turn.coturn, binary="/nonexistent/turnserver")
        ),
    )
    with pytest.raises(DependencyError, match=r"apt-get install coturn"):
        coturn.serve(cfg)


def test_natkit_serve_names_the_keys_coturn_ignores(tmp_path: Path) -> None:
    low, high = relay_range()
    config = tmp_path / "natkit.yaml"
    text = LAB_CONFIG.format(port=free_port(), auth=USERS, low=low, high=high)
    config.write_text(text + "signal: {enabled: true}\n")  # metrics.listen: its default
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "natkit", "serve", "-c", str(config)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 15
        while "started (pid" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    warnings = [line for line in log.read_text().splitlines() if "ignores" in line]
    assert len(warnings) == 1, log.read_text()
    assert (
        " WARNING supervisor natkit.serve: turn.engine coturn ignores stun.rate_limit ("
        in (warnings[0])
    )
    assert "; metrics.listen (Debian's coturn 4.6.1 is built without Prometheus" in warnings[0]
    assert warnings[0].endswith("signal.enabled (the rendezvous runs with the builtin engine "
                                "only; run natkit p2p signal)")  # fmt: skip
