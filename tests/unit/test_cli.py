"""The CLI shell: version, help, one-line usage errors, and what a command start imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from natkit import __version__
from natkit.cli import COMMANDS, cli

NATKIT = Path(sys.executable).with_name("natkit")


def test_version_is_the_installed_distribution_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"natkit, version {__version__}\n"
    assert __version__ == version("natkit")  # pyproject reads natkit.__version__: one source


def test_top_level_help_lists_every_command_with_its_summary() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in listed if line.strip()]
    assert names == list(COMMANDS)
    assert all(len(line.split()) > 1 for line in listed if line.strip()), listed


def _walk(group: click.Group, path: list[str]) -> list[list[str]]:
    found = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        assert sub is not None, name
        found.append([*path, name])
        if isinstance(sub, click.Group):
            found += _walk(sub, [*path, name])
    return found


@pytest.mark.parametrize("argv", _walk(cli, []), ids=" ".join)
def test_every_command_has_help_with_an_example(argv: list[str]) -> None:
    result = CliRunner().invoke(cli, [*argv, "--help"])
    assert result.exit_code == 0, (argv, result.output)
    assert result.output.startswith(f"Usage: natkit {' '.join(argv)} ")
    assert "Example" in result.output, result.output
    # Every example line runs this very command (an example of another one would mislead).
    assert f"natkit {' '.join(argv)}" in result.output.split("Example", 1)[1]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["diagnose", "--bogus"],
            "natkit: error: no such option '--bogus' for 'natkit diagnose'",
        ),
        (["--bogus"], "natkit: error: no such option '--bogus' for 'natkit' (see natkit --help)"),
        (["nosuch"], "natkit: error: natkit: no such command 'nosuch' (see natkit --help)"),
        (
            ["turn", "credentials"],
            "natkit: error: natkit turn credentials: missing option '--user' "
            "(see natkit turn credentials --help)",
        ),
        (
            ["lab", "up"],
            "natkit: error: natkit lab up: missing argument 'TOPOLOGY' (see natkit lab up --help)",
        ),
        (
            ["diagnose", "--timeout", "soon"],
            "natkit: error: natkit diagnose: invalid value for '--timeout': 'soon' is not a valid "
            "float range (see natkit diagnose --help)",
        ),
        (
            ["config", "check", "extra"],
            "natkit: error: natkit config check: got unexpected extra argument (extra) "
            "(see natkit config check --help)",
        ),
    ],
)
def test_usage_errors_are_one_line_with_a_hint_and_exit_2(argv: list[str], expected: str) -> None:
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(expected), result.stderr
    assert "Usage:" not in result.stderr and "Try '" not in result.stderr


def test_unknown_option_suggests_the_close_one() -> None:
    result = CliRunner().invoke(cli, ["diagnose", "--jsn"])
    assert result.exit_code == 2
    assert result.stderr == (
        "natkit: error: no such option '--jsn' for 'natkit diagnose' "
        "(did you mean --json or --stun? see natkit diagnose --help)\n"
    )


def test_a_group_without_its_subcommand_shows_its_help() -> None:
    result = CliRunner().invoke(cli, ["turn"])
    assert result.exit_code == 2
    assert "Commands:" in result.output and "credentials" in result.output


def test_the_installed_entry_point_prints_one_line() -> None:
    done = subprocess.run(
        [str(NATKIT), "lab", "status", "--bogus"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "natkit: error: no such option '--bogus' for 'natkit lab status' "
        "(see natkit lab status --help)\n"
    )


HEAVY = ("aiortc", "aioice", "dns", "asyncio", "yaml", "natkit.diag", "natkit.turn")

PROBE = """
import json, sys
import natkit.cli
try:
    natkit.cli.cli.main(sys.argv[1:], prog_name="natkit")
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _imported(argv: list[str], **env: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
    )
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("argv", "unwanted"),
    [
        (["--version"], HEAVY),
        (["--help"], HEAVY),
        (["lab", "up", "--help"], HEAVY),
        (["turn", "credentials", "--user", "a", "--secret", "s", "--uri", "turn:h"], HEAVY[:4]),
        (["config", "check"], ("aiortc", "aioice", "dns", "asyncio")),
    ],
    ids=" ".join,
)
def test_a_command_imports_only_what_it_needs(argv: list[str], unwanted: tuple[str, ...]) -> None:
    modules = _imported(argv)
    loaded = {m for m in modules for u in unwanted if m == u or m.startswith(u + ".")}
    assert not loaded, f"natkit {' '.join(argv)} imported {sorted(loaded)}"


def test_lab_down_does_not_load_the_topology_model(tmp_path: Path) -> None:
    # `natkit lab down NAME` reads the lab's record; yaml and the plan are for `lab up` only.
    modules = _imported(["lab", "down", "no-such-lab"], NATKIT_LAB_STATE_DIR=str(tmp_path))
    assert "natkit.lab.lab" in modules
    assert not {"yaml", "natkit.lab.topology", "natkit.lab.plan"} & modules
