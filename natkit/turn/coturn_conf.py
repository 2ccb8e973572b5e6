"""turnserver.conf from the natkit config, aware of the installed coturn version.

coturn's options moved across releases, and it only *logs* an unknown key ("Bad configuration
format") and runs on without it, so a renderer that ignores the version silently loses settings.
What changed, per the coturn sources (tags 4.6.1 … 4.17.1):

- 4.6: RFC 5780 (NAT behaviour discovery, 57x amplification with PADDING) is on by default:
  render ``no-rfc5780`` unless ``stun.alternate`` asks for it. From 4.7 it is opt-in: ``rfc5780``.
- < 4.7: TLS 1.0/1.1 on by default: render ``no-tlsv1``/``no-tlsv1_1`` (removed in 4.7, where
  the old versions are off by default).
- < 4.10: the telnet CLI is on by default: ``no-cli`` is always rendered (still accepted later).
- Peer lists take ``ip`` or ``ip-ip``, never CIDR (see `natkit.turn.peers`).
- < 4.9: CVE-2026-27624, ``::ffff:127.0.0.1`` passes the loopback and IPv4 range checks. Closed
  here by denying ``::ffff:0:0/96`` as an IPv6 range, which 4.6.1 enforces (verified against the
  installed 4.6.1 by tests/integration/test_coturn_security.py).

A known bypass the rendered config cannot close makes `render` refuse (`VulnerableCoturnError`)
unless ``turn.coturn.allow_vulnerable`` is set.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from natkit.addr import Transport
from natkit.config.cross import validate
from natkit.config.model import Config
from natkit.errors import ConfigError, DependencyError
from natkit.turn.peer_config import peer_policy
from natkit.turn.peers import (
    MAPPED_V4_RANGE,
    PeerPolicy,
    coturn_lines,
    network_range,
    touches_loopback,
)

__all__ = [
    "KNOWN_BYPASSES",
    "Bypass",
    "Version",
    "VulnerableCoturnError",
    "detect_version",
    "parse_version",
    "peer_policy",
    "render",
]

Version = tuple[int, int, int]

MISSING_BINARY = "turnserver not found: install the Debian package coturn (apt-get install coturn)"


class VulnerableCoturnError(DependencyError):
    """The installed coturn has a peer-policy bypass the rendered config cannot close."""


@dataclass(frozen=True, slots=True)
class Bypass:
    """A known way around coturn's peer checks, and the config lines that close it (if any)."""

    cve: str
    fixed_in: Version
    summary: str
    closing_lines: tuple[str, ...]
    """Rendered for affected versions; empty = cannot be closed by config."""


KNOWN_BYPASSES: tuple[Bypass, ...] = (
    Bypass(
        "CVE-2020-26262",
        (4, 5, 2),
        "peer 0.0.0.0 or [::] reached the server's loopback",
        # Not closable: coturn reads a range bound of :: or 0.0.0.0 as "no bound".
        (),
    ),
    Bypass(
        "CVE-2026-27624",
        (4, 9, 0),
        "IPv4-mapped peers (::ffff:127.0.0.1) bypassed the loopback and IPv4 deny checks",
        (f"denied-peer-ip={network_range(MAPPED_V4_RANGE)}",),
    ),
)

_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> Version | None:
    """The first ``X.Y.Z`` in `--version` output or the startup banner ("Version Coturn-4.6.1")."""
    match = _VERSION_RE.search(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def detect_version(binary: str = "turnserver") -> Version:
    """Ask the installed turnserver its version (``--version`` prints e.g. ``4.6.1``)."""
    path = shutil.which(binary)
    if path is None:
        raise DependencyError(MISSING_BINARY)
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DependencyError(f"cannot run {path} --version: {err}") from None
    version = parse_version(out.stdout) or parse_version(out.stderr)
    if version is None:
        raise DependencyError(f"cannot read the coturn version from {path} --version")
    return version


def _fmt(version: Version) -> str:
    return ".".join(map(str, version))


def _config_error(cfg: Config, path: str, problem: str) -> ConfigError:
    return ConfigError(problem, file=cfg.source, path=path)


def _listener_lines(cfg: Config, version: Version) -> list[str]:
    listen = cfg.stun.listen
    # One port for UDP+TCP and one for TLS (coturn has no more): checked at load (`cross`).
    plain = {u.port for u in listen if u.transport in (Transport.UDP, Transport.TCP)}
    tls = {u.port for u in listen if u.transport is Transport.TLS}
    ips: list[str] = []
    for uri in listen:
        if uri.host not in ips:
            ips.append(uri.host)
    lines = []
    # A wildcard listener means every interface: coturn's default without listening-ip.
    if not any(ipaddress.ip_address(ip).is_unspecified for ip in ips):
        lines += [f"listening-ip={ip}" for ip in ips]
    if plain:
        lines.append(f"listening-port={plain.pop()}")
    transports = {u.transport for u in listen}
    if Transport.UDP not in transports:
        lines.append("no-udp")
    if Transport.TCP not in transports:
        lines.append("no-tcp")
    if tls:
        lines.append(f"tls-listening-port={tls.pop()}")
        lines += _tls_lines(cfg, version)
    else:
        lines.append("no-tls")
    lines.append("no-dtls")  # natkit has no DTLS listener type
    lines += _rfc5780_lines(cfg, version)
    return lines


def _tls_lines(cfg: Config, version: Version) -> list[str]:
    tls = cfg.stun.tls
    if not tls.cert or not tls.key:
        raise _config_error(cfg, "stun.tls", "a tls:// listener needs stun.tls.cert and key")
    base = os.path.dirname(os.path.abspath(cfg.source)) if cfg.source else os.getcwd()
    lines = [
        f"cert={os.path.join(base, tls.cert)}",
        f"pkey={os.path.join(base, tls.key)}",
    ]
    if version < (4, 7, 0):  # TLS 1.0/1.1 are off by default (and the flags gone) from 4.7
        lines += ["no-tlsv1", "no-tlsv1_1"]
    return lines


def _rfc5780_lines(cfg: Config, version: Version) -> list[str]:
    if cfg.stun.alternate_address is None:
        return ["no-rfc5780"] if version < (4, 7, 0) else []
    host, port = cfg.stun.alternate_address
    # coturn's RFC 5780 takes the alternate address from a second listening IP.
    lines = [f"listening-ip={host}", f"alt-listening-port={port}"]
    if version >= (4, 7, 0):
        lines.append("rfc5780")
    return lines


def _auth_lines(cfg: Config) -> list[str]:
    auth = cfg.turn.auth  # `secret` and `users` together are refused at load (`cross`)
    if auth.secret:
        return ["use-auth-secret", f"static-auth-secret={auth.secret}"]
    if auth.users:
        return ["lt-cred-mech", *(f"user={u}:{p}" for u, p in sorted(auth.users.items()))]
    raise _config_error(cfg, "turn.auth", "set `secret` or `users`: natkit runs no open relay")


def _relay_lines(cfg: Config) -> list[str]:
    relay = cfg.turn.relay
    lines = [f"min-port={relay.port_range.low}", f"max-port={relay.port_range.high}"]
    if relay.address:
        lines.append(f"relay-ip={relay.address}")
    if relay.external_address:
        # PUBLIC/PRIVATE tells coturn which relay IP the public one stands for (1:1 NAT).
        mapping = f"/{relay.address}" if relay.address else ""
        lines.append(f"external-ip={relay.external_address}{mapping}")
    return lines


def _security_lines(cfg: Config, version: Version, policy: PeerPolicy) -> list[str]:
    lines = ["fingerprint", "no-cli", "no-multicast-peers"]
    if touches_loopback(policy):
        # coturn's loopback check runs before allowed-peer-ip; lift it, the deny list still
        # covers every loopback address outside the hole.
        lines.append("allow-loopback-peers")
    lines += coturn_lines(policy)
    if touches_loopback(policy):
        # ... so loopback stays denied outside the hole even if the user's deny list forgot it.
        lines += ["denied-peer-ip=127.0.0.0-127.255.255.255", "denied-peer-ip=::1"]
    for bypass in KNOWN_BYPASSES:
        if version < bypass.fixed_in:
            if not bypass.closing_lines and not cfg.turn.coturn.allow_vulnerable:
                raise VulnerableCoturnError(
                    f"coturn {_fmt(version)} has {bypass.cve} ({bypass.summary}), fixed in "
                    f"{_fmt(bypass.fixed_in)}; upgrade coturn or set "
                    "turn.coturn.allow_vulnerable: true"
                )
            lines += [f"# {bypass.cve}: fixed in {_fmt(bypass.fixed_in)}, closed here"]
            lines += bypass.closing_lines
    return lines


def render(
    cfg: Config,
    version: Version,
    *,
    runtime_dir: str | None = None,
    extra_own: Sequence[str] = (),
    host: Collection[str] | None = None,
) -> str:
    """The turnserver.conf text for `cfg` on coturn `version`.

    `runtime_dir` (set by the supervisor) receives coturn's SQLite user database; without it the
    file leaves ``userdb`` at coturn's default; `host` is this host's addresses (`peer_policy`).
    Raises ConfigError for what coturn cannot express
    and VulnerableCoturnError as described in the module docstring.
    """
    turn = cfg.turn
    validate(cfg)  # the load-time rules, for a Config built in Python
    policy = peer_policy(cfg, extra_own, host)
    sections = [
        [
            f"# turnserver.conf rendered by natkit for coturn {_fmt(version)}: do not edit,",
            "# edit the natkit config and run `natkit turn render` again. Contains secrets.",
        ],
        _listener_lines(cfg, version),
        [
            f"realm={turn.realm}",
            *_auth_lines(cfg),
            f"stale-nonce={int(turn.auth.nonce_lifetime)}",
        ],
        _relay_lines(cfg),
        [
            f"max-allocate-lifetime={turn.lifetime.max}",
            f"user-quota={turn.quota.per_user}",
            f"total-quota={turn.quota.total}",
        ],
        _security_lines(cfg, version, policy),
        # natkit parses coturn's log from stdout; no pid file (the supervisor knows the pid).
        ["log-file=stdout", "simple-log", "pidfile="],
    ]
    if not cfg.stun.software:
        sections[-1].append("no-software-attribute")
    if runtime_dir:
        sections[-1].append(f"userdb={os.path.join(runtime_dir, 'turndb')}")
    if turn.coturn.extra:
        sections.append(["# turn.coturn.extra", *turn.coturn.extra])
    return "\n\n".join("\n".join(s) for s in sections) + "\n"
