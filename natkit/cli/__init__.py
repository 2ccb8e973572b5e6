"""natkit's command line: a thin shell; each command parses, loads config, makes one call, renders.

Each command group lives in its own module and is registered here.
"""

from __future__ import annotations

import click

from natkit import __version__
from natkit.cli.common import NatkitGroup

__all__ = ["cli", "main"]


@click.group(cls=NatkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def _register() -> None:
    from natkit.cli import config_cmd, diagnose_cmd, lab_cmd, p2p_cmd, serve_cmd, turn_cmd

    for module in (config_cmd, serve_cmd, turn_cmd, diagnose_cmd, p2p_cmd, lab_cmd):
        cli.add_command(module.command)


_register()


def main() -> None:
    cli.main(prog_name="natkit")
