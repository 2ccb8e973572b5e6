"""natkit serve."""

from __future__ import annotations

import click

from natkit.cli.common import config_option, fail


@click.command("serve")
@config_option
def command(config_path: str | None) -> None:
    """Run the STUN server (and TURN relay, metrics) per config, in the foreground.

    \b
    Example:
      natkit serve -c configs/natkit.yaml
    """
    fail("natkit serve: the STUN server is not built yet (issue 3)")
