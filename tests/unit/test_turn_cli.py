"""natkit turn credentials / render / check argument handling (no sockets to the outside)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from natkit.cli import cli
from natkit.turn.credentials import verify

CONFIG = """
version: 1
stun:
  listen: ["udp://192.0.2.10:3478", "tcp://192.0.2.10:3478", "tls://192.0.2.10:5349"]
  tls: {cert: c.pem, key: k.pem}
turn:
  enabled: true
  engine: coturn
  auth: {secret: sesame}
  relay: {external_address: 203.0.113.10}
"""


@pytest.fixture
def config(tmp_path: Path) -> str:
    (tmp_path / "c.pem").write_text("c")
    (tmp_path / "k.pem").write_text("k")
    path = tmp_path / "natkit.yaml"
    path.write_text(CONFIG)
    return str(path)


def test_credentials_json_is_an_ice_server(config: str) -> None:
    result = CliRunner().invoke(
        cli, ["turn", "credentials", "--user", "alice", "-c", config, "--ttl", "10m", "--json"]
    )
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output)
    assert entry["urls"] == [
        "turn:203.0.113.10:3478?transport=udp",
        "turn:203.0.113.10:3478?transport=tcp",
        "turns:203.0.113.10:5349?transport=tcp",
    ]
    assert entry["username"].endswith(":alice")
    assert verify("sesame", entry["username"], entry["credential"], now=0)


def test_credentials_uri_and_secret_options() -> None:
    result = CliRunner().invoke(
        cli,
        [
            "turn",
            "credentials",
            "--user",
            "bob",
            "--secret",
            "s",
            "--uri",
            "turn:turn.example.org",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["urls"] == ["turn:turn.example.org:3478?transport=udp"]


@pytest.mark.parametrize(
    "args",
    [
        ["--user", "alice"],  # no secret anywhere
        ["--user", "alice", "--secret", "s", "--ttl", "1w"],
        ["--user", "alice", "--secret", "s", "--uri", "http://x"],
    ],
)
def test_credentials_bad_input(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATKIT_TURN_SECRET", raising=False)
    monkeypatch.delenv("NATKIT_CONFIG", raising=False)
    result = CliRunner().invoke(cli, ["turn", "credentials", *args])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "error:" in result.output


def test_render_for_a_given_version(config: str, tmp_path: Path) -> None:
    out = tmp_path / "turnserver.conf"
    result = CliRunner().invoke(
        cli, ["turn", "render", "-c", config, "--coturn-version", "4.6.1", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "static-auth-secret=sesame" in text and "no-tlsv1" in text
    assert (out.stat().st_mode & 0o777) == 0o600


def test_render_missing_binary_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        CONFIG.replace("stun:\n  listen", "stun:\n  listen").replace(
            "  relay:", "  coturn: {binary: /nonexistent/turnserver}\n  relay:"
        )
    )
    (tmp_path / "c.pem").write_text("c")
    (tmp_path / "k.pem").write_text("k")
    result = CliRunner().invoke(cli, ["turn", "render", "-c", str(path)])
    assert result.exit_code == 2
    assert result.output == (
        "natkit: error: turnserver not found: install the Debian package coturn "
        "(apt-get install coturn)\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["http://example.org"],
        ["turn://example.org"],
        ["turn:127.0.0.1", "--password", "p"],
        ["turn:127.0.0.1", "--user", "u", "--password", "p", "--secret", "s"],
        ["turn:127.0.0.1", "--peer", "not-an-ip"],
    ],
)
def test_check_bad_input_exits_2(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["turn", "check", *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("natkit: error:") and result.output.count("\n") == 1


def test_check_unresolvable_host_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # no DNS traffic from tests
    result = CliRunner().invoke(
        cli, ["turn", "check", "turn:turn.invalid", "--user", "u", "--password", "p"]
    )
    assert result.exit_code == 2
    assert result.output == (
        "natkit: error: cannot resolve 'turn.invalid': Name or service not known\n"
    )


def test_credentials_without_a_config_name_this_hosts_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The built-in default listens on 0.0.0.0: "turn:localhost:3478" would be useless in an
    # iceServers entry, so the URL carries the host's address on its default-route interface.
    import ipaddress

    from natkit.turn.engine import host_relay_ips

    monkeypatch.delenv("NATKIT_CONFIG", raising=False)
    result = CliRunner().invoke(
        cli, ["turn", "credentials", "--user", "alice", "--secret", "s", "--json"]
    )
    assert result.exit_code == 0, result.output
    urls = json.loads(result.output)["urls"]
    ip = host_relay_ips()[4]
    assert urls == [f"turn:{ip}:3478?transport=udp", f"turn:{ip}:3478?transport=tcp"]
    assert not ipaddress.ip_address(ip).is_loopback


def test_credentials_host_replaces_the_address_of_every_listener(config: str) -> None:
    result = CliRunner().invoke(
        cli, ["turn", "credentials", "--user", "a", "-c", config, "--host", "turn.example.org"]
    )
    assert result.exit_code == 0, result.output
    urls = [line.split()[1] for line in result.output.splitlines() if line.startswith("url:")]
    assert urls == [
        "turn:turn.example.org:3478?transport=udp",
        "turn:turn.example.org:3478?transport=tcp",
        "turns:turn.example.org:5349?transport=tcp",
    ]


def test_credentials_host_and_uri_together_is_bad_input() -> None:
    result = CliRunner().invoke(
        cli,
        ["turn", "credentials", "--user", "a", "--secret", "s", "--host", "h", "--uri", "turn:h"],
    )
    assert result.exit_code == 2
    assert result.stderr == "natkit: error: give either --host or --uri, not both\n"


def test_credentials_help_says_where_the_address_comes_from() -> None:
    result = CliRunner().invoke(cli, ["turn", "credentials", "--help"])
    text = " ".join(result.output.split())
    assert "turn.relay.external_address" in text and "interface of its default route" in text
