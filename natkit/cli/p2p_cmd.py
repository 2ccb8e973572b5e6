"""natkit p2p: live WebRTC test between two machines, its rendezvous, and the NAT matrix.

Exit status: 0 connected, 1 not connected (or the other peer never came), 2 bad input (including
an unreachable signal service or an unknown pairing code).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from natkit.cli.common import NatkitGroup, config_option, echo_json, fail

F = TypeVar("F", bound=Callable[..., Any])


@click.group("p2p", cls=NatkitGroup)
def command() -> None:
    """Live WebRTC data-channel test: does a P2P connection work between two machines?

    \b
    Example (the rendezvous runs in `natkit serve` with signal.enabled, or standalone):
      natkit p2p signal --listen 0.0.0.0:8765                 on a reachable host
      natkit p2p offer --signal http://HOST:8765 --stun stun:HOST:3478    machine A: prints a code
      natkit p2p answer CODE --signal http://HOST:8765 --stun stun:HOST:3478   machine B
    """


def _peer_options(func: F) -> F:
    options = [
        click.option(
            "--signal",
            "signal_url",
            required=True,
            metavar="URL",
            envvar="NATKIT_SIGNAL",
            help="Rendezvous URL, http://HOST:PORT.",
        ),
        click.option("--stun", multiple=True, metavar="URL", help="STUN server, stun:HOST[:PORT]."),
        click.option(
            "--turn",
            multiple=True,
            metavar="URL",
            help="TURN server, turn:HOST[:PORT][?transport=udp|tcp] or turns:...",
        ),
        click.option("--user", help="TURN user name."),
        click.option("--password", envvar="NATKIT_TURN_PASSWORD", help="TURN password."),
        click.option(
            "--relay-only", is_flag=True, help="Use only relay candidates (needs --turn)."
        ),
        click.option(
            "--timeout",
            type=float,
            default=30.0,
            show_default=True,
            help="Seconds to connect once both descriptions are known; as long again to measure.",
        ),
        click.option(
            "--wait",
            type=float,
            default=300.0,
            show_default=True,
            help="Seconds to wait for the other peer at the rendezvous.",
        ),
        click.option(
            "--host",
            "hosts",
            multiple=True,
            metavar="IP",
            help="Only these local IPs as host candidates (e.g. 127.0.0.1).",
        ),
        click.option(
            "--bytes",
            "payload",
            type=int,
            default=1 << 20,
            show_default=True,
            help="Bytes sent to measure throughput.",
        ),
        click.option(
            "--map-port",
            is_flag=True,
            help="Map the ICE sockets' ports through the gateway (PCP, NAT-PMP or UPnP) and "
            "offer the mapped addresses as server-reflexive candidates.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _options(kw: dict[str, Any]) -> Any:
    from natkit.p2p import P2POptions

    if kw["relay_only"] and not kw["turn"]:
        fail("--relay-only needs --turn URL")
    if kw["timeout"] <= 0 or kw["wait"] <= 0 or kw["payload"] < 0:
        fail("--timeout and --wait must be > 0, --bytes >= 0")
    for url in kw["turn"]:
        if not url.startswith(("turn:", "turns:")):
            fail(f"--turn {url!r}: write turn:HOST[:PORT] or turns:HOST[:PORT]")
    stun = tuple(url if url.startswith("stun:") else f"stun:{url}" for url in kw["stun"])
    return P2POptions(
        signal=kw["signal_url"],
        stun=stun,
        turn=tuple(kw["turn"]),
        username=kw["user"],
        password=kw["password"],
        relay_only=kw["relay_only"],
        timeout=kw["timeout"],
        wait=kw["wait"],
        host_addresses=tuple(kw["hosts"]) or None,
        payload_bytes=kw["payload"],
        map_port=kw["map_port"],
    )


def _report(result: Any, as_json: bool) -> None:
    from natkit.p2p import render_text, to_json

    if as_json:
        echo_json(to_json(result))
    else:
        click.echo(render_text(result))
    sys.exit(0 if result.connected else 1)


@command.command("offer")
@_peer_options
def offer_cmd(**kw: Any) -> None:
    """Start a test: print a pairing code, wait for the other side, connect and report.

    \b
    Example:
      natkit p2p offer --signal http://203.0.113.10:8765 --stun stun:203.0.113.10
    """
    import asyncio

    from natkit.p2p import offer

    options = _options(kw)

    def show(code: str) -> None:
        # With --json, stdout carries only the JSON document; the code goes to stderr.
        out = sys.stderr if kw["as_json"] else sys.stdout
        hint = f"natkit p2p answer {code} --signal {options.signal}"
        click.echo(f"pairing code: {code}  (other side: {hint})", file=out)
        out.flush()

    _report(asyncio.run(offer(options, on_code=show)), kw["as_json"])


@command.command("answer")
@click.argument("code")
@_peer_options
def answer_cmd(code: str, **kw: Any) -> None:
    """Join the test started by `natkit p2p offer` with its pairing CODE, connect and report.

    \b
    Example:
      natkit p2p answer 7kq3m9xwpa --signal http://203.0.113.10:8765 --stun stun:203.0.113.10
    """
    import asyncio

    from natkit.p2p import answer
    from natkit.signal.store import normalize_code

    options = _options(kw)
    _report(asyncio.run(answer(normalize_code(code), options)), kw["as_json"])


@command.command("signal")
@config_option
@click.option("--listen", metavar="IP:PORT", help="Override signal.listen from the config.")
def signal_cmd(config_path: str | None, listen: str | None) -> None:
    """Run only the rendezvous (SDP exchange) service, in the foreground.

    \b
    Example:
      natkit p2p signal --listen 0.0.0.0:8765
    """
    import dataclasses

    from natkit.config import load
    from natkit.signal.http import run_signal

    config = load(config_path).signal
    if listen:
        config = dataclasses.replace(config, listen=listen)
    run_signal(config)


@command.command("matrix")
@click.option(
    "--topology",
    default="matrix",
    show_default=True,
    help="Lab preset (matrix, matrix-extended, matrix-ipv6, matrix-ports, matrix-portmap, "
    "matrix-impaired, matrix-same-type) or YAML file; hosts are peers.",
)
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds each connection attempt may take.",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 32),
    default=6,
    show_default=True,
    help="Pairs tested at once.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON record per pair.")
def matrix_cmd(topology: str, timeout: float, parallel: int, as_json: bool) -> None:
    """Run every pair of NAT types direct and through TURN in a lab (needs root).

    Exit 0 when every pair connects (directly or relayed) and diagnose's prediction held.

    \b
    Example:
      natkit p2p matrix
    """
    from natkit.p2p.matrix import render_table, run_matrix, to_json

    def progress(record: Any) -> None:
        if not as_json:
            click.echo(
                f"  {record.a} <-> {record.b}: direct {'ok' if record.direct else 'fail'},"
                f" relay {'ok' if record.relay else 'fail'}",
                err=True,
            )

    records = run_matrix(topology, concurrency=parallel, timeout=timeout, progress=progress)
    if as_json:
        echo_json(to_json(records))
    else:
        click.echo(render_table(records))
    good = all(r.relay or r.direct for r in records) and all(r.held is not False for r in records)
    sys.exit(0 if good else 1)
