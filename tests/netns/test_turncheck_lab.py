"""`natkit turn check` and `natkit diagnose --turn` in node `peer` of every preset that has one,
against `natkit serve` in node `server` (needs root).

The server is the NAT matrix's (`natkit.p2p.matrix.serve_config`: UDP+TCP 3478, TCP 443, the
builtin relay on 203.0.113.10 with the lab's ranges allowed), plus a REST API secret. Where the
transport reaches the server the relay must be reported working, behind every NAT — before the
two-allocations method, port-restricted, symmetric and CGNAT said "the peer got nothing" and
TCP 443 failed at "permission" (a UDP lookup on a TCP-only port). And the broken cases must name
the right step: wrong secret → 401 at allocate, a denied peer → 403 at permission, no server →
"nothing listens". coturn (4.6.1, config rendered by natkit) runs behind a symmetric NAT, with
and without its own address allowed, so the peer-socket fallback (pinhole) is exercised too.

One lab per preset; its checks run in parallel (each is its own `natkit` process in the node).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from natkit.lab import Lab
from natkit.p2p.matrix import LAB_PEER_RANGES, SERVER, TURN_TCP_PORT, serve_config
from tests.netns.stunserver import wait_udp

pytestmark = pytest.mark.netns

SECRET = "lab-secret"
UDP, TCP = f"turn:{SERVER}:3478", f"turn:{SERVER}:3478?transport=tcp"
TCP443 = f"turn:{SERVER}:{TURN_TCP_PORT}?transport=tcp"
NOBODY = 3480  # nothing listens there on the server
PRESETS = ["open", "full-cone", "restricted-cone", "port-restricted-cone", "symmetric", "cgnat",
           "udp-blocked", "hairpin", "no-hairpin"]  # fmt: skip
TIMEOUT = "4"


@contextlib.contextmanager
def serving(lab: Lab, tmp: Path, config: dict[str, Any], ready: str | None) -> Iterator[None]:
    """`natkit serve -c config` in node `server` until the block ends; waits until its output
    shows `ready` (builtin: the signal line, printed once everything is bound), or with None
    (coturn, which prints no such line) until a Binding is answered."""
    path, out_path = tmp / "serve.yaml", tmp / "serve.out"
    path.write_text(yaml.safe_dump(config))
    with out_path.open("w") as out:
        argv = [sys.executable, "-m", "natkit", "serve", "-c", str(path)]
        proc = lab.spawn("server", argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        if ready is None:
            wait_udp(lab)
        while ready is not None and ready not in out_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            assert proc.wait(10) == 0, out_path.read_text()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise


def builtin_config() -> dict[str, Any]:
    config = serve_config("unused")
    config["turn"]["auth"] = {"secret": SECRET}
    return config


def natkit_json(lab: Lab, *args: str) -> dict[str, Any]:
    done = lab.exec("peer", [sys.executable, "-m", "natkit", *args, "--json"], timeout=40)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    report["_status"] = done.returncode
    return report


def check(url: str, *extra: str, secret: str = SECRET) -> tuple[str, ...]:
    return ("turn", "check", url, "--secret", secret, "--timeout", TIMEOUT, *extra)


def run_all(lab: Lab, jobs: dict[str, tuple[str, ...]]) -> dict[str, dict[str, Any]]:
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = pool.map(lambda args: natkit_json(lab, *args), jobs.values())
        return dict(zip(jobs, results, strict=True))


def failed(report: dict[str, Any]) -> tuple[str, int | None, str]:
    step = next(s for s in report["steps"] if not s["ok"])
    return step["name"], step["error_code"], step["detail"]


def assert_relays(report: dict[str, Any], method: str = "two-allocations") -> None:
    assert report["ok"] and report["_status"] == 0, json.dumps(report, indent=1)
    assert report["method"] == method
    assert report["rtt_ms"] is not None


BROKEN_IN = ("port-restricted-cone", "udp-blocked")  # the broken cases, in two labs only


@pytest.mark.parametrize("preset", PRESETS)
def test_turn_check_and_diagnose_behind_every_nat(
    nat_lab: Any, tmp_path: Path, preset: str
) -> None:
    lab = nat_lab(preset)
    blocked = preset == "udp-blocked"  # its firewall lets out TCP 80 and 443 only
    diagnose = ("diagnose", "--no-ice", "--stun", f"{SERVER}:3478", "--timeout", TIMEOUT)
    jobs = {
        "udp": check(UDP),
        "tcp": check(TCP),
        "tcp443": check(TCP443),
        "diagnose": (*diagnose, "--turn", UDP, "--turn", TCP443, "--secret", SECRET),
    }
    if preset in BROKEN_IN:
        jobs["wrong-secret"] = check(TCP443, secret="nope")
        jobs["denied-peer"] = check(TCP443, "--peer", "127.0.0.1")
        if not blocked:  # (its firewall drops what would be refused)
            jobs["nothing-tcp"] = check(f"turn:{SERVER}:{NOBODY}?transport=tcp")
            jobs["nothing-udp"] = check(f"turn:{SERVER}:{NOBODY}")
    with serving(lab, tmp_path, builtin_config(), ready="\nsignal "):
        got = run_all(lab, jobs)
    assert_relays(got["tcp443"])
    if blocked:  # UDP (and TCP 3478) fail at their first step, honestly: nothing came back
        for name, first in (("udp", "allocate"), ("tcp", "connect")):
            step, code, detail = failed(got[name])
            assert (step, code) == (first, None), got[name]
            assert "no answer" in detail
    else:
        assert_relays(got["udp"])
        assert_relays(got["tcp"])
    turn = {r["url"]: r for r in got["diagnose"]["turn"]}
    assert turn[TCP443]["ok"] and turn[TCP443]["method"] == "two-allocations", turn
    assert turn[UDP]["ok"] is not blocked, turn
    assert got["diagnose"]["_status"] in (0, 1), got["diagnose"]["verdict"]  # a path exists
    if preset in BROKEN_IN:
        assert_broken(got, blocked)


def assert_broken(got: dict[str, dict[str, Any]], blocked: bool) -> None:
    assert failed(got["wrong-secret"])[:2] == ("allocate", 401)
    step, code, detail = failed(got["denied-peer"])
    assert (step, code) == ("permission", 403) and "turn.peers.allow" in detail
    where = f"{SERVER}:{NOBODY}"
    if not blocked:
        assert failed(got["nothing-tcp"]) == (
            "connect", None, f"connection refused: nothing listens at {where}"
        )  # fmt: skip
        assert failed(got["nothing-udp"]) == (
            "allocate", None, f"nothing listens at {where} (ICMP port unreachable)"
        )  # fmt: skip


def coturn_config(allow_server: bool) -> dict[str, Any]:
    config = builtin_config()
    config["stun"]["listen"] = [f"udp://{SERVER}:3478", f"tcp://{SERVER}:3478"]
    config["signal"]["enabled"] = False
    config["turn"]["engine"] = "coturn"
    config["logging"]["level"] = "info"  # coturn's log lines, for a failure's message
    ranges = [r for r in LAB_PEER_RANGES if r != "203.0.113.0/24"]
    # The lab's NAT WAN addresses (203.0.113.100 up), not the server's own; with allow_server
    # the server's address too, named exactly: a range around it would not open it.
    allow = ["203.0.113.96/27", *ranges]
    config["turn"]["peers"]["allow"] = [*allow, f"{SERVER}/32"] if allow_server else allow
    return config


@pytest.mark.parametrize("allow_server", [True, False], ids=["own-ip-allowed", "own-ip-denied"])
def test_coturn_behind_a_symmetric_nat(nat_lab: Any, tmp_path: Path, allow_server: bool) -> None:
    if shutil.which("turnserver") is None:
        pytest.skip("coturn's turnserver is not installed (apt-get install coturn)")
    lab = nat_lab("symmetric")
    with serving(lab, tmp_path, coturn_config(allow_server), ready=None):
        got = run_all(lab, {"udp": check(UDP), "tcp": check(TCP),
                            "wrong-secret": check(UDP, secret="nope")})  # fmt: skip
    assert failed(got["wrong-secret"])[:2] == ("allocate", 401)
    if allow_server:  # an allowed-peer-ip naming it wins over the rendered denied own address
        assert_relays(got["udp"])
        assert_relays(got["tcp"])
        return
    # coturn refuses its own relayed address: the UDP check falls back to a peer socket, whose
    # pinhole gets the relay's packet through the symmetric NAT.
    assert_relays(got["udp"], method="peer-socket")
    assert "403" in got["udp"]["method_note"]
    assert "peer port" in got["udp"]["steps"][3]["detail"]  # learned from the pinhole packet
    # Over TCP there is no way to learn a UDP address of our own: said plainly, at permission.
    step, code, detail = failed(got["tcp"])
    assert (step, code, got["tcp"]["method"]) == ("permission", 403, "peer-socket"), got["tcp"]
    assert "peer policy" in detail and "turn.peers.allow" in detail
