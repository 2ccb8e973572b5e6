"""natkit diagnose."""

from __future__ import annotations

import click

from natkit.cli.common import fail


@click.command("diagnose")
def command() -> None:
    """Find out what your NAT does and whether a direct P2P connection can work (not built yet)."""
    fail("natkit diagnose: not built yet (diagnose issue)")
