"""What every CLI command shares: the error translation, the -c option, JSON output."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from typing import IO, Any, NoReturn, TypeVar

import click

from natkit.errors import NatkitError

__all__ = ["NatkitGroup", "config_option", "echo_json", "fail", "usage_line"]

F = TypeVar("F", bound=Callable[..., Any])


class _NatkitClickError(click.ClickException):
    """Carries a NatkitError through click so it prints as one line with its exit status."""

    def __init__(self, err: NatkitError) -> None:
        super().__init__(str(err))
        self.exit_code: int = err.exit_status  # type: ignore[misc]

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"natkit: error: {self.format_message()}", file=file or sys.stderr)


class _OneLineUsageError(click.ClickException):
    """A click usage error (bad option, missing argument, ...) as one line, exit status 2.

    click prints three lines (Usage, Try, Error); natkit promises `natkit: error: ...` and a hint.
    """

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"natkit: error: {self.format_message()}", file=file or sys.stderr)


def usage_line(err: click.UsageError) -> str:
    """What went wrong, for which command, and where to look: one line."""
    path = err.ctx.command_path if err.ctx is not None else "natkit"
    if isinstance(err, click.NoSuchOption):
        line = f"no such option {err.option_name!r} for {path!r}"
        if err.possibilities:
            close = " or ".join(sorted(err.possibilities))
            return f"{line} (did you mean {close}? see {path} --help)"
    else:
        message = err.format_message().strip().rstrip(".")
        line = f"{path}: {message[:1].lower()}{message[1:]}"
    return f"{line} (see {path} --help)"


def _one_line(err: click.UsageError) -> click.ClickException:
    if isinstance(err, click.exceptions.NoArgsIsHelpError):
        return err  # `natkit turn` alone: the help text is the right answer
    return _OneLineUsageError(usage_line(err))


class NatkitGroup(click.Group):
    """A click group whose errors below it print as one line (NatkitError and usage errors), and
    an interruption as one line and exit status 128 + signal (130 for Ctrl-C, 143 for SIGTERM)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:  # e.g. `natkit --bogus`
            raise _one_line(err) from err

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NatkitError as err:
            raise _NatkitClickError(err) from err
        except click.UsageError as err:  # raised while parsing a subcommand's arguments
            raise _one_line(err) from err
        except KeyboardInterrupt as err:
            # By now every `finally` below has run (labs removed, children stopped). Interrupted
            # (natkit.lab.signals) carries SIGTERM / SIGHUP; a plain KeyboardInterrupt is SIGINT.
            signum = int(getattr(err, "signum", signal.SIGINT))
            name = signal.Signals(signum).name
            click.echo(f"natkit: interrupted ({name})", err=True)
            sys.exit(128 + signum)


def fail(message: str, status: int = 2) -> NoReturn:
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
