"""natkit turn: credentials, render, check."""

from __future__ import annotations

import click

from natkit.cli.common import NatkitGroup, fail


@click.group("turn", cls=NatkitGroup)
def command() -> None:
    """TURN relay tools: REST API credentials, coturn config, live checks."""


@command.command("credentials")
@click.option("--user", required=True, help="User name to embed in the credential.")
def credentials(user: str) -> None:
    """Mint TURN REST API ephemeral credentials (not built yet)."""
    fail("natkit turn credentials: not built yet (TURN issue)")
