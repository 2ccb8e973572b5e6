"""natkit serve."""

from __future__ import annotations

import click

from natkit.cli.common import config_option, fail


@click.command("serve")
@config_option
@click.option(
    "--cleanup",
    is_flag=True,
    help="Remove kernel fast path filters a killed natkit serve left behind, then exit.",
)
def command(config_path: str | None, cleanup: bool) -> None:
    """Run the STUN server (and TURN relay, metrics) per config, in the foreground.

    SIGINT/SIGTERM drain and exit 0; SIGHUP reloads rate limits and logging from the file.

    \b
    Example:
      natkit serve -c configs/natkit.yaml
      sudo natkit serve --cleanup          after a SIGKILL with stun.fast_path on
    """
    if cleanup:
        _cleanup()
        return
    from natkit.config import load
    from natkit.serve import serve

    status = serve(load(config_path))
    if status:
        raise SystemExit(status)


def _cleanup() -> None:
    import os

    from natkit.fastpath import remove_leftovers
    from natkit.fastpath.bpf import BpfError
    from natkit.fastpath.tc import TcError

    if os.geteuid() != 0:
        fail("natkit serve --cleanup: removing tc-BPF filters needs root (try sudo)")
    try:
        removed = remove_leftovers()
    except (BpfError, TcError) as err:
        fail(f"natkit serve --cleanup: {err}")
    for device, pref in removed:
        click.echo(f"removed a leftover kernel fast path filter on {device} (pref {pref})")
    if not removed:
        click.echo("nothing left behind")
