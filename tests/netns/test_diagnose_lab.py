"""`natkit diagnose --json` in node `peer` of every lab preset, against natkit's STUN server and
against coturn in node `server` (203.0.113.10:3478, alternate 203.0.113.11:3479). Needs root.

The expectations are the lab's NAT behaviours (tests/netns/test_lab_nat.py checks them with raw
packets) as RFC 5780 names them, and the verdict FIELD-NOTES' pair table gives.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from natkit.lab import Lab, Topology
from tests.netns.stunserver import ALTERNATE, CONFIG, PRIMARY
from tests.netns.stunserver import wait_udp as _wait_udp

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"

# preset → (mapping, filtering, hairpinning, nat_type, direct_p2p, exit status without TURN,
# cgnat). Exit 3 for symmetric: most calls need a relay and none is configured (verdict.py).
# cgnat: the carrier's inside address 100.64.1.1 answers the TTL-2 probe; behind udp-blocked's
# firewall the path is not fully visible (null).
EXPECTED: dict[str, tuple[str | None, str | None, bool | None, str, str, int, bool | None]] = {
    "open": (EIM, EIM, None, "open", "likely", 0, False),
    "full-cone": (EIM, EIM, False, "full-cone", "likely", 0, False),
    "restricted-cone": (EIM, ADM, False, "restricted-cone", "likely", 0, False),
    "port-restricted-cone": (EIM, APDM, False, "port-restricted-cone", "peer-dependent", 0, False),
    "symmetric": (APDM, APDM, False, "symmetric", "peer-dependent", 3, False),
    "cgnat": (APDM, APDM, False, "symmetric", "peer-dependent", 3, True),
    "udp-blocked": (None, None, None, "udp-blocked", "unlikely", 3, None),
    "hairpin": (EIM, APDM, True, "port-restricted-cone", "peer-dependent", 0, False),
    "no-hairpin": (EIM, APDM, False, "port-restricted-cone", "peer-dependent", 0, False),
}


def _start_natkit(lab: Lab, tmp: Path) -> subprocess.Popen[Any]:
    config = tmp / "natkit.yaml"
    config.write_text(CONFIG)
    argv = [sys.executable, "-m", "natkit", "serve", "-c", str(config)]
    return lab.spawn("server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _start_coturn(lab: Lab, tmp: Path, tls: bool = False) -> subprocess.Popen[Any]:
    argv = [
        "turnserver",
        "-n",
        "--no-cli",
        "--no-dtls",
        "--log-file=stdout",
        "--simple-log",
        f"--listening-ip={PRIMARY}",
        f"--listening-ip={ALTERNATE}",
        "--listening-port=3478",
        "--alt-listening-port=3479",
        f"--relay-ip={PRIMARY}",
        "--min-port=49152",
        "--max-port=49300",
        "--realm=natkit.test",
        "--lt-cred-mech",
        "--user=alice:wonderland",
        f"--pidfile={tmp / 'turnserver.pid'}",
    ]
    if tls:
        key, cert = tmp / "key.pem", tmp / "cert.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=natkit-lab",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        argv += ["--tls-listening-port=443", f"--cert={cert}", f"--pkey={key}"]
    else:
        argv.append("--no-tls")
    return lab.spawn("server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def diagnose(lab: Lab, *args: str, stun: str = f"{PRIMARY}:3478") -> tuple[dict[str, Any], int]:
    argv = [sys.executable, "-m", "natkit", "diagnose", "--json", "--stun", stun, *args]
    done = lab.exec("peer", argv, timeout=30)
    assert done.stdout, done.stderr
    return json.loads(done.stdout), done.returncode


@pytest.fixture
def served_lab(
    nat_lab: MakeLab, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Lab, str]]:
    preset, kind = request.param
    if kind == "coturn" and shutil.which("turnserver") is None:
        pytest.skip("coturn's turnserver is not installed")
    lab = nat_lab(preset)
    if preset == "udp-blocked":  # the peer cannot reach it over UDP: wait from the server node
        proc = (
            _start_coturn(lab, tmp_path, tls=True)
            if kind == "coturn"
            else _start_natkit(lab, tmp_path)
        )
    else:
        proc = _start_coturn(lab, tmp_path) if kind == "coturn" else _start_natkit(lab, tmp_path)
    try:
        _wait_udp(lab)
        yield lab, kind
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


CASES = [(p, k) for k in ("natkit", "coturn") for p in EXPECTED]


@pytest.mark.parametrize("served_lab", CASES, ids=[f"{p}-{k}" for p, k in CASES], indirect=True)
def test_diagnose_reports_the_lab_nat(served_lab: tuple[Lab, str]) -> None:
    lab, kind = served_lab
    preset = lab.state.topology
    mapping, filtering, hairpin, nat_type, direct, status, carrier = EXPECTED[preset]
    args: tuple[str, ...] = ()
    if preset == "udp-blocked" and kind == "coturn":
        args = ("--turn", f"turns:{PRIMARY}:443", "--user", "alice", "--password", "wonderland")
        status = 1  # relay over TLS 443 works
    report, code = diagnose(lab, *args)
    got = (
        report["mapping"],
        report["filtering"],
        report["hairpinning"],
        report["nat_type"],
        report["verdict"]["direct_p2p"],
    )
    assert got == (mapping, filtering, hairpin, nat_type, direct), json.dumps(report, indent=1)
    assert code == status, report["verdict"]
    assert report["udp"]["reachable"] is (preset != "udp-blocked")
    assert report["verdict"]["relay_required"] is (direct == "unlikely")
    assert report["exit_status"] == code
    assert report["cgnat"] is carrier, (report["cgnat_evidence"], report["families"])
    if carrier:
        assert "hop 2 answers from 100.64.1.1" in report["cgnat_evidence"]
        assert "behind carrier-grade NAT" in report["verdict"]["explanation"]
    if preset == "udp-blocked":  # the evidence says blocked: TCP/TLS answers where UDP cannot
        assert report["udp"]["finding"] == "blocked", report["udp"]
        assert report["verdict"]["explanation"].startswith("UDP is blocked (")
    # The diagnosis keeps to its time budget (diagnose.timeout, 3 s); the speed goals (1 s, and
    # 3 s with UDP blocked) are measured by bench/diagnose_bench.py, not asserted under CI load.
    assert report["duration_s"] <= 3.0, report["duration_s"]


def test_lifetime_brackets_the_nat_timeout(nat_lab: MakeLab, tmp_path: Path) -> None:
    """A NAT that forgets idle mappings after 3 s: alive after 2 s, gone after 5 s."""
    topo = Topology.from_dict(
        {
            "servers": {"server": {"addresses": [PRIMARY, ALTERNATE]}},
            "nats": {"nat": {"type": "port-restricted-cone", "udp_timeout": 3}},
            "hosts": {"peer": {"behind": "nat"}},
        },
        default_name="lifetime",
    )
    lab = nat_lab(topo)
    proc = _start_natkit(lab, tmp_path)
    try:
        _wait_udp(lab)
        report, _ = diagnose(lab, "--no-ice", "--lifetime", "--lifetime-max", "10")
    finally:
        proc.terminate()
        proc.wait(5)
    assert (report["lifetime"]["alive_s"], report["lifetime"]["expired_s"]) == (2.0, 5.0), report[
        "lifetime"
    ]


NO_SERVER = f"{PRIMARY}:3999"  # the server node is up; nothing listens on this port


@pytest.mark.parametrize("preset", ["port-restricted-cone", "cgnat"])
def test_no_server_at_the_address_is_not_udp_blocked(nat_lab: MakeLab, preset: str) -> None:
    """ICMP port unreachable (through the NATs) and TCP refused: no STUN server, exit 2."""
    lab = nat_lab(preset)
    report, code = diagnose(lab, "--no-ice", stun=NO_SERVER)
    assert report["udp"]["finding"] == "no-server", report["udp"]
    assert f"no STUN server is running at {NO_SERVER}" in report["udp"]["evidence"]
    assert report["stun"][0]["icmp"]["kind"] == "port-unreachable"
    assert report["nat_type"] == "unknown" and report["verdict"]["outcome"] == "not-measured"
    assert "blocked" not in report["verdict"]["explanation"]
    assert any("--stun HOST:PORT" in a for a in report["verdict"]["actions"])
    assert code == 2 == report["exit_status"]


def test_udp_blocked_stays_blocked_without_a_server(nat_lab: MakeLab) -> None:
    """Behind the udp-blocked firewall the same address is silent over UDP and TCP 3999, while
    the host refuses TCP 443: a live host that drops UDP is a filter, not "no server"."""
    lab = nat_lab("udp-blocked")
    report, code = diagnose(lab, "--no-ice", stun=NO_SERVER)
    assert report["udp"]["finding"] == "blocked", report["udp"]
    assert "answers TCP on port 443" in report["udp"]["evidence"]
    assert report["nat_type"] == "udp-blocked" and code == 3


@pytest.mark.parametrize(
    "served_lab",
    [("full-cone", "coturn"), ("symmetric", "coturn")],
    ids=["full-cone", "symmetric"],
    indirect=True,
)
def test_exit_status_with_a_working_relay(served_lab: tuple[Lab, str]) -> None:
    """With a relay the check passes from behind every NAT (two allocations): full cone stays 0
    (most calls direct), a symmetric NAT exits 1 (most calls need the relay, and it works)."""
    lab, _ = served_lab
    preset = lab.state.topology
    report, code = diagnose(
        lab,
        "--no-ice",
        "--turn",
        f"turn:{PRIMARY}:3478",
        "--user",
        "alice",
        "--password",
        "wonderland",
    )
    assert report["verdict"]["relay_working"], report["turn"]
    expected = 0 if preset == "full-cone" else 1
    assert code == expected == report["exit_status"], report["verdict"]
    assert report["verdict"]["outcome"] == {0: "direct", 1: "relay", 3: "no-path"}[expected]


def test_silence_everywhere_is_no_answer_not_udp_blocked(nat_lab: MakeLab) -> None:
    """203.0.113.99 is on the lab's internet bridge but no node has it: no UDP answer, no ICMP
    within the budget, no TCP answer. That may be a dead server as well as a blocked network:
    nat_type unknown, finding no-answer, and the worst case (exit 3) for the verdict."""
    lab = nat_lab("port-restricted-cone")
    report, code = diagnose(lab, "--no-ice", stun="203.0.113.99:3478")
    assert report["udp"]["finding"] == "no-answer", report["udp"]
    assert report["nat_type"] == "unknown"
    explanation = report["verdict"]["explanation"]
    assert "server is down" in explanation and "blocks UDP" in explanation
    assert code == 3 and report["verdict"]["outcome"] == "no-path"
