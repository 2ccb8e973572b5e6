"""What the sans-IO TURN core needs from ``turn.*``: built once by
`natkit.turn.engine.relay_settings`, read by `natkit.turn.relay` and `natkit.turn.allocate`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from natkit.turn.allocation import DEFAULT_LIMITS, Limits
from natkit.turn.tcp_relay import DEFAULT_TCP_CONNECTIONS

__all__ = ["RelaySettings"]


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """What the core needs from ``turn.*`` (built by `natkit.turn.engine.relay_settings`)."""

    relay_ips: Mapping[int, str]
    """IP version → the local IP relay sockets bind to; a family missing here answers 440."""
    external_ips: Mapping[int, str] = field(default_factory=dict)
    """IP version → the IP advertised in XOR-RELAYED-ADDRESS (1:1 NAT), else the relay IP."""
    ports: tuple[int, int] = (49152, 65535)
    """``turn.relay.ports``: every worker's relay ports (the peer rules' "our relay ports")."""
    pool_ports: tuple[int, int] | None = None
    """The slice of `ports` this worker allocates from (`worker_ports`); None: all of them."""
    lifetime_default: int = 600
    lifetime_max: int = 3600
    quota_per_user: int = 10
    quota_total: int = 1000
    software: str = "natkit"
    limits: Limits = DEFAULT_LIMITS
    """Permissions and channels per allocation (``turn.limits``)."""
    peers_per_request: int = 10
    """XOR-PEER-ADDRESS attributes one CreatePermission may carry (``turn.limits``)."""
    tcp_connections: int = DEFAULT_TCP_CONNECTIONS
    """RFC 6062 connections per TCP allocation (``turn.limits``)."""
