"""natkit check in every lab preset: headless Chromium in node `peer` runs the page that natkit
serve publishes in node `server`; its report must agree with the preset's NAT behaviour and with
`natkit diagnose` run in the same node. Needs root and Debian's chromium."""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from natkit.check.headless import launch, run_check
from natkit.lab import Lab
from natkit.testing import self_signed_certificate
from tests.netns.stunserver import ALTERNATE, PRIMARY
from tests.netns.stunserver import wait_udp as _wait_udp
from tests.netns.test_diagnose_lab import EXPECTED

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
PRIMARY6 = "2001:db8::10"
PAGE = f"http://{PRIMARY}/check"  # port 80: the udp-blocked firewall lets TCP 80 and 443 out
CONFIG = f"""version: 1
stun:
  listen: ["udp://{PRIMARY}:3478", "tcp://{PRIMARY}:3478", "tls://{PRIMARY}:443",
           "udp://[{PRIMARY6}]:3478"]
  alternate: "{ALTERNATE}:3479"
  workers: 1
  tls: {{cert: CERT, key: KEY}}
turn:
  enabled: true
  realm: natkit.lab
  auth: {{secret: natkit-lab-only-secret}}
  relay: {{ports: 49152-49999}}
  drain_timeout: 0.5               # the pages' relay checks leave allocations: stop at once
  peers: {{allow: ["203.0.113.96/27", "203.0.113.128/25", "10.0.0.0/8", "100.64.0.0/10"]}}
check: {{enabled: true, listen: "http://{PRIMARY}:80"}}
metrics: {{listen: null}}
"""


def _wait_http(lab: Lab, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock = lab.socket("server", socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(0.5)
            sock.connect((PRIMARY, 80))
            return
        except OSError:
            time.sleep(0.1)
        finally:
            sock.close()
    raise AssertionError("the check page in node server did not come up")


@contextlib.contextmanager
def serve_check(lab: Lab, tmp: Path) -> Iterator[None]:
    """natkit serve with the check page in node `server` (CONFIG), until both listen; stopped
    at the end (the lab would stop it too)."""
    config = tmp / "natkit.yaml"
    cert, key = self_signed_certificate(tmp, "natkit-lab")
    config.write_text(CONFIG.replace("CERT", str(cert)).replace("KEY", str(key)))
    argv = [sys.executable, "-m", "natkit", "serve", "-c", str(config)]
    proc = lab.spawn("server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_udp(lab)
        _wait_http(lab)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def check_lab(nat_lab: MakeLab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = nat_lab(request.param, name=f"h15ck{list(EXPECTED).index(request.param)}")
    with serve_check(lab, tmp_path):
        yield lab


TURN_URLS = {
    "udp": f"turn:{PRIMARY}:3478?transport=udp",
    "tcp": f"turn:{PRIMARY}:3478?transport=tcp",
    "tls": f"turns:{PRIMARY}:443?transport=tcp",
}


def _diagnose(lab: Lab) -> dict[str, Any]:
    argv = [sys.executable, "-m", "natkit", "diagnose", "--json", "--no-ice", "--stun",
            f"{PRIMARY}:3478", "--secret", "natkit-lab-only-secret"]  # fmt: skip
    for url in TURN_URLS.values():
        argv += ["--turn", url]
    done = lab.exec("peer", argv, timeout=30)
    assert done.stdout, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _transport(url: str) -> str:
    return "tls" if url.startswith("turns:") else "tcp" if "transport=tcp" in url else "udp"


def _check_from_report(check_lab: Lab, original: dict[str, Any], tmp_path: Path) -> None:
    """`natkit lab up --from-report` on the preset's diagnose report builds a lab that diagnose
    classifies the same way (the field report → CI path)."""
    report = tmp_path / "report.json"
    report.write_text(json.dumps(original))
    name = f"h15fr-{check_lab.state.topology}"[:20]
    up = subprocess.run(
        [sys.executable, "-m", "natkit", "lab", "up", "--from-report", str(report), "--name", name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        assert up.returncode == 0 and up.stdout.strip() == name, up.stderr
        rebuilt = Lab.attach(name)
        (tmp_path / "rebuilt").mkdir()
        with serve_check(rebuilt, tmp_path / "rebuilt"):
            again = _diagnose(rebuilt)
    finally:
        subprocess.run([sys.executable, "-m", "natkit", "lab", "down", name], check=False,
                       capture_output=True)  # fmt: skip
    keys = ("mapping", "filtering", "nat_type", "hairpinning", "cgnat")
    assert {k: again[k] for k in keys} == {k: original[k] for k in keys}
    assert again["udp"]["reachable"] is original["udp"]["reachable"]


@pytest.mark.parametrize("check_lab", list(EXPECTED), indirect=True)
def test_the_browser_report_agrees_with_the_preset_and_diagnose(
    check_lab: Lab, tmp_path: Path
) -> None:
    """...and `natkit lab up --from-report` on the diagnose report rebuilds the same NAT."""
    lab = check_lab
    preset = lab.state.topology
    mapping, filtering, hairpin, nat_type, direct, _status, _cgnat = EXPECTED[preset]
    # diagnose first: the page's failed hairpin attempt makes the NAT router send ICMP errors,
    # and the kernel's ICMP rate limit would then hide the router from diagnose's TTL probes.
    diagnosed = _diagnose(lab)
    if preset == "open":
        # The preset's peer has only its connected /24, no default route; Chromium then shows
        # no host candidate (it gathers from the wildcard address), and the page could not
        # tell "no NAT" from a full cone. A public host has a default route: give it one.
        dev = lab.exec("peer", ["ip", "-o", "-4", "addr", "show", "scope", "global"]).stdout
        lab.exec("peer", ["ip", "route", "add", "default", "dev", dev.split()[1].split("@")[0]])
    # The lab's certificate is self-signed (FIELD-NOTES: turns: verifies it otherwise).
    flags = ("--ignore-certificate-errors",)
    with launch(functools.partial(lab.spawn, "peer"), extra_flags=flags) as browser:
        report = run_check(browser, PAGE, timeout=30)
    assert report.get("source") == "browser", report
    got = (report["mapping"], report["filtering"], report["nat_type"])
    want = (diagnosed["mapping"], diagnosed["filtering"], diagnosed["nat_type"])
    assert got == (mapping, filtering, nat_type), json.dumps(report, indent=1)
    assert got == want
    assert report["hairpinning"] is hairpin is diagnosed["hairpinning"], report["problems"]
    assert report["behind_nat"] is (preset != "open") or preset == "udp-blocked", report
    assert report["udp"]["reachable"] is diagnosed["udp"]["reachable"] is (preset != "udp-blocked")
    assert report["verdict"]["direct_p2p"] == direct
    # IPv6: only the open preset's peer has an IPv6 address (the lab's NATs route IPv4 only).
    assert report["udp"]["ipv6"] is (preset == "open"), report["udp"]
    # TURN per transport, as diagnose's own checks found it: over TLS on 443 (which the
    # udp-blocked firewall lets through) everywhere, over UDP and TCP 3478 wherever they get out.
    turn = {t["transport"]: t["ok"] for t in report["turn"]}
    checked = {_transport(t["url"]): t["ok"] for t in diagnosed["turn"]}
    blocked = preset == "udp-blocked"
    assert turn == checked == {"udp": not blocked, "tcp": not blocked, "tls": True}, report["turn"]
    assert report["verdict"]["relay_working"] is True
    streams = {(s["transport"], s["address"]): s["answered"] for s in diagnosed["streams"]}
    mine = {(s["transport"], s["address"]): s["answered"] for s in report["streams"]}
    for key in (("tcp", f"{PRIMARY}:3478"), ("tls", f"{PRIMARY}:443")):
        assert streams[key] is mine[key] is turn[key[0]], (key, report["streams"])
    assert report["duration_s"] <= 5.0
    _check_from_report(lab, diagnosed, tmp_path)
