"""The shipped config files: they load, and configs/natkit.yaml documents every key."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest
import yaml

from natkit.config import Config, ConfigError, load, loads, to_dict
from natkit.config.ignored import ignored_keys
from natkit.config.model import config_fields, is_section

ROOT = Path(__file__).parent.parent.parent
DEFAULT_FILE = ROOT / "configs" / "natkit.yaml"
EXAMPLES = sorted((ROOT / "configs" / "examples").glob("*.yaml"))
# What the shipped files may reference; a test fails if a file needs anything else.
EXAMPLE_ENV = {"NATKIT_TURN_SECRET": "test-rest-secret", "TURN_PASSWORD": "test-password"}


def key_paths(cls: type, prefix: str = "") -> Iterator[tuple[str, type]]:
    """Every key of the model as a dotted path, with the section class that owns it."""
    for f in config_fields(cls):
        path = f"{prefix}{f.name}"
        yield path, cls
        tp = get_type_hints(cls)[f.name]
        if is_section(tp):
            yield from key_paths(tp, path + ".")
        elif get_origin(tp) is tuple and is_section(get_args(tp)[0]):
            yield from key_paths(get_args(tp)[0], path + "[].")


def lookup(data: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


SECRET_ENV = {"NATKIT_TURN_SECRET": "s3cret"}


def test_default_file_equals_the_defaults_but_turns_on_turn() -> None:
    config = loads(DEFAULT_FILE.read_text(), str(DEFAULT_FILE), env=SECRET_ENV)
    # The file documents the defaults; it only switches the builtin TURN relay on, with the
    # REST secret from the environment (`make run` provides one).
    turn = dataclasses.replace(
        Config().turn,
        enabled=True,
        auth=dataclasses.replace(Config().turn.auth, secret="s3cret"),
    )
    assert config == dataclasses.replace(Config(), turn=turn)


def test_default_file_without_the_secret_is_one_clear_error() -> None:
    with pytest.raises(ConfigError) as err:
        loads(DEFAULT_FILE.read_text(), str(DEFAULT_FILE), env={})
    assert str(err.value).endswith(
        "turn.auth.secret: environment variable NATKIT_TURN_SECRET is not set"
    )


def test_default_file_has_every_key_with_a_comment() -> None:
    text = DEFAULT_FILE.read_text()
    data = yaml.safe_load(text)
    for path, _ in key_paths(Config):
        if "[]." in path:
            # Keys of list items (diagnose.turn[].url …) are shown in a commented example.
            name = path.rsplit(".", 1)[1]
            assert re.search(rf"^\s*#\s*(- )?{name}:", text, re.M), f"{path} not in {DEFAULT_FILE}"
        else:
            assert lookup(data, path), f"{path} missing from {DEFAULT_FILE}"
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*[a-z_]+:", line) and not line.rstrip().endswith(":"):
            assert " # " in line, f"{DEFAULT_FILE}:{number}: a key without a comment"


def test_default_file_is_safe() -> None:
    config = loads(DEFAULT_FILE.read_text(), env=SECRET_ENV)
    assert [str(uri) for uri in config.stun.listen] == ["udp://0.0.0.0:3478", "tcp://0.0.0.0:3478"]
    # TURN on, but authenticated and never relaying into private, loopback or lab ranges.
    assert config.turn.enabled is True and config.turn.auth.secret == "s3cret"
    assert config.turn.peers.allow == () and "10.0.0.0/8" in config.turn.peers.deny
    assert config.stun.rate_limit.enabled is True
    assert config.metrics.listen == "127.0.0.1:9641"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    config = load(path)
    assert config.source == str(path)
    text = yaml.safe_dump(to_dict(config))
    for value in EXAMPLE_ENV.values():
        assert value not in text


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"public-operator.yaml", "diagnose-only.yaml"}


def test_public_operator_example() -> None:
    path = ROOT / "configs" / "examples" / "public-operator.yaml"
    config = loads(path.read_text(), str(path), env=EXAMPLE_ENV)
    assert config.turn.enabled and config.turn.engine == "coturn"
    assert config.turn.auth.secret == EXAMPLE_ENV["NATKIT_TURN_SECRET"]
    assert config.stun.alternate == "203.0.113.11:3479"
    assert ignored_keys(config) == []  # `config check` has nothing to warn about
    text = path.read_text()
    assert "tls://203.0.113.10:5349" in text and "tls://203.0.113.10:443" in text


def test_diagnose_only_example() -> None:
    path = ROOT / "configs" / "examples" / "diagnose-only.yaml"
    config = loads(path.read_text(), str(path), env=EXAMPLE_ENV)
    assert not config.stun.enabled and not config.turn.enabled
    assert config.diagnose.stun and config.diagnose.turn
