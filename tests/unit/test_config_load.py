"""natkit.config.load/loads: defaults, type conversion, ${VAR} substitution, files and paths."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import natkit.config
from natkit.addr import ListenURI, Transport
from natkit.config import (
    Config,
    ConfigError,
    DiagnoseTurnServer,
    load,
    loads,
    to_dict,
)

DATA = Path(__file__).parent.parent / "data" / "config"

EXPECTED_DEFAULTS: dict[str, Any] = {
    "version": 1,
    "stun": {
        "enabled": True,
        "listen": ["udp://0.0.0.0:3478", "tcp://0.0.0.0:3478"],
        "alternate": None,
        "workers": "auto",
        "software": "natkit",
        "rate_limit": {"enabled": True, "per_source": 100, "burst": 200, "max_sources": 100_000},
        "tls": {"cert": None, "key": None},
        "stream": {
            "max_connections": 1024,
            "idle_timeout": 30.0,
            "max_message_size": 4096,
            "max_connections_per_source": 64,
            "frame_timeout": 10.0,
        },
        "proxy_protocol": False,
        "proxy_trusted": [],
        "fast_path": "off",
    },
    "turn": {
        "enabled": False,
        "engine": "builtin",
        "realm": "natkit.local",
        "auth": {"secret": None, "users": {}, "nonce_lifetime": 600.0},
        "relay": {"address": None, "external_address": None, "ports": "49152-65535"},
        "lifetime": {"default": 600, "max": 3600},
        "quota": {"per_user": 10, "total": 1000},
        "limits": {
            "peers_per_request": 10,
            "permissions_per_allocation": 64,
            "channels_per_allocation": 64,
            "tcp_connections_per_allocation": 32,
        },
        "peers": {"deny": list(natkit.config.DEFAULT_DENIED_PEERS), "allow": []},
        "pump": "auto",
        "coturn": {"binary": "turnserver", "extra": [], "allow_vulnerable": False},
        "alternate_server": None,
        "drain_timeout": 30.0,
    },
    "diagnose": {"stun": ["stun:127.0.0.1:3478"], "turn": [], "timeout": 3.0},
    "signal": {
        "enabled": False,
        "listen": "127.0.0.1:8765",
        "ttl": 300.0,
        "max_sdp_size": 16384,
        "max_connections": 256,
        "max_connections_per_source": 32,
        "max_pairings_per_source": 20,
        "request_timeout": 5.0,
    },
    "check": {
        "enabled": False,
        "listen": "http://127.0.0.1:8080",
        "report_ttl": 300.0,
        "max_tests": 256,
        "tests_per_minute": 10,
    },
    "metrics": {"listen": "127.0.0.1:9641"},
    "logging": {"level": "info", "format": "text"},
    "cluster": {
        "redis": None,
        "node_id": None,
        "fail_open": True,
        "timeout": 0.1,
        "lease": 10.0,
        "capacity": 0,
        "advertise": None,
        "domain": None,
        "prefix": "natkit",
    },
}


def load_text(text: str, **env: str) -> Config:
    return loads(text, "natkit.yaml", env=env)


# --- defaults ------------------------------------------------------------------------------------


def test_every_key_has_its_documented_default() -> None:
    assert to_dict(Config(), redact=False) == EXPECTED_DEFAULTS


def test_none_path_and_minimal_file_give_the_defaults() -> None:
    assert load(None) == Config()
    assert load_text("version: 1\n") == Config()
    assert load_text("stun:\nturn:\n") == Config()  # an empty section means "all defaults"


def test_default_peer_denylist_covers_the_dangerous_ranges() -> None:
    deny = Config().turn.peers.deny
    for cidr in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "169.254.0.0/16",
        "::1/128",
        "fe80::/10",
        "0.0.0.0/8",
    ):
        assert cidr in deny


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().stun.workers = 2  # type: ignore[misc]


def test_public_api_is_explicit() -> None:
    for name in natkit.config.__all__:
        assert hasattr(natkit.config, name), name
    public = {
        name
        for name, value in vars(natkit.config).items()
        if not name.startswith("_")
        and name.isidentifier()  # not pytest's "@py_builtins" (assertion rewriting)
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from __future__
    }
    assert public == set(natkit.config.__all__)


# --- types ---------------------------------------------------------------------------------------


def test_listen_uris_parse_including_ipv6() -> None:
    config = load_text(
        'stun:\n  listen: ["udp://[::]:3478", "TCP://127.0.0.1:80", "udp://[::1]"]\n'
    )
    assert config.stun.listen == (
        ListenURI(Transport.UDP, "::", 3478),
        ListenURI(Transport.TCP, "127.0.0.1", 80),
        ListenURI(Transport.UDP, "::1", 3478),
    )
    assert isinstance(config.stun.listen, tuple)


def test_scalar_types() -> None:
    config = load_text(
        "stun:\n  workers: 4\n  stream:\n    idle_timeout: 10\n"
        "turn:\n  engine: coturn\n  peers:\n    allow: [10.0.0.0/24]\n"
        "metrics:\n  listen: null\n"
    )
    assert config.stun.workers == 4
    assert config.stun.stream.idle_timeout == 10.0
    assert type(config.stun.stream.idle_timeout) is float  # an int is a fine float
    assert config.turn.engine == "coturn"
    assert config.turn.peers.allow == ("10.0.0.0/24",)
    assert config.metrics.listen is None


def test_addresses_are_canonicalised() -> None:
    config = load_text('stun:\n  alternate: "[2001:db8::11]:3479"\nsignal:\n  listen: "[::1]:80"\n')
    assert config.stun.alternate == "[2001:db8::11]:3479"
    assert config.signal.listen == "[::1]:80"


def test_diagnose_servers() -> None:
    config = load_text(
        "diagnose:\n"
        "  stun: [stun.example.org, 'stun:[2001:db8::1]', 'x.org:443', 'STUN:y.org']\n"
        "  turn:\n"
        "    - url: turn:t.example.org?transport=tcp\n"
        "      username: alice\n"
        "      credential: pw\n"
        "    - {url: 'turns:t.example.org:5349', secret: s}\n"
    )
    assert config.diagnose.stun == (
        "stun:stun.example.org:3478",
        "stun:[2001:db8::1]:3478",
        "stun:x.org:443",
        "stun:y.org:3478",
    )
    assert config.diagnose.turn == (
        DiagnoseTurnServer("turn:t.example.org?transport=tcp", "alice", "pw"),
        DiagnoseTurnServer("turns:t.example.org:5349", secret="s"),
    )


def test_users_table() -> None:
    config = load_text("turn:\n  auth:\n    users:\n      alice: a1\n      bob: 'b2'\n")
    assert config.turn.auth.users == {"alice": "a1", "bob": "b2"}


def test_yaml_merge_keys_and_anchors() -> None:
    config = load_text("turn:\n  peers:\n    deny: &lab [10.0.0.0/8]\n    allow: *lab\n")
    assert config.turn.peers.allow == config.turn.peers.deny == ("10.0.0.0/8",)
    merged = load_text("stun:\n  rate_limit:\n    <<: {per_source: 5, burst: 9}\n    burst: 10\n")
    assert (merged.stun.rate_limit.per_source, merged.stun.rate_limit.burst) == (5, 10)


# --- ${VAR} substitution -------------------------------------------------------------------------


def test_env_whole_value_and_embedded() -> None:
    config = load_text(
        'turn:\n  realm: "${DOMAIN}"\n  auth:\n    secret: "${SECRET}"\n'
        '  relay:\n    ports: "${LOW}-65535"\n',
        DOMAIN="turn.example.org",
        SECRET="s3cr3t",
        LOW="50000",
    )
    assert config.turn.realm == "turn.example.org"
    assert config.turn.auth.secret == "s3cr3t"
    assert config.turn.relay.ports == "50000-65535"


def test_env_default_when_unset_or_empty() -> None:
    text = 'turn:\n  realm: "${REALM:-natkit.example}"\n'
    assert load_text(text).turn.realm == "natkit.example"
    assert load_text(text, REALM="").turn.realm == "natkit.example"
    assert load_text(text, REALM="set.example").turn.realm == "set.example"


def test_env_escape_and_lone_dollar() -> None:
    config = load_text("turn:\n  auth:\n    users:\n      a: 'pa$$${X}'\n      b: pa$word\n", X="x")
    assert config.turn.auth.users == {"a": "pa$x", "b": "pa$word"}


def test_unquoted_env_reference_takes_the_type_of_its_value() -> None:
    config = load_text("stun:\n  workers: ${W}\n  enabled: ${ON}\n", W="3", ON="false")
    assert (config.stun.workers, config.stun.enabled) == (3, False)
    with pytest.raises(ConfigError, match='expected an integer or "auto", got "3"'):
        load_text('stun:\n  workers: "${W}"\n', W="3")  # quoted: a string, as YAML says


def test_missing_env_var_names_the_variable_and_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("turn:\n  auth:\n    secret: ${NATKIT_TURN_SECRET}\n")
    assert str(info.value) == (
        "natkit.yaml:3: turn.auth.secret: environment variable NATKIT_TURN_SECRET is not set"
    )


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATKIT_TEST_REALM", "from.environ")
    assert loads("turn:\n  realm: ${NATKIT_TEST_REALM}\n").turn.realm == "from.environ"


def test_env_is_not_expanded_in_keys_or_comments() -> None:
    assert load_text("# ${UNSET} in a comment\nversion: 1\n") == Config()


# --- files and paths -----------------------------------------------------------------------------


def test_load_file_records_its_source(tmp_path: Path) -> None:
    path = tmp_path / "natkit.yaml"
    path.write_text("version: 1\n")
    assert load(path).source == str(path)
    assert load(str(path)) == Config()
    assert loads("version: 1\n").source is None


def test_tls_paths_are_relative_to_the_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    config = load(os.path.relpath(DATA / "tls" / "natkit.yaml", "/"))
    assert config.stun.tls.cert == str(DATA / "tls" / "cert.pem")
    assert config.stun.tls.key == str(DATA / "tls" / "key.pem")
    assert [uri.transport for uri in config.stun.listen] == [Transport.UDP, Transport.TLS]


def test_absolute_tls_paths_and_base_dir(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    config = loads(f"stun:\n  tls:\n    cert: {tmp_path / 'c.pem'}\n")
    assert config.stun.tls.cert == str(tmp_path / "c.pem")
    config = loads("stun:\n  tls:\n    cert: c.pem\n", base_dir=tmp_path)
    assert config.stun.tls.cert == str(tmp_path / "c.pem")


def test_missing_tls_file_names_the_resolved_path(tmp_path: Path) -> None:
    path = tmp_path / "natkit.yaml"
    path.write_text("stun:\n  tls:\n    key: secret/key.pem\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}:3: stun.tls.key: file not found: {tmp_path}/secret/key.pem"


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found$"):
        load(tmp_path / "nope.yaml")


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load(tmp_path)


def test_unreadable_file(unprivileged: tuple[list[str], Path]) -> None:
    prefix, workdir = unprivileged  # as root: checked by a process that really cannot read it
    path = workdir / "natkit.yaml"
    path.write_text("version: 1\n")
    path.chmod(0)
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "natkit", "config", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"natkit: error: {path}: file not readable (permission denied)"
    ]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "natkit.yaml"
    path.write_text("# nothing but a comment\n")
    with pytest.raises(ConfigError, match=r"natkit\.yaml: file is empty"):
        load(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "natkit.yaml"
    path.write_bytes(b"version: 1\nturn:\n  realm: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}:3: not UTF-8 text"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "natkit.yaml"
    path.write_bytes(b"\xef\xbb\xbfversion: 1\n")
    assert load(path) == Config()


def test_pump_off_is_off_although_yaml_reads_false() -> None:
    assert load_text("turn:\n  pump: off\n").turn.pump == "off"
    assert load_text("turn: {}\n").turn.pump == "auto"
    with pytest.raises(ConfigError, match=r"turn\.pump"):
        load_text("turn:\n  pump: kernel\n")


def test_fast_path_off_is_off_although_yaml_reads_false() -> None:
    assert load_text("stun:\n  fast_path: off\n").stun.fast_path == "off"
    assert load_text("stun:\n  fast_path: auto\n").stun.fast_path == "auto"
    with pytest.raises(ConfigError, match=r"stun\.fast_path"):
        load_text("stun:\n  fast_path: no\n")  # false, but not spelled off
