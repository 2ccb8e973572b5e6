"""natkit check: run a natkit check page in headless Chromium and print its report."""

from __future__ import annotations

import click

from natkit.cli.common import echo_json, fail


@click.command("check")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print the report (diagnose's JSON fields).")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds the page may take.")
@click.option(
    "--insecure", is_flag=True, help="Accept any TLS certificate (a test server's, self-signed)."
)
def command(url: str, as_json: bool, timeout: float, insecure: bool) -> None:
    """Open URL (a `natkit serve` check page, check.enabled) in headless Chromium, wait for
    its report and print it: the browser's view of this network's NAT, for CI and support
    scripts. Needs Debian's chromium ($NATKIT_CHROMIUM names another binary).

    Exit status as natkit diagnose: 0 direct P2P for most calls, 1 relay needed and working,
    3 no working path, 2 bad input or no report.

    \b
    Example:
      natkit check http://127.0.0.1:8080/check --json
    """
    from natkit.check.headless import launch, run_check

    if not url.startswith(("http://", "https://")):
        fail(f"URL must be http:// or https://, got {url!r} (see natkit check --help)")
    flags = ("--ignore-certificate-errors",) if insecure else ()
    with launch(extra_flags=flags) as browser:
        report = run_check(browser, url, timeout=timeout)
    if "error" in report or "verdict" not in report:
        fail(f"the check page at {url} gave no report: {report.get('error', 'unknown error')}")
    if as_json:
        echo_json(report)
    else:
        click.echo(_text(report))
    raise SystemExit(int(report.get("exit_status", 2)))


def _text(r: dict[str, object]) -> str:
    v = r["verdict"]
    assert isinstance(v, dict)
    lines = [
        f"natkit check  ({r['duration_s']} s, report {r['id']})",
        f"  public address        {r['public_address'] or '-'}",
        f"  mapping               {r['mapping'] or 'unknown'}",
        f"  filtering             {r['filtering'] or 'unknown'}",
        f"  NAT type              {r['nat_type']}",
    ]
    for t in r["turn"] if isinstance(r["turn"], list) else []:
        state = f"works (relay {t['relayed_address']})" if t["ok"] else t["error"]
        lines.append(f"  TURN {t['url']}: {state}")
    lines += ["", f"Verdict: direct P2P {v['direct_p2p']}", f"  {v['explanation']}"]
    return "\n".join(lines)
