from click.testing import CliRunner

from natkit import __version__
from natkit.cli import cli


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    for argv in (["serve"], ["config"], ["lab"], ["turn"], ["diagnose"], ["p2p"]):
        result = runner.invoke(cli, [*argv, "--help"])
        assert result.exit_code == 0, (argv, result.output)
        assert "Usage:" in result.output
