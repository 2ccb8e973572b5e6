"""`natkit cluster status|revoke|unrevoke|secret|user`: a fleet's shared state on Redis."""

from __future__ import annotations

from typing import Any

import click

from natkit.cli.common import NatkitGroup, config_option, echo_json, fail

__all__ = ["command"]


@click.group("cluster", cls=NatkitGroup)
def command() -> None:
    """A fleet of natkit servers sharing state on Redis (cluster.redis in the config).

    \b
    Examples:
      natkit cluster status -c natkit.yaml --json
      natkit cluster revoke -c natkit.yaml mallory     # 401 on every node, allocations ended
      natkit cluster secret add -c natkit.yaml         # a second REST secret (rotation)
    """


def _cluster(config_path: str | None) -> Any:
    from natkit.config import load

    config = load(config_path)
    if config.cluster.redis is None:
        fail(f"{config_path or 'the built-in defaults'}: cluster.redis is not set (no fleet)")
    return config.cluster


def _run(config_path: str | None, call: Any) -> Any:
    from natkit.cluster import admin

    return admin.run(_cluster(config_path), call)


@command.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(config_path: str | None, as_json: bool) -> None:
    """Nodes (members, load, health), quota use per user and in total, revocations.

    \b
    Example:
      natkit cluster status -c natkit.yaml --json
    """
    from natkit.cluster import admin

    report = _run(config_path, admin.status)
    if as_json:
        echo_json(report)
        return
    click.echo(f"fleet {report['prefix'].rstrip(':')}: {len(report['nodes'])} node(s), "
               f"{report['quota']['total']} allocation(s) counted")  # fmt: skip
    for node in report["nodes"]:
        state = "draining" if node["draining"] else "healthy" if node["healthy"] else "down"
        state += ", full" if node["full"] else ""
        click.echo(f"  {node['node']}: {state}, {node['allocations']} allocation(s), "
                   f"{node['bps']} bit/s, {len(node['members'])} worker(s)")  # fmt: skip
    for user, count in report["quota"]["users"].items():
        click.echo(f"  user {user}: {count}")
    for name in report["revoked"]:
        click.echo(f"  revoked: {name}")


@command.command("revoke")
@config_option
@click.argument("name")
@click.option(
    "--ttl", default=None, help="Revoke for this long (e.g. 24h); default: until unrevoked."
)
def revoke(config_path: str | None, name: str, ttl: str | None) -> None:
    """Revoke user (or credential) NAME: 401 on its next request on every node, its allocations
    ended within a second.

    \b
    Example:
      natkit cluster revoke -c natkit.yaml mallory --ttl 24h
    """
    from natkit.cluster import admin
    from natkit.turn.credentials import parse_ttl

    try:
        seconds = parse_ttl(ttl) if ttl else 0
    except ValueError as err:
        fail(f"--ttl: {err}")
    _run(config_path, admin.revoke(name, seconds))
    click.echo(f"revoked {name}")


@command.command("unrevoke")
@config_option
@click.argument("name")
def unrevoke(config_path: str | None, name: str) -> None:
    """Take NAME off the revocation list.

    \b
    Example:
      natkit cluster unrevoke -c natkit.yaml mallory
    """
    from natkit.cluster import admin

    removed = _run(config_path, admin.unrevoke(name))
    click.echo(f"unrevoked {name}" if removed else f"{name} was not revoked")


@command.group("secret", cls=NatkitGroup)
def secret() -> None:
    """REST API secrets every node accepts besides turn.auth.secret (several for rotation).

    \b
    Example:
      natkit cluster secret add -c natkit.yaml
    """


@secret.command("add")
@config_option
@click.option("--secret", "value", envvar="NATKIT_NEW_TURN_SECRET", prompt=True, hide_input=True,
              help="The secret (default: $NATKIT_NEW_TURN_SECRET, else asked).")  # fmt: skip
def secret_add(config_path: str | None, value: str) -> None:
    """Accept one more REST API secret on every node (rotation: add, hand out, remove the old).

    \b
    Example:
      NATKIT_NEW_TURN_SECRET=... natkit cluster secret add -c natkit.yaml
    """
    from natkit.cluster import admin

    if not value:
        fail("the secret is empty")
    _run(config_path, admin.add_secret(value))
    click.echo("secret added")


@secret.command("remove")
@config_option
@click.option("--secret", "value", envvar="NATKIT_OLD_TURN_SECRET", prompt=True, hide_input=True,
              help="The secret (default: $NATKIT_OLD_TURN_SECRET, else asked).")  # fmt: skip
def secret_remove(config_path: str | None, value: str) -> None:
    """Stop accepting a REST API secret added with `secret add`.

    \b
    Example:
      NATKIT_OLD_TURN_SECRET=... natkit cluster secret remove -c natkit.yaml
    """
    from natkit.cluster import admin

    removed = _run(config_path, admin.remove_secret(value))
    click.echo("secret removed" if removed else "no such secret")


@command.group("user", cls=NatkitGroup)
def user() -> None:
    """Static users every node accepts besides turn.auth.users.

    \b
    Example:
      natkit cluster user set -c natkit.yaml dave
    """


@user.command("set")
@config_option
@click.argument("name")
@click.option("--password", envvar="NATKIT_USER_PASSWORD", prompt=True, hide_input=True,
              help="The password (default: $NATKIT_USER_PASSWORD, else asked).")  # fmt: skip
def user_set(config_path: str | None, name: str, password: str) -> None:
    """Add static user NAME on every node, or change its password.

    \b
    Example:
      natkit cluster user set -c natkit.yaml dave
    """
    from natkit.cluster import admin

    if not password:
        fail("the password is empty")
    _run(config_path, admin.set_user(name, password))
    click.echo(f"user {name} set")


@user.command("remove")
@config_option
@click.argument("name")
def user_remove(config_path: str | None, name: str) -> None:
    """Remove static user NAME added with `user set` (its allocations end as they expire;
    revoke it to end them now).

    \b
    Example:
      natkit cluster user remove -c natkit.yaml dave
    """
    from natkit.cluster import admin

    removed = _run(config_path, admin.remove_user(name))
    click.echo(f"user {name} removed" if removed else f"no user {name}")
