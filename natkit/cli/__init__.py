"""natkit's command line: a thin shell; each command parses, loads config, makes one call, renders.

Each command group lives in its own module, imported only when that command runs (or when
`--help` lists them): `natkit --version` and `natkit lab up` must not pay for aiortc, aioice or
dnspython, which only diagnose, p2p and turn check use. `python -m bench cli` measures it.
"""

from __future__ import annotations

import importlib

import click

from natkit import __version__
from natkit.cli.common import NatkitGroup

__all__ = ["cli", "main"]

# Command name -> module of natkit.cli defining `command`, in the order --help lists them.
COMMANDS = {
    "config": "config_cmd",
    "serve": "serve_cmd",
    "turn": "turn_cmd",
    "diagnose": "diagnose_cmd",
    "check": "check_cmd",
    "p2p": "p2p_cmd",
    "lab": "lab_cmd",
    "fastpath": "fastpath_cmd",
    "cluster": "cluster_cmd",
}


class LazyGroup(NatkitGroup):
    """The top-level group: a command's module is imported when the command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *sorted(set(self.commands) - set(COMMANDS))]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module = importlib.import_module(f"natkit.cli.{COMMANDS[cmd_name]}")
        command: click.Command = module.command
        self.commands[cmd_name] = command
        return command


@click.group("natkit", cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="natkit")
def cli() -> None:
    """NAT traversal toolkit: serve STUN/TURN, diagnose why P2P fails, build NAT labs for CI.

    \b
    Examples:
      natkit serve -c configs/natkit.yaml      run STUN (+ TURN) per config
      natkit diagnose --stun 127.0.0.1:3478    what does my NAT do?
      natkit lab up symmetric                  a symmetric NAT in network namespaces
      natkit config check -c natkit.yaml       validate a config file
    """


def main() -> None:
    cli.main(prog_name="natkit")
