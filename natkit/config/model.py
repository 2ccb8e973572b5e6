"""The natkit config as typed, frozen data: every key, its type, its default, one line of help.

The loader (`natkit.config.load`) walks these dataclasses generically: a YAML mapping becomes the
dataclass of its field's type, checked per type, then by the rules in `natkit.config.checks`.
Field `metadata["help"]` is the one-line documentation shown by `natkit config show` and kept in
step with configs/natkit.yaml by a test. `metadata["secret"]` marks values never printed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import Field, dataclass, field, fields, is_dataclass
from typing import Any, Literal, NamedTuple

from natkit import special_addresses
from natkit.addr import Address, ListenURI, parse_hostport
from natkit.uri import StunURI, TurnURI

__all__ = [
    "DEFAULT_DENIED_PEERS",
    "CheckConfig",
    "ClusterConfig",
    "Config",
    "DiagnoseConfig",
    "DiagnoseTurnServer",
    "LoggingConfig",
    "MetricsConfig",
    "PortRange",
    "RateLimitConfig",
    "SignalConfig",
    "StreamConfig",
    "StunConfig",
    "TlsConfig",
    "TurnAuthConfig",
    "TurnConfig",
    "TurnCoturnConfig",
    "TurnLifetimeConfig",
    "TurnLimitsConfig",
    "TurnPeersConfig",
    "TurnQuotaConfig",
    "TurnRelayConfig",
    "config_fields",
    "is_section",
]


def doc(help: str, *, secret: bool = False, key: bool = True) -> dict[str, Any]:
    """Field metadata: one line of help; `secret` values are never printed; `key=False` marks a
    field that is not a config key (the loader rejects it in YAML, `show` omits it)."""
    return {"help": help, "secret": secret, "key": key}


def is_section(tp: Any) -> bool:
    """Whether `tp` is a config section here (ListenURI is a dataclass too, but a value)."""
    return isinstance(tp, type) and is_dataclass(tp) and tp.__module__ == __name__


def config_fields(cls: type) -> tuple[Field[Any], ...]:
    """The fields of a config dataclass that are YAML keys, in declaration order."""
    return tuple(f for f in fields(cls) if f.metadata.get("key", True))


# Relaying to these is refused unless `turn.peers.allow` opens a hole (an open relay into the
# operator's own network is the classic TURN vulnerability). Derived from the IANA special-purpose
# address registries (natkit.special_addresses); IPv4-mapped IPv6 forms are derived by the policy.
DEFAULT_DENIED_PEERS: tuple[str, ...] = special_addresses.DEFAULT_DENIED_PEERS

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    enabled: bool = field(
        default=True, metadata=doc("Per-source-IP token bucket on STUN requests.")
    )
    per_source: int = field(
        default=100, metadata=doc("Sustained requests/s allowed per source IP.")
    )
    burst: int = field(
        default=200, metadata=doc("Bucket size: requests a source may send at once.")
    )
    max_sources: int = field(
        default=100_000, metadata=doc("Sources tracked at once; the oldest idle are evicted.")
    )


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: str | None = field(
        default=None, metadata=doc("PEM certificate chain for tls:// listeners.")
    )
    key: str | None = field(
        # The path is not secret (errors name it); the key inside the file never leaves it.
        default=None,
        metadata=doc("PEM private key file for tls:// listeners."),
    )


@dataclass(frozen=True, slots=True)
class StreamConfig:
    max_connections: int = field(default=1024, metadata=doc("Open TCP/TLS connections per worker."))
    idle_timeout: float = field(
        default=30.0, metadata=doc("Seconds before an idle connection is closed.")
    )
    max_message_size: int = field(
        default=4096, metadata=doc("Largest STUN message accepted on a stream, bytes.")
    )
    max_connections_per_source: int = field(
        default=64,
        metadata=doc("Connections one IPv4 address or IPv6 /64 may hold per worker."),
    )
    frame_timeout: float = field(
        default=10.0,
        metadata=doc("Seconds a STUN/ChannelData frame may take once its first byte arrived."),
    )


@dataclass(frozen=True, slots=True)
class StunConfig:
    enabled: bool = field(default=True, metadata=doc("Serve STUN on the listeners."))
    listen: tuple[ListenURI, ...] = field(
        default=(ListenURI.parse("udp://0.0.0.0:3478"), ListenURI.parse("tcp://0.0.0.0:3478")),
        metadata=doc("Listen URIs: udp://IP:PORT, tcp://IP:PORT, tls://IP:PORT; IPv6 in brackets."),
    )
    alternate: str | None = field(
        default=None,
        metadata=doc(
            "Second IP:PORT of this server (RFC 5780 OTHER-ADDRESS / RFC 3489 CHANGED-ADDRESS)."
        ),
    )
    workers: int | Literal["auto"] = field(
        default="auto",
        metadata=doc("Processes sharing each port via SO_REUSEPORT; auto = CPU count."),
    )
    software: str = field(
        default="natkit", metadata=doc("SOFTWARE attribute value; empty to omit.")
    )
    rate_limit: RateLimitConfig = field(
        default_factory=RateLimitConfig, metadata=doc("Per-source rate limit.")
    )
    tls: TlsConfig = field(
        default_factory=TlsConfig, metadata=doc("Certificate for tls:// listeners.")
    )
    stream: StreamConfig = field(
        default_factory=StreamConfig, metadata=doc("TCP/TLS connection limits.")
    )
    proxy_protocol: bool = field(
        default=False,
        metadata=doc(
            "TCP/TLS connections from proxy_trusted open with a PROXY protocol v2 header "
            "naming the real client."
        ),
    )
    proxy_trusted: tuple[str, ...] = field(
        default=(),
        metadata=doc("Load balancers (IP or CIDR) that must send the header; no one else may."),
    )
    fast_path: Literal["off", "auto", "kernel"] = field(
        default="off",
        metadata=doc(
            "Plain Binding requests over UDP answered in the kernel (tc-BPF, root): off, auto "
            "(when it can load, else as off), kernel (a failure to load is an error)."
        ),
    )
    alternate_address: Address | None = field(
        init=False,
        repr=False,
        compare=False,
        metadata=doc("`alternate` parsed (derived, not a key).", key=False),
    )
    proxy_networks: tuple[IPNetwork, ...] = field(
        init=False,
        repr=False,
        compare=False,
        metadata=doc("`proxy_trusted` parsed (derived, not a key).", key=False),
    )

    def __post_init__(self) -> None:
        alternate = None if self.alternate is None else Address(*parse_hostport(self.alternate))
        object.__setattr__(self, "alternate_address", alternate)
        # strict=False: "10.0.0.5/24" means 10.0.0.0/24, as in turn.peers.
        networks = tuple(ipaddress.ip_network(t, strict=False) for t in self.proxy_trusted)
        object.__setattr__(self, "proxy_networks", networks)


@dataclass(frozen=True, slots=True)
class TurnAuthConfig:
    secret: str | None = field(
        default=None,
        metadata=doc("TURN REST API shared secret (ephemeral credentials).", secret=True),
    )
    users: dict[str, str] = field(
        default_factory=dict,
        metadata=doc("Static long-term credentials: user: password.", secret=True),
    )
    nonce_lifetime: float = field(
        default=600.0, metadata=doc("Seconds a nonce is valid (then 438).")
    )


class PortRange(NamedTuple):
    """An inclusive port range LOW-HIGH (``turn.relay.ports``), parsed once at load."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``"LOW-HIGH"`` with 1 <= LOW <= HIGH <= 65535; ValueError with a message for a user."""
        low_text, sep, high_text = text.partition("-")
        low_text, high_text = low_text.strip(), high_text.strip()
        if not sep or not low_text.isdecimal() or not high_text.isdecimal():
            raise ValueError(f"{text!r} is not a port range LOW-HIGH, e.g. 49152-65535")
        low, high = int(low_text), int(high_text)
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            raise ValueError(f"ports in {text!r} must be from 1 to 65535")
        if low > high:
            raise ValueError(f"{text!r}: LOW must not be greater than HIGH")
        return cls(low, high)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


@dataclass(frozen=True, slots=True)
class TurnRelayConfig:
    address: str | None = field(
        default=None, metadata=doc("Local IP relayed sockets bind to; default: the listener's IP.")
    )
    external_address: str | None = field(
        default=None,
        metadata=doc("Public IP advertised in XOR-RELAYED-ADDRESS when behind 1:1 NAT."),
    )
    ports: str = field(default="49152-65535", metadata=doc("Relay port range LOW-HIGH."))
    port_range: PortRange = field(
        init=False,
        repr=False,
        compare=False,
        metadata=doc("`ports` parsed (derived, not a key).", key=False),
    )

    def __post_init__(self) -> None:
        # Parsed here, once: every engine reads `port_range`, none parses `ports` again.
        object.__setattr__(self, "port_range", PortRange.parse(self.ports))


@dataclass(frozen=True, slots=True)
class TurnLifetimeConfig:
    default: int = field(
        default=600, metadata=doc("Allocation lifetime when the client asks none, s.")
    )
    max: int = field(default=3600, metadata=doc("Longest allocation lifetime granted, s."))


@dataclass(frozen=True, slots=True)
class TurnQuotaConfig:
    per_user: int = field(
        default=10, metadata=doc("Allocations one user may hold at once (then 486).")
    )
    total: int = field(
        default=1000, metadata=doc("Allocations the server holds at once (then 508).")
    )


@dataclass(frozen=True, slots=True)
class TurnLimitsConfig:
    peers_per_request: int = field(
        default=10, metadata=doc("XOR-PEER-ADDRESS one CreatePermission may carry (then 508).")
    )
    permissions_per_allocation: int = field(
        default=64, metadata=doc("Peer IPs one allocation may hold permissions for (then 508).")
    )
    channels_per_allocation: int = field(
        default=64, metadata=doc("Channels one allocation may bind, at most 4096 (then 508).")
    )
    tcp_connections_per_allocation: int = field(
        default=32,
        metadata=doc("RFC 6062 peer TCP connections one TCP allocation may hold (then 508)."),
    )


@dataclass(frozen=True, slots=True)
class TurnPeersConfig:
    deny: tuple[str, ...] = field(
        default=DEFAULT_DENIED_PEERS,
        metadata=doc("Peer address ranges (CIDR) the relay refuses with 403."),
    )
    allow: tuple[str, ...] = field(
        default=(), metadata=doc("Holes in `deny` opened deliberately (CIDR), e.g. a lab's ranges.")
    )


@dataclass(frozen=True, slots=True)
class TurnCoturnConfig:
    binary: str = field(default="turnserver", metadata=doc("coturn's turnserver executable."))
    extra: tuple[str, ...] = field(
        default=(), metadata=doc("Extra turnserver.conf lines appended verbatim (expert use).")
    )
    allow_vulnerable: bool = field(
        default=False,
        metadata=doc("Run a coturn version with a known peer-policy bypass that cannot be closed."),
    )


@dataclass(frozen=True, slots=True)
class TurnConfig:
    enabled: bool = field(default=False, metadata=doc("Serve TURN on the STUN listeners."))
    engine: Literal["builtin", "coturn"] = field(
        default="builtin",
        metadata=doc("builtin (asyncio, embedded) or coturn (supervised turnserver)."),
    )
    realm: str = field(default="natkit.local", metadata=doc("Long-term credential realm."))
    auth: TurnAuthConfig = field(default_factory=TurnAuthConfig, metadata=doc("Credentials."))
    relay: TurnRelayConfig = field(
        default_factory=TurnRelayConfig, metadata=doc("Relayed addresses.")
    )
    lifetime: TurnLifetimeConfig = field(
        default_factory=TurnLifetimeConfig, metadata=doc("Lifetimes.")
    )
    quota: TurnQuotaConfig = field(
        default_factory=TurnQuotaConfig, metadata=doc("Allocation quotas.")
    )
    limits: TurnLimitsConfig = field(
        default_factory=TurnLimitsConfig, metadata=doc("Per-allocation limits (builtin engine).")
    )
    peers: TurnPeersConfig = field(default_factory=TurnPeersConfig, metadata=doc("Peer policy."))
    pump: Literal["auto", "off"] = field(
        default="auto",
        metadata=doc(
            "Builtin engine: ChannelData of bound IPv4 UDP channels relayed by compiled code "
            "(C, built with cc): auto (when it builds, else in Python), off (always Python)."
        ),
    )
    coturn: TurnCoturnConfig = field(
        default_factory=TurnCoturnConfig, metadata=doc("coturn engine.")
    )
    alternate_server: str | None = field(
        default=None,
        metadata=doc(
            "IP:PORT a draining server sends new Allocates to (300 ALTERNATE-SERVER); "
            "null: 508 while draining."
        ),
    )
    drain_timeout: float = field(
        default=30.0,
        metadata=doc("On SIGTERM, seconds existing allocations keep relaying before exit."),
    )


@dataclass(frozen=True, slots=True)
class DiagnoseTurnServer:
    url: str = field(metadata=doc("turn: or turns: URI, e.g. turn:host:3478?transport=udp."))
    username: str | None = field(default=None, metadata=doc("Long-term user name."))
    credential: str | None = field(default=None, metadata=doc("Password.", secret=True))
    secret: str | None = field(
        default=None, metadata=doc("REST API shared secret instead of a password.", secret=True)
    )
    uri: TurnURI = field(
        init=False,
        repr=False,
        compare=False,
        metadata=doc("`url` parsed (derived, not a key).", key=False),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", TurnURI.parse(self.url))


@dataclass(frozen=True, slots=True)
class DiagnoseConfig:
    stun: tuple[str, ...] = field(
        default=("stun:127.0.0.1:3478",), metadata=doc("STUN servers to probe (stun:HOST[:PORT]).")
    )
    turn: tuple[DiagnoseTurnServer, ...] = field(default=(), metadata=doc("TURN servers to check."))
    timeout: float = field(default=3.0, metadata=doc("Overall seconds the diagnosis may take."))
    stun_uris: tuple[StunURI, ...] = field(
        init=False,
        repr=False,
        compare=False,
        metadata=doc("`stun` parsed (derived, not a key).", key=False),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "stun_uris", tuple(StunURI.parse(s) for s in self.stun))


@dataclass(frozen=True, slots=True)
class SignalConfig:
    enabled: bool = field(
        default=False, metadata=doc("Run the P2P rendezvous (SDP exchange) service.")
    )
    listen: str = field(
        default="127.0.0.1:8765", metadata=doc("HTTP IP:PORT of the rendezvous service.")
    )
    ttl: float = field(
        default=300.0, metadata=doc("Seconds a pairing is kept before it is forgotten.")
    )
    max_sdp_size: int = field(
        default=16384, metadata=doc("Largest SDP description accepted, bytes.")
    )
    max_connections: int = field(
        default=256, metadata=doc("HTTP connections served at once (then the oldest unread goes).")
    )
    max_connections_per_source: int = field(
        default=32, metadata=doc("Connections one IPv4 address or IPv6 /64 may hold (then 429).")
    )
    max_pairings_per_source: int = field(
        default=20, metadata=doc("Live pairings one IPv4 address or IPv6 /64 may own (then 429).")
    )
    request_timeout: float = field(
        default=5.0, metadata=doc("Seconds from connect to a complete request (then 408).")
    )


@dataclass(frozen=True, slots=True)
class CheckConfig:
    enabled: bool = field(
        default=False,
        metadata=doc("Serve the browser NAT check page (GET /check) and its JSON API."),
    )
    listen: str = field(
        default="http://127.0.0.1:8080",
        metadata=doc(
            "http://IP:PORT or https://IP:PORT (certificate: stun.tls) of the check page; "
            "browsers allow WebRTC from plain HTTP only on localhost."
        ),
    )
    report_ttl: float = field(
        default=300.0, metadata=doc("Seconds a finished report stays at /check/api/report/ID.")
    )
    max_tests: int = field(default=256, metadata=doc("Tests running or kept at once (then 503)."))
    tests_per_minute: int = field(
        default=10, metadata=doc("Tests one IPv4 address or IPv6 /64 may start a minute (429).")
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str | None = field(
        default="127.0.0.1:9641", metadata=doc("Prometheus /metrics at IP:PORT; null to disable.")
    )


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata=doc("Log level.")
    )
    format: Literal["text", "json"] = field(
        default="text", metadata=doc("text, or json (one object a line).")
    )


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    redis: str | None = field(
        default=None,
        metadata=doc(
            "redis://[user:password@]HOST:PORT[/DB] or rediss:// (TLS) the fleet shares; "
            "null: no cluster (this server alone).",
            secret=True,
        ),
    )
    node_id: str | None = field(
        default=None, metadata=doc("This node's name in the fleet; default: the host name.")
    )
    fail_open: bool = field(
        default=True,
        metadata=doc(
            "Redis unreachable: true admits new allocations on local quotas, false refuses "
            "them (508); existing allocations relay either way."
        ),
    )
    timeout: float = field(
        default=0.1,
        metadata=doc("Seconds an Allocate may wait on Redis before the fail policy decides."),
    )
    lease: float = field(
        default=10.0,
        metadata=doc("Seconds a node's quota share outlives its last heartbeat (a crash)."),
    )
    capacity: int = field(
        default=0,
        metadata=doc(
            "Allocations this node takes before it redirects new ones (300) to the "
            "least-loaded node; 0: no limit."
        ),
    )
    advertise: str | None = field(
        default=None,
        metadata=doc(
            "IP the other nodes name in ALTERNATE-SERVER (ports from stun.listen); "
            "default: the listeners' IP."
        ),
    )
    domain: str | None = field(
        default=None,
        metadata=doc("This node's TLS name, sent as ALTERNATE-DOMAIN in redirects over TLS."),
    )
    prefix: str = field(
        default="natkit", metadata=doc("Key prefix in Redis: one fleet per prefix.")
    )


@dataclass(frozen=True, slots=True)
class Config:
    version: Literal[1] = field(default=1, metadata=doc("Config schema version."))
    stun: StunConfig = field(default_factory=StunConfig, metadata=doc("STUN server."))
    turn: TurnConfig = field(default_factory=TurnConfig, metadata=doc("TURN relay."))
    diagnose: DiagnoseConfig = field(
        default_factory=DiagnoseConfig, metadata=doc("natkit diagnose.")
    )
    signal: SignalConfig = field(default_factory=SignalConfig, metadata=doc("P2P rendezvous."))
    check: CheckConfig = field(
        default_factory=CheckConfig, metadata=doc("Browser NAT check page (natkit check).")
    )
    metrics: MetricsConfig = field(
        default_factory=MetricsConfig, metadata=doc("Prometheus metrics.")
    )
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata=doc("Logging."))
    cluster: ClusterConfig = field(
        default_factory=ClusterConfig, metadata=doc("Fleet state on Redis (off by default).")
    )
    source: str | None = field(
        default=None,
        compare=False,
        metadata=doc("File this config was loaded from; None for defaults or a string.", key=False),
    )
