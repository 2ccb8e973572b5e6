"""Validation rules beyond the type of a value: ranges, address syntax, paths, cross-key rules.

The loader (`natkit.config.load`) first converts each YAML value to its field's type, then calls
the field rule registered here under ``(class, field name)`` (or the item rule, for each item of
a list), which returns the value to keep
(possibly normalised, e.g. a path made absolute) or raises ValueError with the problem. After a
whole section is built, its section rule (`SECTION_RULES`) checks keys against each other and
raises `Problem` naming the key (and list index) to blame, so the error points at the right line.

Messages never quote the value of a secret key.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natkit.addr import Transport, format_hostport, parse_hostport
from natkit.config.model import (
    CheckConfig,
    ClusterConfig,
    DiagnoseConfig,
    DiagnoseTurnServer,
    MetricsConfig,
    PortRange,
    RateLimitConfig,
    SignalConfig,
    StreamConfig,
    StunConfig,
    TlsConfig,
    TurnAuthConfig,
    TurnConfig,
    TurnCoturnConfig,
    TurnLifetimeConfig,
    TurnLimitsConfig,
    TurnPeersConfig,
    TurnQuotaConfig,
    TurnRelayConfig,
)
from natkit.uri import StunURI, TurnURI

__all__ = [
    "DIAGNOSE_TIMEOUT",
    "FIELD_RULES",
    "ITEM_RULES",
    "SECTION_RULES",
    "Context",
    "Problem",
    "proxy_section",
]

DIAGNOSE_TIMEOUT = (0.2, 60.0)
"""Seconds `diagnose.timeout` and ``natkit diagnose --timeout`` accept."""


@dataclass(frozen=True, slots=True)
class Context:
    """What rules may depend on besides the value: where relative paths start."""

    base_dir: Path


class Problem(Exception):
    """A section rule's finding: the key (and list index) to blame, and what is wrong.

    `key` may be a dotted path below the section (``turn.relay.ports`` from the top level); the
    loader points at the deepest part of it the YAML spells out."""

    def __init__(self, key: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.message = message
        self.index = index


FieldRule = Callable[[Any, Context], Any]
SectionRule = Callable[[Any], None]


def _positive(value: float, _: Context) -> float:
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value:g}")
    return value


def _at_least_one(value: int, _: Context) -> int:
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _channels(value: int, _: Context) -> int:
    if not 1 <= value <= 0x1000:  # RFC 8656 §12: channel numbers 0x4000-0x4FFF
        raise ValueError(f"must be 1-4096 (the channel numbers of RFC 8656 §12), got {value}")
    return value


def _workers(value: int | str, ctx: Context) -> int | str:
    if isinstance(value, int) and value < 1:
        raise ValueError(f'must be at least 1 or "auto", got {value}')
    return value


def _short_text(what: str, *, allow_empty: bool) -> FieldRule:
    # RFC 8489 §14.9 (REALM) and §14.14 (SOFTWARE): fewer than 128 characters.
    def rule(value: str, _: Context) -> str:
        if not value and not allow_empty:
            raise ValueError(f"{what} must not be empty")
        if len(value) >= 128:
            raise ValueError(
                f"{what} must be shorter than 128 characters (RFC 8489), got {len(value)}"
            )
        return value

    return rule


def _ip_literal(value: str | None, _: Context) -> str | None:
    if value is not None:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address literal") from None
    return value


def _ip_port(value: str | None, _: Context) -> str | None:
    """``IP:PORT`` with a literal IP (IPv6 in brackets); returns the canonical spelling."""
    if value is None:
        return None
    host, port = parse_hostport(value)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} in {value!r} is not an IP address literal") from None
    return format_hostport(host, port)


def _check_listen(value: str, ctx: Context) -> str:
    """``http://IP:PORT`` or ``https://IP:PORT`` (the certificate is stun.tls's)."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"expected http://IP:PORT or https://IP:PORT, got {value!r}")
    hostport = _ip_port(rest, ctx)
    return f"{scheme}://{hostport}"


def _alternate(value: str | None, ctx: Context) -> str | None:
    # RFC 5780 §7.2 / RFC 3489 §11.2.3: the alternate is a real transport address, never port 0.
    text = _ip_port(value, ctx)
    if value is not None and parse_hostport(value)[1] == 0:
        raise ValueError(f"port 0 in {value!r}: the alternate address needs a real port")
    return text


def _port_range(value: str, _: Context) -> str:
    return str(PortRange.parse(value))


def _cidr(text: str, _: Context) -> str:
    try:
        ipaddress.ip_network(text, strict=False)  # "10.1.2.3/8" means 10.0.0.0/8
    except ValueError:
        raise ValueError(f"{text!r} is not a CIDR range, e.g. 10.0.0.0/8") from None
    return text


def _trusted_source(text: str, _: Context) -> str:
    """A load balancer allowed to send PROXY headers: an IP or a CIDR range, never everyone
    (a client trusted to send the header chooses the address it is rate-limited as)."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address or CIDR range, e.g. 10.0.0.5 or 10.0.0.0/24"
        ) from None
    if net.prefixlen == 0:
        raise ValueError(
            f"{text!r} trusts every address: any client could announce any source; "
            "list the load balancers' addresses"
        )
    return text


def proxy_section(stun: StunConfig) -> None:
    """``stun.proxy_protocol`` needs someone to trust and a listener the header can arrive on
    (haproxy's proxy-protocol.txt: the header opens a TCP connection; natkit reads none on UDP)."""
    if not stun.proxy_protocol:
        return
    if not stun.proxy_trusted:
        raise Problem(
            "proxy_protocol",
            "no load balancer may send the PROXY header: list their addresses in "
            "stun.proxy_trusted (e.g. [10.0.0.5]), or set proxy_protocol: false",
        )
    if not any(uri.transport in (Transport.TCP, Transport.TLS) for uri in stun.listen):
        raise Problem(
            "proxy_protocol",
            "PROXY headers arrive on tcp:// or tls:// listeners and stun.listen has none: "
            "add one, or set proxy_protocol: false",
        )


def _existing_file(value: str | None, ctx: Context) -> str | None:
    # Relative to the config file, not the working directory: `natkit serve` may run anywhere.
    if value is None:
        return None
    path = ctx.base_dir / os.path.expanduser(value)
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file not readable: {path}")
    return str(path)


def _not_empty_secret(value: str | None, _: Context) -> str | None:
    if value == "":
        raise ValueError("must not be empty (remove the key to leave it unset)")
    return value


def _users(value: dict[str, str], _: Context) -> dict[str, str]:
    for user, password in value.items():
        if not user or ":" in user:
            # RFC 8489 §9.2: USERNAME; ':' separates expiry and name in REST API user names.
            raise ValueError(f"user name {user!r} must be non-empty and without ':'")
        if not password:
            raise ValueError(f"password of user {user!r} must not be empty")
    return value


def _extra_line(line: str, _: Context) -> str:
    if "\n" in line or "\r" in line:
        raise ValueError("one turnserver.conf line per item (no newlines)")
    return line


def _stun_uri(text: str, _: Context) -> str:
    """``stun:HOST[:PORT]`` or a bare HOST[:PORT], parsed by the parser diagnose uses; kept in
    its canonical spelling (``stun:HOST:PORT``)."""
    return str(StunURI.parse(text))


def _turn_url(value: str, _: Context) -> str:
    """``turn:HOST[:PORT][?transport=udp|tcp]`` or ``turns:…`` (RFC 7065 §3), parsed by the
    parser diagnose and turn check use; kept as written."""
    TurnURI.parse(value)
    return value


def _diagnose_timeout(value: float, _: Context) -> float:
    # The same bounds as `natkit diagnose --timeout` (a budget, not a wait: minutes make no sense).
    low, high = DIAGNOSE_TIMEOUT
    if not low <= value <= high:
        raise ValueError(f"must be from {low:g} to {high:g} seconds, got {value:g}")
    return value


def _lifetime_section(lifetime: TurnLifetimeConfig) -> None:
    if lifetime.default > lifetime.max:
        raise Problem("default", f"must not exceed max ({lifetime.max}), got {lifetime.default}")


def _diagnose_turn_section(server: DiagnoseTurnServer) -> None:
    if server.credential is not None and server.secret is not None:
        raise Problem("secret", "give either credential (a password) or secret, not both")
    if server.credential is not None and server.username is None:
        raise Problem("credential", "a credential needs a username")


def _redis_url(value: str | None, _: Context) -> str | None:
    # Never echo the value: it may carry a password.
    if value is not None:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("redis", "rediss", "unix") or not rest:
            raise ValueError(
                "must be a redis://HOST:PORT, rediss://HOST:PORT (TLS) or unix:///PATH URL"
            )
    return value


def _name(what: str) -> FieldRule:
    def rule(value: str | None, _: Context) -> str | None:
        if value is not None and not (
            0 < len(value) <= 64 and all(c.isalnum() or c in "-_." for c in value)
        ):
            raise ValueError(f"{what} must be 1-64 letters, digits, '-', '_' or '.'")
        return value

    return rule


def _not_negative(value: int, _: Context) -> int:
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _lease(value: float, _: Context) -> float:
    if value < 1.0:
        raise ValueError(f"must be at least 1 second (heartbeats are a third of it), got {value}")
    return value


FIELD_RULES: dict[tuple[type, str], FieldRule] = {
    (StunConfig, "alternate"): _alternate,
    (StunConfig, "workers"): _workers,
    (StunConfig, "software"): _short_text("SOFTWARE", allow_empty=True),
    (RateLimitConfig, "per_source"): _positive,
    (RateLimitConfig, "burst"): _positive,
    (RateLimitConfig, "max_sources"): _positive,
    (TlsConfig, "cert"): _existing_file,
    (TlsConfig, "key"): _existing_file,
    (StreamConfig, "max_connections"): _positive,
    (StreamConfig, "idle_timeout"): _positive,
    (StreamConfig, "max_message_size"): _positive,
    (StreamConfig, "max_connections_per_source"): _positive,
    (StreamConfig, "frame_timeout"): _positive,
    (TurnConfig, "realm"): _short_text("REALM", allow_empty=False),
    (TurnAuthConfig, "secret"): _not_empty_secret,
    (TurnAuthConfig, "users"): _users,
    (TurnAuthConfig, "nonce_lifetime"): _positive,
    (TurnRelayConfig, "address"): _ip_literal,
    (TurnRelayConfig, "external_address"): _ip_literal,
    (TurnRelayConfig, "ports"): _port_range,
    (TurnLifetimeConfig, "default"): _positive,
    (TurnLifetimeConfig, "max"): _positive,
    (TurnQuotaConfig, "per_user"): _at_least_one,
    (TurnQuotaConfig, "total"): _at_least_one,
    (TurnLimitsConfig, "peers_per_request"): _at_least_one,
    (TurnLimitsConfig, "permissions_per_allocation"): _at_least_one,
    (TurnLimitsConfig, "channels_per_allocation"): _channels,
    (TurnLimitsConfig, "tcp_connections_per_allocation"): _at_least_one,
    (TurnConfig, "alternate_server"): _alternate,
    (TurnConfig, "drain_timeout"): _positive,
    (DiagnoseTurnServer, "url"): _turn_url,
    (DiagnoseTurnServer, "credential"): _not_empty_secret,
    (DiagnoseTurnServer, "secret"): _not_empty_secret,
    (DiagnoseConfig, "timeout"): _diagnose_timeout,
    (SignalConfig, "listen"): _ip_port,
    (SignalConfig, "ttl"): _positive,
    (SignalConfig, "max_sdp_size"): _positive,
    (SignalConfig, "max_connections"): _positive,
    (SignalConfig, "max_connections_per_source"): _positive,
    (SignalConfig, "max_pairings_per_source"): _positive,
    (SignalConfig, "request_timeout"): _positive,
    (MetricsConfig, "listen"): _ip_port,
    (CheckConfig, "listen"): _check_listen,
    (CheckConfig, "report_ttl"): _positive,
    (CheckConfig, "max_tests"): _at_least_one,
    (CheckConfig, "tests_per_minute"): _at_least_one,
    (ClusterConfig, "redis"): _redis_url,
    (ClusterConfig, "node_id"): _name("cluster.node_id"),
    (ClusterConfig, "prefix"): _name("cluster.prefix"),
    (ClusterConfig, "timeout"): _positive,
    (ClusterConfig, "lease"): _lease,
    (ClusterConfig, "capacity"): _not_negative,
    (ClusterConfig, "advertise"): _ip_literal,
}

# Rules for each item of a list key, so an error points at the item's own line.
ITEM_RULES: dict[tuple[type, str], FieldRule] = {
    (StunConfig, "proxy_trusted"): _trusted_source,
    (TurnPeersConfig, "deny"): _cidr,
    (TurnPeersConfig, "allow"): _cidr,
    (TurnCoturnConfig, "extra"): _extra_line,
    (DiagnoseConfig, "stun"): _stun_uri,
}

SECTION_RULES: dict[type, SectionRule] = {
    TurnLifetimeConfig: _lifetime_section,
    DiagnoseTurnServer: _diagnose_turn_section,
}
