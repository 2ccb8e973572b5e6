"""natkit config check | show: validate a config file, print the effective config."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from natkit.cli.common import NatkitGroup, config_option, echo_json

if TYPE_CHECKING:
    from natkit.config import Config

DEFAULTS = "built-in defaults"


@click.group("config", cls=NatkitGroup)
def command() -> None:
    """Check and show the natkit config.

    \b
    Examples:
      natkit config check -c configs/natkit.yaml
      natkit config show -c configs/natkit.yaml --json
    """


@command.command("check")
@config_option
def check(config_path: str | None) -> None:
    """Validate a config file: exit 0 if valid, else print FILE:LINE: key.path: problem, exit 2.

    Checks YAML syntax, every key's name, type and range, ${VAR} references (the variables must be
    set), listen URIs and that TLS certificate files exist.

    \b
    Example:
      $ natkit config check -c configs/natkit.yaml
      configs/natkit.yaml: ok (stun: udp://0.0.0.0:3478 tcp://0.0.0.0:3478; turn: off; ...)
    """
    from natkit.config import load
    from natkit.config.ignored import ignored_keys, ignored_message

    config = load(config_path)
    ignored = ignored_keys(config)
    if ignored:  # valid, but say which keys have no effect (stderr: stdout stays one line)
        click.echo(f"natkit: warning: {ignored_message(ignored)}", err=True)
    click.echo(f"{config_path or DEFAULTS}: ok ({summary(config)})")


@command.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of commented YAML.")
def show(config_path: str | None, as_json: bool) -> None:
    """Print the effective config: every key, defaults filled in, secrets shown as ***.

    The YAML output carries each key's help as a comment.

    \b
    Examples:
      natkit config show                                  the built-in defaults
      natkit config show -c configs/natkit.yaml --json    as JSON, for scripts
    """
    from natkit.config import load, to_dict, to_yaml

    config = load(config_path)
    if as_json:
        echo_json(to_dict(config))
    else:
        click.echo(f"# natkit config from {config_path or DEFAULTS}; secrets shown as ***")
        click.echo(to_yaml(config), nl=False)


def summary(config: Config) -> str:
    """One line of what this config will run: listeners, TURN engine, metrics."""
    stun = " ".join(str(uri) for uri in config.stun.listen) if config.stun.enabled else "off"
    turn = config.turn.engine if config.turn.enabled else "off"
    metrics = config.metrics.listen or "off"
    return f"stun: {stun}; turn: {turn}; metrics: {metrics}"
