"""natkit lab."""

from __future__ import annotations

import click

from natkit.cli.common import NatkitGroup


@click.group("lab", cls=NatkitGroup)
def command() -> None:
    """NAT topologies in Linux network namespaces, for CI (not built yet)."""
