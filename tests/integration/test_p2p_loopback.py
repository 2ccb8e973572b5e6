"""`natkit p2p offer` and `answer` as real processes, pairing through `natkit p2p signal`.

Everything stays on 127.0.0.1: host candidates are pinned with --host (aioice never offers
loopback by itself) and no STUN/TURN server outside the test is named.
"""

from __future__ import annotations

import json
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import free_port, reap

pytestmark = pytest.mark.integration

NATKIT = [sys.executable, "-m", "natkit"]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        reap(proc)


def spawn(started: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*NATKIT, "p2p", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started.append(proc)
    return proc


@pytest.fixture
def signal_url(processes: list[subprocess.Popen[str]]) -> str:
    port = free_port()
    proc = subprocess.Popen(
        [*NATKIT, "p2p", "signal", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    processes.append(proc)
    deadline = time.monotonic() + 15
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline and proc.poll() is None:  # until it accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return url
        except OSError:
            time.sleep(0.1)
    pytest.fail("natkit p2p signal did not start")


def read_code(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """The pairing code from the offerer's stderr (with --json, stdout is only the JSON)."""
    assert proc.stderr is not None
    with selectors.DefaultSelector() as sel:  # bounded: a hung offerer must not hang the test
        sel.register(proc.stderr, selectors.EVENT_READ)
        assert sel.select(timeout), "the offerer printed no pairing code"
    line = proc.stderr.readline()  # the offerer prints it before anything else
    assert line.startswith("pairing code: "), line
    return line.split()[2]


def test_offer_and_answer_connect_on_loopback(
    processes: list[subprocess.Popen[str]], signal_url: str
) -> None:
    common = ["--signal", signal_url, "--host", "127.0.0.1", "--timeout", "20", "--wait", "30"]
    offerer = spawn(processes, "offer", *common, "--bytes", "262144", "--json")
    code = read_code(offerer)
    answerer = spawn(processes, "answer", code.upper(), *common)  # codes are case-insensitive
    a_out, a_err = answerer.communicate(timeout=60)
    o_out, _ = offerer.communicate(timeout=60)
    assert (answerer.returncode, offerer.returncode) == (0, 0), (a_out, a_err)

    report = json.loads(o_out)
    assert report["version"] == 1 and report["role"] == "offer" and report["code"] == code
    assert report["connected"] is True and report["error"] is None
    assert 0 < report["ice_s"] < 5
    selected = report["selected"]
    assert selected["kind"] == "host"
    for end in ("local", "remote"):
        assert selected[end]["type"] == "host" and selected[end]["address"] == "127.0.0.1"
        assert selected[end]["protocol"] == "udp" and selected[end]["port"] > 0
    assert 0 < report["rtt_min_ms"] <= report["rtt_ms"] < 100
    assert report["bytes"] == 262144 and report["throughput_mbps"] > 0
    assert [s["state"] for s in report["ice_states"]][:2] == ["checking", "completed"]
    assert any(p["state"] == "succeeded" for p in report["tried_pairs"])

    # The answerer reports the same path and the offerer's measurements, as text.
    assert a_out.startswith("connected (answer)")
    assert "selected     host: host udp 127.0.0.1:" in a_out
    assert "RTT" in a_out and "262144 bytes" in a_out


def test_not_connected_is_exit_1_with_history_and_advice(
    processes: list[subprocess.Popen[str]], signal_url: str, natkit_serve: Callable[..., Any]
) -> None:
    # The answerer may only use a TURN server that refuses the connection: it has no candidate.
    # The offerer names a STUN server (natkit serve with an RFC 5780 alternate) so its failure
    # report carries natkit diagnose's view of its NAT.
    port = free_port()
    natkit_serve(
        port=port,
        stun={"listen": [f"udp://127.0.0.1:{port}"], "alternate": f"127.0.0.2:{free_port()}"},
        metrics=False,
    )
    common = ["--signal", signal_url, "--timeout", "4", "--wait", "30"]
    stun = ["--stun", f"stun:127.0.0.1:{port}"]
    offerer = spawn(processes, "offer", *common, *stun, "--host", "127.0.0.1", "--json")
    code = read_code(offerer)
    answerer = spawn(
        processes,
        "answer",
        code,
        *common,
        "--relay-only",
        "--turn",
        f"turn:127.0.0.1:{free_port()}?transport=tcp",
        "--user",
        "u",
        "--password",
        "p",
        "--json",
    )
    a_out, _ = answerer.communicate(timeout=60)
    o_out, _ = offerer.communicate(timeout=60)
    assert (answerer.returncode, offerer.returncode) == (1, 1)
    a_report, o_report = json.loads(a_out), json.loads(o_out)
    assert a_report["connected"] is False and a_report["candidates"]["local"] == []
    assert "TURN server gave no relay candidate" in a_report["advice"]
    assert o_report["connected"] is False and o_report["error"]
    assert o_report["selected"] is None and o_report["advice"]
    assert o_report["diagnosis"] == {
        "nat_type": "open",
        "mapping": "endpoint-independent",
        "filtering": "endpoint-independent",
        "direct_p2p": "likely",
        "compatible_peer_types": o_report["diagnosis"]["compatible_peer_types"],
    }
    assert "symmetric" in o_report["diagnosis"]["compatible_peer_types"]
    assert a_report["diagnosis"] is None  # it named no STUN server: nothing to ask


@pytest.mark.parametrize("role", ["offer", "answer"])
def test_unreachable_signal_is_one_line_exit_2(
    processes: list[subprocess.Popen[str]], role: str
) -> None:
    args = ["abcdefghjk"] if role == "answer" else []
    proc = spawn(processes, role, *args, "--signal", f"http://127.0.0.1:{free_port()}")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("natkit: error: cannot reach signal service")


def test_unknown_code_and_bad_options_are_exit_2(
    processes: list[subprocess.Popen[str]], signal_url: str
) -> None:
    proc = spawn(processes, "answer", "abcdefghjk", "--signal", signal_url)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "unknown or expired pairing code" in err
    proc = spawn(processes, "offer", "--signal", signal_url, "--relay-only")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--relay-only needs --turn" in err
