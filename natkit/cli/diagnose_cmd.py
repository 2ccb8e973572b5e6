"""natkit diagnose: what does my NAT do, and can a direct P2P connection work?"""

from __future__ import annotations

import signal
import sys

import click

from natkit.cli.common import config_option, echo_json, fail

EXIT_HELP = """\b
Exit status (the verdict's outcome, docs/diagnose-json.md):
  0  most calls connect directly (every cone NAT type can reach this one)
  1  most calls need a relay, and a configured TURN server works
  3  most calls need a relay, and none works (or none is configured)
  2  bad input, or no STUN server runs at the address given: nothing measured"""


@click.command("diagnose", epilog=EXIT_HELP)
@config_option
@click.option(
    "--stun",
    "stun",
    multiple=True,
    metavar="HOST[:PORT]",
    help="STUN server to probe (repeatable; replaces diagnose.stun of the config).",
)
@click.option(
    "--turn",
    "turn",
    multiple=True,
    metavar="URL",
    help="TURN server to check, turn:HOST[:PORT][?transport=udp|tcp] or turns:… "
    "(repeatable; replaces diagnose.turn of the config).",
)
@click.option("--user", help="TURN user name for --turn.")
@click.option("--password", help="TURN password for --turn.")
@click.option("--secret", help="TURN REST API shared secret for --turn (instead of a password).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report (schema version 1).")
@click.option(
    "--timeout",
    type=click.FloatRange(0.2, 60),
    default=None,
    metavar="SECONDS",
    help="Overall time budget (default: diagnose.timeout of the config, 3 s); a slow path "
    "(e.g. satellite) stretches the UDP probes to fit its measured RTT.",
)
@click.option(
    "--lifetime",
    is_flag=True,
    help="Also measure how long the NAT keeps an idle mapping (takes up to 2 minutes).",
)
@click.option(
    "--lifetime-max",
    type=click.FloatRange(1, 600),
    default=120.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest idle time the --lifetime test waits.",
)
@click.option("--no-ice", is_flag=True, help="Skip ICE candidate gathering with aioice.")
@click.option(
    "--dns64",
    metavar="IP",
    help="DNS64 server to ask for the NAT64 prefix (RFC 7050; default: the system resolver, "
    "only on a host without IPv4).",
)
@click.option(
    "--port-mapping/--no-port-mapping",
    default=True,
    help="Ask the default gateway which of UPnP-IGD, NAT-PMP and PCP it offers (maps nothing; "
    "skipped when every STUN server is loopback).",
)
@click.option(
    "--map-port",
    is_flag=True,
    help="Map a UDP port (PCP, else NAT-PMP, else UPnP), test from the STUN server that it is "
    "reachable, then delete the mapping.",
)
def command(
    config_path: str | None,
    stun: tuple[str, ...],
    turn: tuple[str, ...],
    user: str | None,
    password: str | None,
    secret: str | None,
    as_json: bool,
    timeout: float | None,
    lifetime: bool,
    lifetime_max: float,
    no_ice: bool,
    dns64: str | None,
    port_mapping: bool,
    map_port: bool,
) -> None:
    """Find out what your NAT does and whether a direct P2P connection can work.

    Probes every STUN server over UDP (IPv4 and IPv6; RFC 5780 mapping and filtering,
    hairpinning, port preservation), TCP and TLS (e.g. 443), checks each TURN server with a real
    allocation, gathers ICE candidates, and ends with a verdict and what to do.

    \b
    Examples:
      natkit diagnose --stun 127.0.0.1:3478
      natkit diagnose --stun stun.example.org --turn turns:turn.example.org:443 \\
          --user alice --password secret --json
    """
    import asyncio

    from natkit.config import load
    from natkit.diag.report import ProgressPrinter, to_json, to_text
    from natkit.diag.runner import DiagnoseOptions, StunSpec, TurnSpec, diagnose
    from natkit.turn.uri import TurnURI

    if password is not None and secret is not None:
        fail("give either --password or --secret, not both")
    if (user or password or secret) and not turn:
        fail("--user/--password/--secret apply to --turn URLs; none given")
    config = load(config_path).diagnose
    try:
        stuns = tuple(StunSpec.parse(s) for s in (stun or config.stun))
        if turn:
            turns = tuple(TurnSpec(TurnURI.parse(u), user, password, secret) for u in turn)
        else:
            turns = tuple(
                TurnSpec(TurnURI.parse(t.url), t.username, t.credential, t.secret)
                for t in config.turn
            )
    except ValueError as err:
        fail(f"diagnose: {err}")
    options = DiagnoseOptions(
        stun=stuns,
        turn=turns,
        timeout=timeout if timeout is not None else config.timeout,
        lifetime=lifetime,
        lifetime_max=lifetime_max,
        gather=not no_ice,
        dns64=_ip_literal(dns64),
        port_mapping=port_mapping,
        map_port=map_port,
    )
    if map_port:  # SIGTERM unwinds like Ctrl-C, so the mapping is deleted (diag.portmap)
        signal.signal(signal.SIGTERM, _interrupt)
    progress = None
    if not as_json and sys.stderr.isatty():
        progress = ProgressPrinter(lambda line: click.echo(line, err=True), click.style)
    try:
        result = asyncio.run(diagnose(options, progress))
    except KeyboardInterrupt:
        fail("diagnose: interrupted", 130)
    except Exception as err:  # a bug must still end in one line, not a traceback
        fail(f"diagnose: internal error: {type(err).__name__}: {err}", 3)
    if as_json:
        echo_json(to_json(result))
    elif result.bad_input:  # nothing was probed: a verdict would only mislead
        fail(f"diagnose: {'; '.join(result.problems) or 'no STUN server could be resolved'}")
    else:
        click.echo(to_text(result, click.style))
    sys.exit(result.exit_status)


def _ip_literal(text: str | None) -> str | None:
    if text is None:
        return None
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        fail(f"diagnose: --dns64: expected an IP address, got {text!r}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
