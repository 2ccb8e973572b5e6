"""natkit serve."""

from __future__ import annotations

import click

from natkit.cli.common import config_option


@click.command("serve")
@config_option
def command(config_path: str | None) -> None:
    """Run the STUN server (and TURN relay, metrics) per config, in the foreground.

    SIGINT/SIGTERM drain and exit 0; SIGHUP reloads rate limits and logging from the file.

    \b
    Example:
      natkit serve -c configs/natkit.yaml
    """
    from natkit.config import load
    from natkit.serve import serve

    status = serve(load(config_path))
    if status:
        raise SystemExit(status)
