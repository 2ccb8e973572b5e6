"""natkit fastpath: what the kernel fast path has loaded here, and its counters."""

from __future__ import annotations

import click

from natkit.cli.common import NatkitGroup, echo_json, fail


@click.group("fastpath", cls=NatkitGroup)
def command() -> None:
    """The kernel fast path (stun.fast_path): tc-BPF programs natkit serve attached.

    \b
    Example:
      natkit fastpath status          what is loaded in this network namespace
      natkit serve --cleanup          remove what a killed natkit serve left behind
    """


@command.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(as_json: bool) -> None:
    """List natkit's tc-BPF programs in this network namespace, their owner and counters.

    A running serve holds its program by a tcx link (it goes when serve goes, even on SIGKILL);
    a "tc" row is a filter an interrupted start left: natkit serve --cleanup removes it.

    \b
    Example:
      sudo natkit fastpath status --json
    """
    import os

    from natkit.fastpath import COUNTER_NAMES, status
    from natkit.fastpath.bpf import BpfError
    from natkit.fastpath.tc import TcError

    if os.geteuid() != 0:
        fail("natkit fastpath status: reading BPF programs needs root (try sudo)")
    try:
        rows = status()
    except (BpfError, TcError) as err:
        fail(f"natkit fastpath status: {err}")
    if as_json:
        echo_json({"filters": rows})
        return
    if not rows:
        click.echo("no kernel fast path loaded in this network namespace")
        return
    for row in rows:
        owner = row["owner_pid"]
        state = "running" if row["owner_alive"] else "LEFTOVER (run natkit serve --cleanup)"
        counts = "  ".join(f"{name} {row.get(name, 0)}" for name in COUNTER_NAMES)
        where = f"tcx link {row['link_id']}" if row["kind"] == "tcx" else f"tc pref {row['pref']}"
        click.echo(f"{row['device']} {where} program {row['program_id']} "
                   f"owner {owner} {state}: {counts}")  # fmt: skip
