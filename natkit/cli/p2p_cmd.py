"""natkit p2p."""

from __future__ import annotations

import click

from natkit.cli.common import fail


@click.command("p2p")
def command() -> None:
    """Live two-machine WebRTC data-channel test (not built yet)."""
    fail("natkit p2p: not built yet (p2p issue)")
