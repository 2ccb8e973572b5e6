"""natkit diagnose on loopback: against `natkit serve` (alternate 127.0.0.2) and coturn (listening
on 127.0.0.1 + 127.0.0.2 with --alt-listening-port). No NAT on loopback, so the expected answer
is open / endpoint-independent / endpoint-independent. Nothing leaves 127.0.0.0/8 (and ::1).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from natkit.cli import cli
from tests.integration.conftest import Served, free_port, stop_process

pytestmark = pytest.mark.integration
EIM = "endpoint-independent"
Serve = Callable[..., Served]


def diagnose(*args: str, timeout: float = 20) -> tuple[dict[str, Any], int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "natkit", "diagnose", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout), done.returncode, done.stderr


def alt_server(natkit_serve: Serve) -> Served:
    port, alt = free_port(), free_port("127.0.0.2")
    return natkit_serve(
        port=port,
        stun={
            "listen": [f"udp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}"],
            "alternate": f"127.0.0.2:{alt}",
        },
        metrics=False,
    )


def test_natkit_serve_with_alternate_is_open(natkit_serve: Serve) -> None:
    served = alt_server(natkit_serve)
    report, code, _ = diagnose("--stun", f"127.0.0.1:{served.port}")
    assert report["version"] == 2
    assert (report["mapping"], report["filtering"], report["nat_type"]) == (EIM, EIM, "open")
    assert report["udp"]["reachable"] is True and report["behind_nat"] is False
    assert report["public_address"].startswith("127.0.0.1:")
    assert report["port_preservation"] is True and report["hairpinning"] is None
    assert report["verdict"]["direct_p2p"] == "likely" and code == 0
    # Within its 3 s budget; the 1 s speed goal is measured by bench/diagnose_bench.py.
    assert report["duration_s"] <= 3.0, report["duration_s"]
    rfc = report["families"]["ipv4"]["rfc5780"]
    assert rfc["filtering_change_ip_port"]["response_origin"].startswith("127.0.0.2:")
    tcp = [s for s in report["streams"] if s["address"] == f"127.0.0.1:{served.port}"]
    assert tcp and tcp[0]["answered"] is True
    assert any(c["type"] == "host" for c in report["candidates"])


def test_ipv4_and_ipv6_servers_are_probed_per_family(natkit_serve: Serve) -> None:
    port, alt = free_port(), free_port("127.0.0.2")
    served = natkit_serve(
        port=port,
        stun={
            "listen": [f"udp://127.0.0.1:{port}", f"udp://[::1]:{port}"],
            "alternate": f"127.0.0.2:{alt}",  # IPv4 only: IPv6 gets no OTHER-ADDRESS
        },
        metrics=False,
    )
    report, code, _ = diagnose(
        "--stun", f"127.0.0.1:{served.port}", "--stun", f"[::1]:{served.port}", "--no-ice"
    )
    udp = {k: report["udp"][k] for k in ("reachable", "ipv4", "ipv6", "finding")}
    assert udp == {"reachable": True, "ipv4": True, "ipv6": True, "finding": "answered"}
    v6 = report["families"]["ipv6"]
    assert v6["public_address"].startswith("[::1]:") and v6["filtering"] is None
    assert report["nat_type"] == "open"  # the IPv4 answer is the headline
    assert code == 0


def test_server_without_other_address_filtering_unknown(natkit_serve: Serve) -> None:
    served = natkit_serve(metrics=False)
    report, code, _ = diagnose("--stun", f"127.0.0.1:{served.port}", "--no-ice")
    assert report["filtering"] is None and report["nat_type"] == "unknown"
    assert any("OTHER-ADDRESS" in p for p in report["problems"])
    assert report["verdict"]["direct_p2p"] == "peer-dependent" and code == 0


def test_nothing_listening_is_no_server_not_udp_blocked() -> None:
    """Nothing listens: UDP gets ICMP port unreachable, TCP is refused. That is "no STUN server
    at this address" (exit 2, nothing to measure against), never "UDP is blocked"."""
    port = free_port()
    report, code, _ = diagnose("--stun", f"127.0.0.1:{port}")
    assert report["udp"]["reachable"] is False
    assert report["udp"]["finding"] == "no-server", report["udp"]
    assert f"no STUN server is running at 127.0.0.1:{port}" in report["udp"]["evidence"]
    assert "ICMP port unreachable" in report["udp"]["evidence"]
    assert report["stun"][0]["icmp"]["kind"] == "port-unreachable"
    assert report["nat_type"] == "unknown" and report["classic_type"] == "Unknown"
    verdict = report["verdict"]
    assert verdict["outcome"] == "not-measured" and code == 2 == report["exit_status"]
    assert "blocked" not in verdict["explanation"] and "impossible" not in verdict["explanation"]
    assert f"no STUN server is running at 127.0.0.1:{port}" in verdict["explanation"]
    assert any("--stun HOST:PORT" in a for a in verdict["actions"])
    refused = [s for s in report["streams"] if s["address"] == f"127.0.0.1:{port}"]
    assert refused and refused[0]["refused"] is True
    assert report["duration_s"] <= 3.0


def test_nothing_listening_text_says_no_server() -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "natkit", "diagnose", "--no-ice", "--stun", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 2, done.stderr
    assert "no STUN server there" in done.stdout and "UDP is blocked" not in done.stdout
    assert "Verdict: nothing was measured (exit 2)" in done.stdout
    assert "NAT type              unknown" in done.stdout


def test_udp_silent_but_tcp_answers_is_udp_blocked(natkit_serve: Serve) -> None:
    """A STUN server over TCP only, and a UDP socket on the same port that never answers (so no
    ICMP either): TCP reaches a STUN server that UDP cannot, which is what UDP-blocked means."""
    port = free_port()
    natkit_serve(port=port, stun={"listen": [f"tcp://127.0.0.1:{port}"]}, metrics=False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", port))
        report, code, _ = diagnose("--stun", f"127.0.0.1:{port}", "--no-ice")
    assert report["udp"]["finding"] == "blocked", report["udp"]
    assert f"TCP to 127.0.0.1:{port} reaches a STUN server" in report["udp"]["evidence"]
    assert report["nat_type"] == "udp-blocked" and report["verdict"]["relay_required"] is True
    assert report["verdict"]["outcome"] == "no-path" and code == 3
    assert any("443" in a for a in report["verdict"]["actions"])


def test_human_report_has_verdict_and_what_to_do(natkit_serve: Serve) -> None:
    served = alt_server(natkit_serve)
    done = subprocess.run(
        [sys.executable, "-m", "natkit", "diagnose", "--stun", f"127.0.0.1:{served.port}"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    assert "NAT type              open" in done.stdout
    assert "Verdict: direct P2P likely — most calls connect directly (exit 0)" in done.stdout
    assert "\x1b[" not in done.stdout  # no colour when not a terminal


def test_lifetime_on_loopback_never_expires(natkit_serve: Serve) -> None:
    served = alt_server(natkit_serve)
    report, code, _ = diagnose(
        "--stun", f"127.0.0.1:{served.port}", "--no-ice", "--lifetime", "--lifetime-max", "2"
    )
    assert report["lifetime"] == {
        "alive_s": 2.0,
        "expired_s": None,
        "samples": {"1": True, "2": True},
        "error": None,
    }
    assert code == 0


# -- wrong input: one clear line, never a traceback ----------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--turn", "turn://x"], "no '//'"),
        (["--turn", "http:example"], "is not a TURN URI"),
        (["--stun", "127.0.0.1:99999"], "is not a number"),
        (["--user", "alice"], "apply to --turn"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["diagnose", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_unresolvable_name_is_a_report_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real DNS query: the resolver is patched to fail as getaddrinfo does."""
    from natkit.diag import runner

    async def fail(*_: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(runner, "_resolve", fail)
    result = CliRunner().invoke(cli, ["diagnose", "--json", "--stun", "stun.invalid"])
    assert result.exit_code == 2, result.output
    report = json.loads(result.output)
    assert report["problems"] == [
        "stun:stun.invalid:3478: cannot resolve 'stun.invalid': Name or service not known"
    ]
    # Without --json: one line, no verdict (nothing was probed).
    text = CliRunner().invoke(cli, ["diagnose", "--stun", "stun.invalid"])
    assert text.exit_code == 2
    assert text.output.strip().splitlines() == [
        "natkit: error: diagnose: stun:stun.invalid:3478: cannot resolve 'stun.invalid': "
        "Name or service not known"
    ]


# -- coturn ---------------------------------------------------------------------------------


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    if shutil.which("turnserver") is None:
        pytest.skip("coturn's turnserver is not installed (apt-get install coturn)")
    port = free_port()
    alt = free_port("127.0.0.2")
    low = 42000 + (port % 200) * 20
    proc = subprocess.Popen(
        [
            "turnserver",
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--log-file=stdout",
            "--simple-log",
            "--listening-ip=127.0.0.1",
            "--listening-ip=127.0.0.2",
            f"--listening-port={port}",
            f"--alt-listening-port={alt}",
            "--relay-ip=127.0.0.1",
            f"--min-port={low}",
            f"--max-port={low + 19}",
            "--realm=natkit.test",
            "--lt-cred-mech",
            "--user=alice:wonderland",
            "--allow-loopback-peers",
            f"--pidfile={tmp_path / 'turnserver.pid'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("coturn did not start")
        yield port
    finally:
        stop_process(proc)


@pytest.mark.coturn
def test_coturn_is_open_and_relay_works(coturn: int) -> None:
    report, code, _ = diagnose(
        "--stun",
        f"127.0.0.1:{coturn}",
        "--turn",
        f"turn:127.0.0.1:{coturn}",
        "--user",
        "alice",
        "--password",
        "wonderland",
    )
    assert (report["mapping"], report["filtering"], report["nat_type"]) == (EIM, EIM, "open")
    assert report["turn"][0]["ok"] is True and report["verdict"]["relay_working"] is True
    assert {"host", "srflx", "relay"} <= {c["type"] for c in report["candidates"]}
    assert code == 0 and report["duration_s"] <= 3.0


@pytest.mark.coturn
def test_coturn_wrong_credentials_is_a_clear_line(coturn: int) -> None:
    report, code, _ = diagnose(
        "--stun",
        f"127.0.0.1:{coturn}",
        "--turn",
        f"turn:127.0.0.1:{coturn}",
        "--user",
        "alice",
        "--password",
        "nope",
        "--no-ice",
    )
    check = report["turn"][0]
    assert check["ok"] is False
    assert check["error"] == (
        "allocate: server answered 401 Unauthorized — wrong or missing TURN credentials"
        " (--user/--password, or --secret: the server's turn.auth.secret)"
    )
    assert report["verdict"]["relay_working"] is False
    assert any("401" in a for a in report["verdict"]["actions"])
    assert code == 0  # direct P2P is still possible on loopback


def _documented() -> set[str]:
    """Field names in the first column of docs/diagnose-json.md's table ("`udp.ipv4`, …")."""
    doc = (Path(__file__).parents[2] / "docs" / "diagnose-json.md").read_text()
    names: set[str] = set()
    for line in doc.splitlines():
        if line.startswith("| ") and "`" in line.split("|")[1]:
            names |= set(re.findall(r"`([a-z0-9_.]+)`", line.split("|")[1]))
    return names


def test_json_fields_are_the_documented_ones(natkit_serve: Serve) -> None:
    """Every field of the document (top level, udp.*, verdict.*) is in docs/diagnose-json.md,
    for a run that answered and one that found no server."""
    documented = _documented()
    served = alt_server(natkit_serve)
    runs = [f"127.0.0.1:{served.port}", f"127.0.0.1:{free_port()}"]
    for report, _, _ in (diagnose("--stun", stun, "--no-ice") for stun in runs):
        fields = {k for k in report if k not in ("udp", "verdict")}
        fields |= {f"udp.{k}" for k in report["udp"]} | {f"verdict.{k}" for k in report["verdict"]}
        assert fields <= documented, fields - documented


def test_progress_lines_name_the_icmp_evidence() -> None:
    """The live progress (a terminal's stderr) says what came back, in plain words."""
    import asyncio

    from natkit.diag.runner import DiagnoseOptions, StunSpec
    from natkit.diag.runner import diagnose as run

    lines: list[tuple[str, str, str]] = []
    port = free_port()
    options = DiagnoseOptions(stun=(StunSpec.parse(f"127.0.0.1:{port}"),), gather=False)
    asyncio.run(run(options, lambda *event: lines.append(event)))
    assert (
        "udp4",
        "fail",
        "IPv4: no STUN server answered (ICMP port-unreachable from 127.0.0.1)",
    ) in lines
