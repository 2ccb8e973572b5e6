"""natkit check end to end on loopback: natkit serve with check.enabled, a real headless
Chromium running the page, and hostile clients of the API and the prober."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from natkit.check import ice
from natkit.check.headless import Browser, launch, run_check, run_friends
from natkit.stun.constants import AttrType as A
from natkit.stun.constants import MessageClass, Method
from natkit.stun.message import Message, parse_message
from natkit.testing import Served, free_port, self_signed_certificate, serve

pytestmark = pytest.mark.integration

SECRET = "check-test-secret"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Served, str]]:
    port, alt, http = free_port(), free_port(), free_port("tcp")
    config = {
        "version": 1,
        "stun": {
            "listen": [f"udp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}"],
            "alternate": f"127.0.0.2:{alt}",
            "workers": 1,
        },
        "turn": {
            "enabled": True,
            "realm": "check.test",
            "auth": {"secret": SECRET},
            "relay": {"address": "127.0.0.1", "ports": "61000-61099"},  # no free_port there
            "drain_timeout": 0.5,  # the page's relay checks leave allocations: stop at once
        },
        "check": {"enabled": True, "listen": f"http://127.0.0.1:{http}", "tests_per_minute": 8},
        "metrics": {"listen": f"127.0.0.1:{free_port('tcp')}"},
    }
    with serve(config) as s:
        yield s, f"http://127.0.0.1:{http}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # One browser for the module; the HTTPS test's certificate is self-signed.
    with launch(extra_flags=("--ignore-certificate-errors",)) as b:
        yield b


def test_https_page_and_turn_over_tls(browser: Browser, tmp_path: Path) -> None:
    """check.listen https:// uses the STUN TLS certificate; the page checks turns: too."""
    cert, key = self_signed_certificate(tmp_path)
    port, tls, http = free_port(), free_port("tcp"), free_port("tcp")
    config = {
        "version": 1,
        "stun": {
            "listen": [f"udp://127.0.0.1:{port}", f"tls://127.0.0.1:{tls}"],
            "workers": 1,
            "tls": {"cert": str(cert), "key": str(key)},
        },
        "turn": {
            "enabled": True,
            "realm": "check.test",
            "auth": {"secret": SECRET},
            "relay": {"address": "127.0.0.1", "ports": "61100-61199"},
            "drain_timeout": 0.5,
        },
        "check": {"enabled": True, "listen": f"https://127.0.0.1:{http}"},
        "metrics": {"listen": None},
    }
    with serve(config) as s:
        assert f"check https://127.0.0.1:{http}/check" in s.lines
        for junk in (b"GET /check HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05hello"):
            with socket.create_connection(("127.0.0.1", http), timeout=5) as sock:
                sock.sendall(junk)  # plain HTTP or a broken ClientHello: closed, nothing else
                assert sock.recv(100) == b""
        report = run_check(browser, f"https://127.0.0.1:{http}/check", timeout=20)
    turn = {t["transport"]: t for t in report["turn"]}
    assert set(turn) == {"udp", "tls"} and turn["tls"]["url"].startswith("turns:"), turn
    assert turn["tls"]["ok"] and turn["udp"]["ok"], turn
    # No alternate address: mapping and filtering are partly unknown, and the report says so.
    assert report["mapping"] is None and report["filtering"] is None
    assert any("stun.alternate" in p for p in report["problems"])


def _call(base: str, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as res:
            return res.status, res.headers, res.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_the_page_reports_like_diagnose(served: tuple[Served, str], browser: Browser) -> None:
    s, base = served
    start = time.monotonic()
    report = run_check(browser, base + "/check", timeout=20)
    took = time.monotonic() - start
    assert report["source"] == "browser" and report["version"] == 1, report
    assert took < 10 and report["duration_s"] <= 5.0
    # Loopback: no NAT in the way, every probe gets in and every mapping is the same.
    assert report["udp"]["reachable"] is True
    assert report["mapping"] == "endpoint-independent"
    assert report["filtering"] == "endpoint-independent"
    assert report["nat_type"] in ("open", "full-cone")
    assert report["browser"]["filtering_answered"] == ["a1", "p1", "p3"]
    turn = {t["transport"]: t for t in report["turn"]}
    assert set(turn) == {"udp", "tcp"}
    assert all(t["ok"] and t["rtt_ms"] is not None for t in turn.values()), turn
    assert turn["udp"]["relayed_address"].startswith("127.0.0.1:610")
    assert report["verdict"]["relay_working"] is True and report["exit_status"] == 0
    for key in ("public_address", "port_preservation", "hairpinning", "candidates", "verdict"):
        assert key in report
    # The same report for a few minutes, by id; the secret never reaches the page.
    status, _, body = _call(base, "GET", f"/check/api/report/{report['id']}")
    assert status == 200 and json.loads(body) == report
    assert SECRET not in body.decode()
    assert s.metric(r"natkit_check_reports_total") >= 1


def test_the_page_is_static_and_self_contained(served: tuple[Served, str]) -> None:
    _, base = served
    status, headers, body = _call(base, "GET", "/check")
    assert status == 200 and b"/check/check.js" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    for path in ("/check", "/check/check.js", "/check/check.css"):
        text = _call(base, "GET", path)[2].decode()
        assert not re.search(r"https?://", text), f"{path} names another origin"


def test_hostile_http_gets_answers_not_tracebacks(served: tuple[Served, str]) -> None:
    s, base = served
    assert _call(base, "GET", "/check/api/report/nope")[0] == 404
    assert _call(base, "GET", "/check/api/report/" + "x" * 500)[0] == 404
    assert _call(base, "POST", "/check/api/test/zz/report", raw=b"{}")[0] == 404
    assert _call(base, "POST", "/check/api/test", raw=b"x" * 40000)[0] == 413
    assert _call(base, "DELETE", "/check/api/test")[0] == 405
    body = _call(base, "POST", "/check/api/test", raw=b"")[2]
    test_id = json.loads(body)["id"]
    for raw in (b"not json", b"[1]", b'{"sdp": 5}', b'{"sdp": "v=0"}', b"\xff\xfe"):
        assert _call(base, "POST", f"/check/api/test/{test_id}/ice/mapping", raw=raw)[0] == 400
    assert _call(base, "POST", f"/check/api/test/{test_id}/report", raw=b'{"turn": 7}')[0] == 200
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /check HTTP/1.1\r\n" + b"X: " + b"a" * 9000 + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    with socket.create_connection((host, int(port)), timeout=8) as sock:
        sock.sendall(b"GET /ch")  # and nothing more: 408 after 5 s, the slot is freed
        assert sock.recv(100).startswith(b"HTTP/1.1 408")
    assert s.metric("natkit_check_bad_requests_total") >= 8
    # The per-source test budget (8 a minute here), from a source of its own: the 429 is an
    # answer, counted; other sources are not affected.
    statuses = [_raw_post(host, int(port), "127.0.0.9") for _ in range(9)]
    assert statuses == [201] * 8 + [429]
    assert s.metric("natkit_check_refused_rate_total") >= 1
    # Requests per source (30/s, burst 90): a flood of GETs gets 429s, as answers.
    flood = [_raw_get(host, int(port), "127.0.0.10") for _ in range(120)]
    assert flood[:80] == [404] * 80 and flood[-1] == 429
    assert s.proc.poll() is None


def _raw_get(host: str, port: int, source: str) -> int:
    with socket.create_connection((host, port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(b"GET /check/api/report/none HTTP/1.1\r\n\r\n")
        return int(sock.recv(100).split(b" ")[1])


def _raw_post(host: str, port: int, source: str) -> int:
    with socket.create_connection((host, port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(b"POST /check/api/test HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        return int(sock.recv(100).split(b" ")[1])


def _browser_check(
    to: tuple[str, int], ufrag: str, pwd: str, mine: str, sock: socket.socket
) -> None:
    msg = Message(Method.BINDING, MessageClass.REQUEST, secrets.token_bytes(12))
    msg.add(A.USERNAME, f"{ufrag}:{mine}")
    msg.add(A.PRIORITY, 1862270975)
    msg.add(A.ICE_CONTROLLING, 7)
    sock.sendto(msg.encode(integrity_key=pwd.encode(), fingerprint=True), to)


def test_a_forged_candidate_is_never_probed(served: tuple[Served, str]) -> None:
    """The offer names a victim's address; natkit probes only where the checks came from."""
    _, base = served
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    me = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.3", 0))
    me.bind(("127.0.0.1", 0))
    try:
        vhost, vport = victim.getsockname()
        offer = (
            "v=0\r\na=ice-ufrag:mine\r\na=ice-pwd:browserpasswordbrowserpw\r\na=mid:0\r\n"
            f"a=candidate:1 1 udp 2113937151 {vhost} {vport} typ host\r\n"
            f"a=candidate:2 1 udp 1677729535 {vhost} {vport} typ srflx raddr 0.0.0.0 rport 0\r\n"
        )
        body = _call(base, "POST", "/check/api/test", raw=b"")[2]
        test_id = json.loads(body)["id"]
        body = _call(base, "POST", f"/check/api/test/{test_id}/ice/filtering", {"sdp": offer})[2]
        answer = json.loads(body)["sdp"]
        ufrag = re.search(r"a=ice-ufrag:(\S+)", answer)[1]  # type: ignore[index]
        pwd = re.search(r"a=ice-pwd:(\S+)", answer)[1]  # type: ignore[index]
        chost, cport = re.search(r"candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", answer).groups()  # type: ignore[union-attr]
        _browser_check((chost, int(cport)), ufrag, pwd, "mine", me)
        me.settimeout(0.3)
        victim.settimeout(0.3)
        got: list[bytes] = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                got.append(me.recv(2048))
        with pytest.raises(TimeoutError):
            victim.recv(2048)
        probes = [m for m in map(parse_message, got) if m.message_class == MessageClass.REQUEST]
        assert 0 < len(probes) <= ice.MAX_PROBES
        assert all(p.get(A.USERNAME) == f"mine:{ufrag}" for p in probes)
    finally:
        victim.close()
        me.close()


def test_with_a_friend_on_loopback(served: tuple[Served, str], browser: Browser) -> None:
    """Two tabs pair through the page's own origin: a data channel direct and through TURN."""
    _, base = served
    results = run_friends(browser, browser, base + "/check", timeout=30)
    for result in results:
        assert result["direct"]["connected"] and result["relay"]["connected"], result
        assert result["predicted_direct"] is True and result["held"] is True, result
        assert result["relay"]["pair"]["local"] == "relay", result
    assert results[0]["direct"]["rtt_ms"] is not None
    # A used code is gone; a made-up one never existed.
    code = results[0]["code"]
    assert _call(base, "GET", f"/check/api/pair/{code}")[0] == 404
    assert _call(base, "PUT", "/check/api/pair/abcd.efgh/direct/offer", {"sdp": "x"})[0] == 404


def test_the_cli_runs_the_page_headless(served: tuple[Served, str]) -> None:
    """`natkit check URL --json`: the report on stdout, diagnose's exit status."""
    _, base = served
    done = subprocess.run(
        [sys.executable, "-m", "natkit", "check", base + "/check", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["source"] == "browser" and done.returncode == report["exit_status"] == 0
    bad = subprocess.run(
        [sys.executable, "-m", "natkit", "check", "ftp://x"], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "http://" in bad.stderr


def test_idle_connections_cannot_fill_the_server(served: tuple[Served, str]) -> None:
    """256 connections at most, 16 per source: past that the oldest unread one is closed to make
    room, and a real request is still answered."""
    _, base = served
    host, port = base.removeprefix("http://").split(":")
    idle: list[socket.socket] = []
    try:
        for n in range(17):  # 17 sources x 16 idle connections = 272 > 256
            for _ in range(16):
                idle.append(socket.create_connection((host, int(port)), 5, (f"127.0.1.{n + 1}", 0)))
        time.sleep(0.3)
        assert _raw_get(host, int(port), "127.0.2.1") == 404  # served, not refused
        idle[0].settimeout(2)
        assert idle[0].recv(100) == b""  # the oldest idle one was closed for the newcomers
    finally:
        for sock in idle:
            sock.close()
