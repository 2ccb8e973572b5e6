"""What every CLI command shares: the error translation, the -c option, JSON output."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click

from natkit.errors import NatkitError

__all__ = ["NatkitGroup", "config_option", "echo_json", "fail"]

F = TypeVar("F", bound=Callable[..., Any])


class _NatkitClickError(click.ClickException):
    """Carries a NatkitError through click so it prints as one line with its exit status."""

    def __init__(self, err: NatkitError) -> None:
        super().__init__(str(err))
        self.exit_code: int = err.exit_status  # type: ignore[misc]

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"natkit: error: {self.format_message()}", file=file or sys.stderr)


class NatkitGroup(click.Group):
    """A click group that turns any NatkitError raised below it into a one-line error, and an
    interruption into one line and exit status 128 + signal (130 for Ctrl-C, 143 for SIGTERM)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NatkitError as err:
            raise _NatkitClickError(err) from err
        except KeyboardInterrupt as err:
            # By now every `finally` below has run (labs removed, children stopped). Interrupted
            # (natkit.lab.signals) carries SIGTERM / SIGHUP; a plain KeyboardInterrupt is SIGINT.
            signum = int(getattr(err, "signum", signal.SIGINT))
            name = signal.Signals(signum).name
            click.echo(f"natkit: interrupted ({name})", err=True)
            sys.exit(128 + signum)


def fail(message: str, status: int = 2) -> None:
    """Stop the command with a one-line error (for problems found by the CLI itself)."""
    err = NatkitError(message)
    err.exit_status = status
    raise _NatkitClickError(err)


def config_option(func: F) -> F:
    """``-c/--config FILE``, defaulting to $NATKIT_CONFIG, else the built-in defaults."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        envvar="NATKIT_CONFIG",
        type=click.Path(readable=False),  # the loader reports every file problem itself
        default=None,
        help="Config file (YAML). Default: $NATKIT_CONFIG, else the built-in defaults.",
    )(func)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
