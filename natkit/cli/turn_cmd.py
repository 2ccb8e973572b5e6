"""natkit turn: credentials, render, check — each one call into natkit.turn / natkit.diag."""

from __future__ import annotations

import ipaddress
import sys
import time
from typing import TYPE_CHECKING

import click

from natkit.cli.common import NatkitGroup, config_option, echo_json, fail

# Imported inside the commands that need them: `turn check` pulls in asyncio and aioice, which
# `turn credentials` and every other natkit command must not pay for at start.
if TYPE_CHECKING:
    from natkit.config import Config
    from natkit.diag.turncheck import TurnCheckReport


@click.group("turn", cls=NatkitGroup)
def command() -> None:
    """TURN relay tools: REST API credentials, coturn config, live checks.

    \b
    Examples:
      natkit turn credentials --user alice --json      an iceServers entry for a web app
      natkit turn render -c natkit.yaml -o turnserver.conf
      natkit turn check turn:127.0.0.1:3478 --secret "$NATKIT_TURN_SECRET"
    """


def _urls_from_config(cfg: Config, host: str | None) -> list[str]:
    """iceServers URLs for this server's listeners, with an address a client can reach.

    The host is `host` (--host), else turn.relay.external_address (behind 1:1 NAT), else the
    listener's IP, else (a wildcard listener) this host's address on its default-route interface.
    """
    from natkit.addr import Transport, format_hostport

    urls: list[str] = []
    for uri in cfg.stun.listen:
        name = host or cfg.turn.relay.external_address or _reachable_ip(uri.host)
        scheme = "turns" if uri.transport is Transport.TLS else "turn"
        transport = "udp" if uri.transport is Transport.UDP else "tcp"
        url = f"{scheme}:{format_hostport(name, uri.port)}?transport={transport}"
        if url not in urls:
            urls.append(url)
    return urls


def _reachable_ip(listen_ip: str) -> str:
    """The listener's IP, or for a wildcard (0.0.0.0, [::]) the host's own address."""
    from natkit.turn.engine import host_relay_ips

    ip = ipaddress.ip_address(listen_ip)
    if not ip.is_unspecified:
        return listen_ip
    found = host_relay_ips().get(ip.version)
    if found is None:
        fail(
            f"turn credentials: the listener on {listen_ip} is a wildcard and this host has no "
            f"IPv{ip.version} address outside loopback: pass --host NAME or --uri URL"
        )
    return str(found)


@command.command("credentials")
@click.option("--user", required=True, help="User name to embed in the credential.")
@click.option("--ttl", default="1h", show_default=True, help="Validity: 30s, 10m, 1h, 1d.")
@click.option(
    "--secret", envvar="NATKIT_TURN_SECRET", help="Shared secret (else turn.auth.secret)."
)
@click.option("--uri", "uris", multiple=True, help="TURN URL to print (repeatable).")
@click.option(
    "--host",
    metavar="NAME|IP",
    help="Server name or address for the URLs made from the config's listeners.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a WebRTC iceServers entry.")
@config_option
def credentials(
    user: str,
    ttl: str,
    secret: str | None,
    uris: tuple[str, ...],
    host: str | None,
    as_json: bool,
    config_path: str | None,
) -> None:
    """Mint TURN REST API ephemeral credentials (username "expiry:user", HMAC-SHA1 password).

    The URLs printed are --uri if given, else one per listener of the config (stun.listen;
    the built-in default is UDP and TCP on port 3478), with the host taken from --host, else
    turn.relay.external_address, else the listener's IP, else (a wildcard listener such as
    0.0.0.0) this host's address on the interface of its default route.

    \b
    Examples:
      natkit turn credentials --user alice --ttl 10m -c natkit.yaml
      natkit turn credentials --user alice --json --host turn.example.org
      natkit turn credentials --user alice --json --uri turn:turn.example.org:3478
    """
    from natkit.config import load
    from natkit.turn.credentials import ice_server, mint, parse_ttl
    from natkit.turn.uri import TurnURI

    if host is not None and uris:
        fail("give either --host or --uri, not both")
    cfg = load(config_path)
    secret = secret or cfg.turn.auth.secret
    if not secret:
        fail("no TURN secret: pass --secret, set $NATKIT_TURN_SECRET or turn.auth.secret")
        return
    try:
        seconds = parse_ttl(ttl)
        urls = [TurnURI.parse(u).with_transport() for u in uris] or _urls_from_config(cfg, host)
        cred = mint(secret, user, seconds, time.time())
    except ValueError as err:
        fail(str(err))
        return
    if as_json:
        echo_json(ice_server(urls, cred))
        return
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cred.expires))
    click.echo(f"username: {cred.username}\npassword: {cred.password}\nexpires:  {expires}")
    for url in urls:
        click.echo(f"url:      {url}")


@command.command("render")
@config_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here (mode 0600).")
@click.option("--coturn-version", help="Render for this coturn X.Y.Z instead of the installed one.")
def render(config_path: str | None, output: str | None, coturn_version: str | None) -> None:
    """Write coturn's turnserver.conf for the natkit config (stdout without -o).

    \b
    Example:
      natkit turn render -c natkit.yaml -o /etc/turnserver.conf
    """
    from natkit.config import load
    from natkit.turn import coturn

    cfg = load(config_path)
    if coturn_version:
        version = coturn.parse_version(coturn_version)
        if version is None:
            fail(f"--coturn-version {coturn_version!r}: expected X.Y.Z, e.g. 4.6.1")
            return
    else:
        version = coturn.detect_version(cfg.turn.coturn.binary)
    text = coturn.render(cfg, version)
    if output:
        coturn.write_private(output, text)
    else:
        click.echo(text, nl=False)


_METHODS = {
    "two-allocations": "the peer is a second allocation on the same server",
    "peer-socket": "the peer is a UDP socket of this host",
    "explicit-peer": "the peer IP given with --peer",
}


def _render_report(report: TurnCheckReport) -> None:
    click.echo(f"TURN check {report.url} (server {report.server_address or '?'})")
    for step in report.steps:
        mark = "ok  " if step.ok else "FAIL"
        click.echo(f"  {mark}  {step.name:<10} {step.ms:8.1f} ms  {step.detail}")
    if report.method is not None:
        click.echo(f"method: {report.method} ({_METHODS[report.method]})")
    if report.ok:
        rtt = f", relay round trip {report.rtt_ms:.1f} ms" if report.rtt_ms is not None else ""
        click.echo(f"result: ok{rtt}")
    else:
        click.echo(f"result: failed at {report.error}")


@command.command("check")
@click.argument("url")
@click.option("--user", help="Long-term credential user name.")
@click.option("--password", help="Long-term credential password.")
@click.option("--secret", help="REST API shared secret (mints a credential for --user).")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds for the whole check.")
@click.option("--peer", help="Only probe the permission for this peer IP (nothing is sent).")
@click.option("--family", type=click.Choice(["4", "6"]), help="Request an IPv4 or IPv6 relay.")
@click.option("--insecure", is_flag=True, help="turns: skip certificate verification.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(
    url: str,
    user: str | None,
    password: str | None,
    secret: str | None,
    timeout: float,
    peer: str | None,
    family: str | None,
    insecure: bool,
    as_json: bool,
) -> None:
    """Allocate on a TURN server, relay a packet back to ourselves, report each step.

    The peer is a second allocation on the same server (method "two-allocations": works behind
    any NAT); a server that refuses that gets a UDP socket of this host as the peer
    ("peer-socket"). Every request uses only the transport the URL names.

    Exit status: 0 ok, 1 the check failed (the report says where), 2 bad input.

    \b
    Examples:
      natkit turn check turn:turn.example.org:3478 --user alice --password s3cret
      natkit turn check 'turns:turn.example.org?transport=tcp' --secret "$SECRET"
      natkit turn check turn:127.0.0.1 --secret S --peer ::ffff:127.0.0.1 --family 6
    """
    import asyncio

    from natkit.diag.turncheck import check_turn

    if password is not None and user is None:
        fail("--password needs --user")
    if secret is not None and password is not None:
        fail("pass either --password or --secret, not both")
    try:
        report = asyncio.run(
            check_turn(
                url,
                username=user,
                password=password,
                secret=secret,
                timeout=timeout,
                peer=peer,
                family=6 if family == "6" else 4 if family == "4" else None,
                insecure=insecure,
                until="permission" if peer else "relay",
            )
        )
    except ValueError as err:
        fail(str(err))
        return
    failed = report.failed_step
    if failed is not None and failed.name == "resolve":
        fail(failed.detail)
    if as_json:
        echo_json(report.to_dict())
    else:
        _render_report(report)
    sys.exit(0 if report.ok else 1)
