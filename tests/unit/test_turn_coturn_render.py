"""turnserver.conf rendering per coturn version, version parsing, log parsing, file mode."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from pathlib import Path

import pytest

from natkit.config import Config, load, loads
from natkit.errors import ConfigError
from natkit.turn import coturn
from natkit.turn.coturn_conf import KNOWN_BYPASSES, Bypass

LAB = """
version: 1
stun:
  listen: ["udp://127.0.0.1:3478", "tcp://127.0.0.1:3478"]
turn:
  enabled: true
  engine: coturn
  realm: lab.example
  auth: {secret: topsecret}
  relay: {address: 127.0.0.1, ports: "50000-50100"}
  peers: {allow: ["127.0.0.1/32"]}
"""


@pytest.fixture
def cfg() -> Config:
    return loads(LAB, "lab.yaml")


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("4.6.1\n", (4, 6, 1)),
        ("Version Coturn-4.17.1 'Gorst'", (4, 17, 1)),
        ("Coturn-4.10.0 'Gorst'\n", (4, 10, 0)),
        ("no digits", None),
    ],
)
def test_parse_version(text: str, version: tuple[int, int, int] | None) -> None:
    assert coturn.parse_version(text) == version


def test_render_461(cfg: Config) -> None:
    out = lines(coturn.render(cfg, (4, 6, 1)))
    for expected in [
        "listening-ip=127.0.0.1",
        "listening-port=3478",
        "no-tls",
        "no-dtls",
        "no-rfc5780",  # on by default in 4.6
        "realm=lab.example",
        "use-auth-secret",
        "static-auth-secret=topsecret",
        "min-port=50000",
        "max-port=50100",
        "relay-ip=127.0.0.1",
        "user-quota=10",
        "total-quota=1000",
        "fingerprint",
        "no-cli",
        "no-multicast-peers",
        "allow-loopback-peers",
        "allowed-peer-ip=127.0.0.1",
        "denied-peer-ip=10.0.0.0-10.255.255.255",
        "denied-peer-ip=::ffff:0.0.0.0-::ffff:255.255.255.255",  # CVE-2026-27624 closed
        "log-file=stdout",
        "simple-log",
        "pidfile=",
    ]:
        assert expected in out
    assert not [ln for ln in out if "peer-ip=" in ln and "/" in ln]  # never CIDR
    assert "lt-cred-mech" not in out


def test_render_newer_version(cfg: Config) -> None:
    out = lines(coturn.render(cfg, (4, 17, 1)))
    assert "no-rfc5780" not in out and "rfc5780" not in out  # opt-in from 4.7, not asked
    assert "denied-peer-ip=::ffff:0.0.0.0-::ffff:255.255.255.255" not in out  # fixed in 4.9
    assert "no-cli" in out


def test_rfc5780_per_version(cfg: Config) -> None:
    cfg = dataclasses.replace(cfg, stun=dataclasses.replace(cfg.stun, alternate="127.0.0.2:3479"))
    old = lines(coturn.render(cfg, (4, 6, 1)))
    new = lines(coturn.render(cfg, (4, 8, 0)))
    assert "alt-listening-port=3479" in old and "listening-ip=127.0.0.2" in old
    assert "no-rfc5780" not in old and "rfc5780" not in old  # 4.6: on by default
    assert "rfc5780" in new  # opt-in from 4.7


def test_tls_per_version(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("cert")
    (tmp_path / "k.pem").write_text("key")
    text = LAB.replace(
        '"tcp://127.0.0.1:3478"]',
        '"tcp://127.0.0.1:3478", "tls://127.0.0.1:5349"]\n  tls: {cert: c.pem, key: k.pem}',
    )
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    tls_cfg = load(str(path))
    old = lines(coturn.render(tls_cfg, (4, 6, 1)))
    assert {"tls-listening-port=5349", "no-tlsv1", "no-tlsv1_1"} <= set(old)
    assert f"cert={tmp_path / 'c.pem'}" in old and f"pkey={tmp_path / 'k.pem'}" in old
    assert "no-tls" not in old
    assert "no-tlsv1" not in lines(coturn.render(tls_cfg, (4, 7, 0)))


def test_static_users_and_errors(cfg: Config) -> None:
    auth = dataclasses.replace(cfg.turn.auth, secret=None, users={"alice": "pw"})
    users = dataclasses.replace(cfg, turn=dataclasses.replace(cfg.turn, auth=auth))
    out = lines(coturn.render(users, (4, 6, 1)))
    assert "lt-cred-mech" in out and "user=alice:pw" in out
    both = dataclasses.replace(auth, secret="s")
    with pytest.raises(ConfigError, match="cannot use both"):
        coturn.render(
            dataclasses.replace(cfg, turn=dataclasses.replace(cfg.turn, auth=both)), (4, 6, 1)
        )
    none = dataclasses.replace(auth, users={})
    with pytest.raises(ConfigError, match="open relay"):
        coturn.render(
            dataclasses.replace(cfg, turn=dataclasses.replace(cfg.turn, auth=none)), (4, 6, 1)
        )


def test_unclosable_bypass_refuses_unless_allowed(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Bypass("CVE-0000-0001", (9, 0, 0), "test hole", ())
    monkeypatch.setattr("natkit.turn.coturn_conf.KNOWN_BYPASSES", (*KNOWN_BYPASSES, fake))
    with pytest.raises(coturn.VulnerableCoturnError, match=r"CVE-0000-0001.*allow_vulnerable"):
        coturn.render(cfg, (4, 6, 1))
    allowed = dataclasses.replace(
        cfg,
        turn=dataclasses.replace(
            cfg.turn, coturn=dataclasses.replace(cfg.turn.coturn, allow_vulnerable=True)
        ),
    )
    assert "realm=lab.example" in coturn.render(allowed, (4, 6, 1))
    # CVE-2020-26262 (before 4.5.2) cannot be closed by config lines.
    with pytest.raises(coturn.VulnerableCoturnError, match="CVE-2020-26262"):
        coturn.render(cfg, (4, 5, 1))


@pytest.mark.parametrize(
    ("line", "level", "msg"),
    [
        ("0: : ERROR: A peer IP 10.1.2.3 denied", logging.ERROR, "A peer IP 10.1.2.3 denied"),
        ("12: (4242): INFO: session 1 closed", logging.INFO, "session 1 closed"),
        ("3: : WARNING: cannot support CHANGE_REQUEST", logging.WARNING, "cannot support"),
        ("Version Coturn-4.6.1 'Gorst'", logging.INFO, "Version Coturn-4.6.1 'Gorst'"),
        ("CONFIGURATION ALERT: mixed", logging.INFO, "CONFIGURATION ALERT: mixed"),
    ],
)
def test_parse_log_line(line: str, level: int, msg: str) -> None:
    parsed = coturn.parse_log_line(line)
    assert parsed is not None
    assert parsed[0] == level and parsed[1].startswith(msg)


def test_parse_log_line_blank() -> None:
    assert coturn.parse_log_line("   \n") is None
    assert coturn.parse_log_line("0: : ") is None


def test_write_private(tmp_path: Path) -> None:
    path = tmp_path / "t.conf"
    path.write_text("old")
    os.chmod(path, 0o644)
    coturn.write_private(str(path), "static-auth-secret=x\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "static-auth-secret=x\n"
