"""natkit config."""

from __future__ import annotations

import click

from natkit.cli.common import NatkitGroup


@click.group("config", cls=NatkitGroup)
def command() -> None:
    """Check and show the natkit config."""
