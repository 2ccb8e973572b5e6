"""natkit's coturn engine against the installed coturn: render → turnserver → natkit turn check.

Everything stays on 127.0.0.1; ports are picked free at run time. Skipped when coturn's
``turnserver`` is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.turn.credentials import mint
from tests.integration.coturn_harness import check, lab_config, start

pytestmark = [
    pytest.mark.integration,
    pytest.mark.coturn,
    pytest.mark.skipif(
        shutil.which("turnserver") is None,
        reason="coturn's turnserver is not installed (apt-get install coturn)",
    ),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    cfg = lab_config()
    with start(cfg, tmp_path):
        yield f"127.0.0.1:{cfg.stun.listen[0].port}"


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
