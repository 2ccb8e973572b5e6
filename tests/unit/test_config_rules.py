"""One set of rules: `config check` refuses exactly what `serve` (and `turn render`, `diagnose`)
would refuse, with FILE:LINE: key.path, and config values are parsed once, at load.

Each gap below passed `config check` before and was refused later without a line number (or not
at all: a relay range over a listener port). The corpus test runs `natkit.serve.preflight` —
everything serve checks before it binds a socket — on every config the loader accepts.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from natkit.cli import cli
from natkit.config import ConfigError, loads
from natkit.config.ignored import ignored_keys, ignored_message
from natkit.config.model import PortRange
from natkit.diag.runner import StunSpec
from natkit.errors import NatkitError
from natkit.serve import preflight
from natkit.turn.engine import parse_ports, relay_settings
from natkit.turn.uri import TurnURI
from natkit.uri import StunURI

SECRET = "auth: {secret: lab-only}"

GAPS = [
    (
        "turn: {enabled: true, auth: {}}\n",
        "c.yaml:1: turn.auth: set `secret` or `users`: natkit runs no open relay",
    ),
    (
        "turn:\n  enabled: true\n  engine: coturn\n  auth:\n    secret: s\n    users: {a: b}\n",
        "c.yaml:5: turn.auth: the coturn engine cannot use both `secret` and `users`",
    ),
    (
        "stun: {listen: ['udp://127.0.0.1:50000']}\n"
        f"turn:\n  enabled: true\n  {SECRET}\n  relay: {{ports: 49152-65535}}\n",
        "c.yaml:5: turn.relay.ports: 49152-65535 includes port 50000 of udp://127.0.0.1:50000",
    ),
    (
        # No relay key at all: the default range is blamed at the turn section's line.
        f"stun: {{listen: ['udp://127.0.0.1:50000']}}\nturn: {{enabled: true, {SECRET}}}\n",
        "c.yaml:2: turn.relay.ports: 49152-65535 includes port 50000",
    ),
    (
        "stun:\n  listen: ['udp://127.0.0.1:3478']\n  alternate: 127.0.0.2:50001\n"
        f"turn: {{enabled: true, {SECRET}}}\n",
        "c.yaml:4: turn.relay.ports: 49152-65535 includes port 50001 of stun.alternate",
    ),
    ("diagnose: {timeout: 1000}\n", "c.yaml:1: diagnose.timeout: must be from 0.2 to 60 seconds"),
    ("diagnose: {timeout: 0.1}\n", "c.yaml:1: diagnose.timeout: must be from 0.2 to 60 seconds"),
    (
        "diagnose:\n  stun: ['stun:a.org', 'stuns:x.org']\n",
        "c.yaml:2: diagnose.stun[1]: 'stuns:x.org': stuns: (STUN over TLS) is not probed",
    ),
    (
        "diagnose:\n  turn:\n    - url: turns:x.org?transport=udp\n",
        "c.yaml:3: diagnose.turn[0].url: 'turns:x.org?transport=udp': turns over udp (DTLS)",
    ),
    (
        "stun:\n  listen: ['udp://0.0.0.0:3478']\n  alternate: 203.0.113.11:3479\n",
        "c.yaml:2: stun.listen[0]: udp://0.0.0.0:3478 listens on a wildcard address",
    ),
    (
        "stun:\n  listen: ['udp://127.0.0.1:3478']\n  alternate: 127.0.0.2:3478\n",
        "c.yaml:3: stun.alternate: 127.0.0.2:3478 must differ from udp://127.0.0.1:3478",
    ),
    (
        "stun:\n  listen: ['udp://127.0.0.1:3478', 'tcp://127.0.0.1:3479']\n"
        f"turn: {{enabled: true, engine: coturn, {SECRET}}}\n",
        "c.yaml:2: stun.listen: the coturn engine needs one port for udp/tcp and one for tls",
    ),
    (
        f"stun: {{enabled: false}}\nturn: {{enabled: true, {SECRET}}}\n",
        "c.yaml:1: stun.enabled: the builtin TURN engine shares the STUN listeners",
    ),
]


@pytest.mark.parametrize(("text", "message"), GAPS, ids=[m.split(": ")[1] for _, m in GAPS])
def test_each_gap_is_refused_at_load_with_its_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads("version: 1\n" + text, "c.yaml")
    # The message counts lines from "version: 1", which the test prepends.
    file, line, rest = message.split(":", 2)
    assert str(info.value).startswith(f"{file}:{int(line) + 1}:{rest}"), str(info.value)


# Configs the loader accepts: serve's preflight must accept each (no socket is bound).
GOOD = [
    "stun: {listen: ['udp://127.0.0.1:3478', 'tcp://127.0.0.1:3478']}\n",
    f"stun: {{listen: ['udp://127.0.0.1:3478']}}\nturn: {{enabled: true, {SECRET}}}\n",
    "stun: {listen: ['udp://127.0.0.1:50000']}\n"
    f"turn: {{enabled: true, {SECRET}, relay: {{ports: 40000-40100}}}}\n",
    "stun:\n  listen: ['udp://127.0.0.1:3478']\n  alternate: 127.0.0.2:3479\n"
    "turn: {enabled: true, auth: {users: {a: b}}, relay: {ports: '3480-3490'}}\n",
    # A config for `diagnose` only: not a server config, but valid (serve says "nothing to serve").
    "diagnose: {stun: ['stun:127.0.0.1'], timeout: 60}\n",
]
CORPUS = [text for text, _ in GAPS] + GOOD


@pytest.mark.parametrize("text", CORPUS)
def test_config_check_fails_iff_serve_setup_fails(text: str) -> None:
    full = "version: 1\nmetrics: {listen: null}\n" + text
    try:
        config = loads(full, "c.yaml")
    except ConfigError:
        check_ok = serve_ok = False
    else:
        check_ok = True
        if "coturn" in text and shutil.which("turnserver") is None:
            pytest.skip("coturn (turnserver) is not installed")
        try:
            preflight(config)
            serve_ok = True
        except NatkitError as err:
            serve_ok = "nothing to serve" in str(err) and not config.stun.enabled
    assert check_ok == serve_ok, text


def test_serve_preflight_refuses_an_open_relay_built_in_python() -> None:
    config = loads("version: 1\nstun: {listen: ['udp://127.0.0.1:3478']}\n", "c.yaml")
    open_relay = dataclasses.replace(config, turn=dataclasses.replace(config.turn, enabled=True))
    with pytest.raises(ConfigError, match=r"c.yaml: turn.auth: .*no open relay"):
        preflight(open_relay)


def test_the_relay_range_is_parsed_once_at_load() -> None:
    config = loads(
        f"version: 1\nturn: {{enabled: true, {SECRET}, relay: {{ports: ' 40000 - 40100'}}}}\n"
    )
    assert config.turn.relay.port_range == PortRange(40000, 40100)
    assert config.turn.relay.ports == "40000-40100"  # config show keeps the contract's string
    assert parse_ports(config) == (40000, 40100)
    assert relay_settings(config).ports == (40000, 40100)
    assert 40100 in config.turn.relay.port_range and 40101 not in config.turn.relay.port_range


def test_diagnose_and_the_loader_share_one_uri_parser() -> None:
    assert StunSpec is StunURI
    config = loads("version: 1\ndiagnose: {stun: ['STUN:x.org', '[::1]:9']}\n")
    assert config.diagnose.stun == ("stun:x.org:3478", "stun:[::1]:9")
    assert [str(StunSpec.parse(s)) for s in config.diagnose.stun] == list(config.diagnose.stun)
    assert str(TurnURI.parse("turns:x.org")) == "turns:x.org:5349"


COTURN = "turn: {enabled: true, engine: coturn, auth: {secret: s}}\n"


def test_coturn_ignored_keys_are_named_exactly() -> None:
    assert ignored_keys(loads("version: 1\n" + COTURN.replace("coturn,", "builtin,"))) == []
    default = loads("version: 1\n" + COTURN)
    assert [i.key for i in ignored_keys(default)] == ["stun.rate_limit", "metrics.listen"]
    every = loads(
        "version: 1\n" + COTURN + "stun:\n  enabled: false\n  workers: 2\n  software: x\n"
        "  stream: {idle_timeout: 5}\nsignal: {enabled: true}\n"
        "metrics: {listen: null}\n"
    )
    every = dataclasses.replace(
        every,
        turn=dataclasses.replace(
            every.turn,
            lifetime=dataclasses.replace(every.turn.lifetime, default=300),
            alternate_server="192.0.2.7:3478",
            drain_timeout=5.0,
        ),
    )
    assert [i.key for i in ignored_keys(every)] == [
        "stun.enabled",
        "stun.workers",
        "stun.rate_limit",
        "stun.stream",
        "stun.software",
        "turn.lifetime.default",
        "turn.alternate_server",
        "turn.drain_timeout",
        "signal.enabled",
    ]
    quiet = loads("version: 1\n" + COTURN + "stun: {rate_limit: {enabled: false}}\n"
                  "metrics: {listen: null}\n")  # fmt: skip
    assert ignored_keys(quiet) == []
    assert ignored_message(ignored_keys(default)).startswith(
        "turn.engine coturn ignores stun.rate_limit (coturn has no per-source request limit); "
        "metrics.listen ("
    )


def test_config_check_warns_about_ignored_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\n" + COTURN)
    result = CliRunner().invoke(cli, ["config", "check", "-c", str(path)])
    assert result.exit_code == 0
    assert result.stdout.startswith(f"{path}: ok")
    assert result.stderr == (
        "natkit: warning: " + ignored_message(ignored_keys(loads("version: 1\n" + COTURN))) + "\n"
    )


def test_addresses_and_uris_are_parsed_once_at_load() -> None:
    config = loads(
        "version: 1\nstun: {listen: ['udp://127.0.0.1:3478'], alternate: '127.0.0.2:3479'}\n"
        "diagnose:\n  stun: [x.org]\n  turn: [{url: 'turns:t.org', secret: s}]\n"
    )
    assert config.stun.alternate_address == ("127.0.0.2", 3479)
    assert config.diagnose.stun_uris == (StunURI("stun:x.org:3478", "x.org", 3478),)
    assert config.diagnose.turn[0].uri == TurnURI("turns", "t.org", 5349, "tcp")
    assert loads("version: 1\n").stun.alternate_address is None


TLS_DATA = Path(__file__).resolve().parents[1] / "data" / "config" / "tls"


def test_tls_files_serve_would_not_load_are_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nnot one\n")
    (tmp_path / "key.pem").write_text("junk\n")
    text = (
        "version: 1\nmetrics: {listen: null}\nstun:\n"
        "  listen: ['tls://127.0.0.1:5349']\n  tls: {cert: cert.pem, key: key.pem}\n"
    )
    with pytest.raises(ConfigError, match=r"^c.yaml:5: stun.tls.cert: cannot load .*cert.pem"):
        loads(text, "c.yaml", base_dir=tmp_path)
    # coturn reads the files itself: natkit serve does not load them, nor does the loader.
    coturn = text + "turn: {enabled: true, engine: coturn, auth: {secret: s}}\n"
    assert loads(coturn, "c.yaml", base_dir=tmp_path).turn.engine == "coturn"
    good = loads(text, "c.yaml", base_dir=TLS_DATA)  # the test fixture is a real certificate
    preflight(good)
