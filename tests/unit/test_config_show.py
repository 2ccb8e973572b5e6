"""to_dict / to_yaml and `natkit config check|show`: effective config, redaction, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from natkit.cli import cli
from natkit.config import REDACTED, Config, load, loads, to_dict, to_yaml

DATA = Path(__file__).parent.parent / "data" / "config"
SECRETS_FILE = DATA / "secrets.yaml"
SECRET_VALUES = ("s3cret-rest-api", "alice-pa$word", "bob-password", "env-secret-value")
ENV = {"NATKIT_TEST_SECRET": "env-secret-value"}


def run(*argv: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli, list(argv), env={"NATKIT_CONFIG": None, **(env or {})})
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture
def secrets_config(monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("NATKIT_TEST_SECRET", ENV["NATKIT_TEST_SECRET"])
    return load(SECRETS_FILE)


# --- to_dict / to_yaml ---------------------------------------------------------------------------


def test_to_dict_redacts_secrets(secrets_config: Config) -> None:
    data = to_dict(secrets_config)
    assert data["turn"]["auth"]["secret"] == REDACTED
    assert data["turn"]["auth"]["users"] == {"alice": REDACTED}  # the user name is not secret
    assert data["diagnose"]["turn"][0] == {
        "url": "turn:turn.example.org:3478?transport=udp",
        "username": "bob",
        "credential": REDACTED,
        "secret": None,  # unset stays visible as unset
    }
    assert data["diagnose"]["turn"][1]["secret"] == REDACTED
    text = json.dumps(data)
    for value in SECRET_VALUES:
        assert value not in text


def test_to_dict_unredacted_and_json_able(secrets_config: Config) -> None:
    data = to_dict(secrets_config, redact=False)
    assert data["turn"]["auth"]["users"] == {"alice": "alice-pa$word"}
    assert json.loads(json.dumps(data)) == data
    assert "source" not in data  # not a key


def test_to_yaml_has_a_help_comment_on_every_line() -> None:
    text = to_yaml(Config())
    for line in text.splitlines():
        if not line.lstrip().startswith("- "):
            assert "  # " in line, line


@pytest.mark.parametrize("path", [None, DATA / "tls" / "natkit.yaml", SECRETS_FILE])
def test_to_yaml_loads_back_as_the_same_config(path: Path | None, secrets_config: Config) -> None:
    config = load(path)
    assert loads(to_yaml(config, redact=False), env={}) == config
    assert yaml.safe_load(to_yaml(config)) == to_dict(config)


def test_to_yaml_redacts(secrets_config: Config) -> None:
    text = to_yaml(secrets_config)
    for value in SECRET_VALUES:
        assert value not in text


# --- natkit config check -------------------------------------------------------------------------


def test_check_ok() -> None:
    result = run("config", "check", "-c", str(DATA / "tls" / "natkit.yaml"))
    assert result.exit_code == 0
    assert result.output == (
        f"{DATA / 'tls' / 'natkit.yaml'}: ok "
        "(stun: udp://[::]:3478 tls://0.0.0.0:5349; turn: off; metrics: 127.0.0.1:9641)\n"
    )


def test_check_defaults_and_natkit_config_env(tmp_path: Path) -> None:
    assert run("config", "check").output.startswith("built-in defaults: ok")
    path = tmp_path / "x.yaml"
    path.write_text(
        "turn: {enabled: true, engine: coturn, auth: {secret: s}}\nmetrics: {listen: null}\n"
    )
    result = run("config", "check", env={"NATKIT_CONFIG": str(path)})
    assert (
        result.stdout
        == f"{path}: ok (stun: udp://0.0.0.0:3478 tcp://0.0.0.0:3478; turn: coturn; metrics: off)\n"
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("syntax-error.yaml", "4: YAML syntax error: expected ',' or ']', but got '<scalar>'"),
        ("bad-type.yaml", '5: stun.rate_limit.burst: expected an integer, got "lots"'),
        ("unknown-key.yaml", '4: stun.wrokers: unknown key; did you mean "workers"?'),
        (
            "missing-env.yaml",
            "5: turn.auth.secret: environment variable NATKIT_TEST_UNSET_SECRET is not set",
        ),
        ("does-not-exist.yaml", " file not found"),
    ],
)
def test_check_invalid_is_one_line_exit_2(name: str, message: str) -> None:
    path = DATA / name
    result = run("config", "check", "-c", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"natkit: error: {path}:{message}\n"


def test_check_show_help_have_examples() -> None:
    for argv in (["config"], ["config", "check"], ["config", "show"]):
        result = run(*argv, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output
        assert "natkit config" in result.output


# --- natkit config show --------------------------------------------------------------------------


def test_show_yaml_is_the_effective_config() -> None:
    result = run("config", "show")
    assert result.exit_code == 0
    assert result.output.startswith("# natkit config from built-in defaults")
    assert yaml.safe_load(result.output) == to_dict(Config())
    assert "max_sources: 100000  # " in result.output


def test_show_json() -> None:
    result = run("config", "show", "--json", "-c", str(DATA / "tls" / "natkit.yaml"))
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["stun"]["listen"] == ["udp://[::]:3478", "tls://0.0.0.0:5349"]
    assert data["stun"]["tls"]["cert"] == str(DATA / "tls" / "cert.pem")
    assert data["version"] == 1


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_show_never_prints_secrets(json_flag: list[str]) -> None:
    result = run("config", "show", "-c", str(SECRETS_FILE), *json_flag, env=ENV)
    assert result.exit_code == 0
    assert REDACTED in result.output
    for value in SECRET_VALUES:
        assert value not in result.output


def test_show_invalid_exit_2() -> None:
    result = run("config", "show", "--json", "-c", str(DATA / "bad-type.yaml"))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "stun.rate_limit.burst" in result.output
