"""natkit lab: build, inspect and remove NAT labs (thin: each command is one natkit.lab call)."""

from __future__ import annotations

import click

from natkit.cli.common import NatkitGroup, echo_json, fail
from natkit.cli.p2p_cmd import matrix_cmd as _p2p_matrix


@click.group("lab", cls=NatkitGroup)
def command() -> None:
    """NAT topologies in Linux network namespaces, for CI (needs root).

    \b
    Example:
      natkit lab up symmetric --name ci1     build a lab; prints its name
      natkit lab exec ci1 peer -- ip addr    run a command in node "peer"
      natkit lab down ci1
    """


@command.command("presets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def presets_cmd(as_json: bool) -> None:
    """List the topology presets shipped with natkit.

    \b
    Example:
      natkit lab presets
    """
    from natkit.lab.presets import presets

    found = presets()
    if as_json:
        echo_json(
            {
                name: {"description": t.description, "nodes": t.node_names()}
                for name, t in found.items()
            }
        )
        return
    width = max(len(n) for n in found)
    for name, topo in found.items():
        click.echo(f"{name:<{width}}  {topo.description}")


@command.command("up")
@click.argument("topology", required=False)
@click.option("--name", default=None, help="Lab name (default: <topology>-<4 hex digits>).")
@click.option(
    "--from-report",
    "report",
    type=click.Path(dir_okay=False),
    default=None,
    help="Build the NAT a diagnose/check JSON report describes (instead of TOPOLOGY).",
)
def up_cmd(topology: str | None, name: str | None, report: str | None) -> None:
    """Build TOPOLOGY (a preset name or a YAML file) and print the lab's name.

    The lab stays up until `natkit lab down NAME`. With --from-report FILE the topology is the
    NAT that a `natkit diagnose --json` or natkit check report measured (node `peer` behind it).

    \b
    Example:
      natkit lab up pair-symmetric --name p2p
      natkit lab up ./my-topology.yaml
      natkit lab up --from-report report.json
    """
    from natkit.lab import Lab

    if topology is None and report is None:
        fail("natkit lab up: missing argument 'TOPOLOGY' (see natkit lab up --help)")
    if topology is not None and report is not None:
        fail("natkit lab up: give TOPOLOGY or --from-report FILE, not both")
    if report is not None:
        from natkit.lab.from_report import load_report, topology_from_report

        lab = Lab.up(topology_from_report(load_report(report), source=report), name,
                     persistent=True)  # fmt: skip
    else:
        assert topology is not None
        lab = Lab.up(topology, name, persistent=True)
    click.echo(lab.name)


@command.command("status")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(name: str | None, as_json: bool) -> None:
    """Show the nodes, namespaces and addresses of lab NAME (default: every lab).

    \b
    Example:
      natkit lab status p2p --json
    """
    from natkit.lab import Lab
    from natkit.lab.registry import load_all

    labs = [Lab.attach(name)] if name else [Lab.attach(s.name) for s in load_all()]
    data = [lab.status() for lab in labs]
    if as_json:
        echo_json(data[0] if name else data)
        return
    if not data:
        click.echo("no labs")
    for lab in data:
        click.echo(
            f"{lab['name']}  topology={lab['topology']}  prefix={lab['prefix']}  "
            f"status={lab['status']}"
        )
        for node, info in lab["nodes"].items():
            addrs = " ".join(info["addresses"]) or "-"
            if "link_netns" in info:  # an impaired uplink: its forwarder's namespace
                addrs += f"  (uplink via {info['link_netns']})"
            click.echo(f"  {node:<24} {info['kind']:<8} {info['netns']:<30} {addrs}")


@command.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("node")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(name: str, node: str, argv: tuple[str, ...]) -> None:
    """Run a command inside NODE of lab NAME; its exit status is passed through.

    The command takes this process's place, so SIGTERM, SIGINT and SIGHUP reach it directly.

    \b
    Example:
      natkit lab exec p2p alice -- python3 -c 'print("hi")'
    """
    from natkit.lab import Lab
    from natkit.lab.netlink import check_privileges

    check_privileges()
    lab = Lab.attach(name)
    # The command replaces this process (no natkit parent stays behind): SIGTERM, SIGINT and
    # SIGHUP reach it directly and its exit status, or the signal that ended it, is ours.
    try:
        lab.execvp(node, list(argv))
    except FileNotFoundError:
        fail(f"{argv[0]}: command not found in node {node}", 127)
    except PermissionError:
        fail(f"{argv[0]}: permission denied (not executable?) in node {node}", 126)


@command.command("down")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Remove every lab.")
def down_cmd(name: str | None, all_: bool) -> None:
    """Remove lab NAME (or every lab with --all): processes, namespaces, interfaces, rules.

    Processes inside get SIGTERM and 2 s to exit, then SIGKILL.

    \b
    Example:
      natkit lab down p2p
      natkit lab down --all
    """
    from natkit.lab import Lab, down_all
    from natkit.lab.netlink import check_privileges

    if bool(name) == all_:
        fail("give a lab NAME or --all")
    check_privileges()
    if all_:
        for removed in down_all():
            click.echo(removed)
        return
    assert name is not None
    Lab.attach(name).down()


# `natkit lab matrix` is `natkit p2p matrix` under the lab group: same options, same callback.
command.add_command(
    click.Command(
        "matrix",
        params=list(_p2p_matrix.params),
        callback=_p2p_matrix.callback,
        short_help="Run the NAT matrix (alias of `natkit p2p matrix`; needs root).",
        help="""Build the matrix lab (one peer behind each NAT type), run natkit serve (STUN +
TURN + signal) in node `server`, and test every pair of peers with real WebRTC, direct and
through TURN; print the outcome table and whether diagnose's prediction held.

--topology NAME|FILE runs another matrix: a preset or your own YAML file; every host node is a
peer. Presets: matrix-extended (all of the below with the classic peers: 15 peers, 105 pairs,
some minutes), matrix-ipv6 (RFC 6092 firewall, NPTv6, IPv6-only with NAT64), matrix-ports (port
allocators and an exhausted CGNAT port block), matrix-portmap (a symmetric NAT with
UPnP/NAT-PMP/PCP), matrix-impaired (satellite and lossy mobile links), matrix-same-type (pairs of
peers behind two NATs of the same type).

Alias of `natkit p2p matrix` (same options). Needs root. Exit 0 when every pair connects
(directly or relayed) and every prediction held.

\b
Example:
  sudo natkit lab matrix
  sudo natkit lab matrix --topology matrix-same-type
  sudo natkit lab matrix --topology ./my-matrix.yaml --json --parallel 4 > matrix.json
""",
    )
)


@command.command("gc")
def gc_cmd() -> None:
    """Remove leftovers of crashed labs (killed during `up`, or whose owner died).

    \b
    Example:
      natkit lab gc
    """
    from natkit.lab import gc

    for removed in gc():
        click.echo(f"removed {removed}")
