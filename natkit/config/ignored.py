"""Keys the configured TURN engine does not use, so `config check` and `serve` can say so.

With ``turn.engine: coturn`` natkit renders turnserver.conf and supervises coturn, which then
serves STUN and TURN itself: every key of natkit's own STUN server, its metrics endpoint and its
rendezvous has no effect. Checked against coturn 4.6.1 (Debian): ``turnserver --prometheus`` fails
with "unrecognized option" (the man page documents it for builds with libprom; ``--help`` does
not list it), it picks its own relay threads (``--relay-threads``, default one per CPU),
has no per-source request limit, sends its own SOFTWARE ("Coturn-4.6.1 ...") unless told none,
and has no option for the default allocation lifetime (600 s, built in). Its PROXY protocol
support (``tcp-proxy-port``, coturn commit ace903fd, in 4.6.1) moves the TCP listener to that
port, accepts the header from every source and disables the TLS listeners (netengine.c): it
cannot express ``stun.proxy_trusted``, so natkit does not render it.

A key is listed when its value asks for something (a non-default value, or a default that turns
a feature on, like the rate limit and the metrics endpoint): a warning, never an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from natkit.config.model import (
    Config,
    StreamConfig,
    StunConfig,
    TurnConfig,
    TurnLifetimeConfig,
    TurnLimitsConfig,
)

__all__ = ["COTURN_IGNORED", "Ignored", "ignored_keys", "ignored_message"]


@dataclass(frozen=True, slots=True)
class Ignored:
    key: str
    applies: Callable[[Config], bool]
    """Whether `config` sets this key to something that would matter."""
    why: str


_STUN = StunConfig()
_LIFETIME = TurnLifetimeConfig()
_STREAM = StreamConfig()
_DRAIN_TIMEOUT = TurnConfig().drain_timeout

COTURN_IGNORED: tuple[Ignored, ...] = (
    Ignored("stun.enabled", lambda c: not c.stun.enabled, "coturn always answers STUN"),
    Ignored(
        "stun.workers",
        lambda c: c.stun.workers != _STUN.workers,
        "coturn runs its own relay threads, one per CPU",
    ),
    Ignored(
        "stun.rate_limit",
        lambda c: c.stun.rate_limit.enabled,
        "coturn has no per-source request limit",
    ),
    Ignored(
        "stun.stream",
        lambda c: c.stun.stream != _STREAM,
        "coturn applies its own TCP/TLS connection limits",
    ),
    Ignored(
        "stun.proxy_protocol",
        lambda c: c.stun.proxy_protocol,
        "natkit does not render coturn's tcp-proxy-port: it takes the header from any source "
        "(no trusted list) on a port of its own and turns coturn's TLS listener off",
    ),
    Ignored(
        "stun.fast_path",
        lambda c: c.stun.fast_path != "off",
        "coturn answers every Binding itself; the kernel fast path is the builtin engine's",
    ),
    Ignored(
        "stun.software",
        lambda c: c.stun.software not in ("", _STUN.software),
        "coturn sends its own SOFTWARE; only an empty value is rendered (no-software-attribute)",
    ),
    Ignored(
        "turn.lifetime.default",
        lambda c: c.turn.lifetime.default != _LIFETIME.default,
        "coturn 4.6 grants 600 s when the client asks none",
    ),
    Ignored(
        "turn.limits",
        lambda c: c.turn.limits != TurnLimitsConfig(),
        "coturn 4.6 has no per-allocation permission, channel or TCP connection limit",
    ),
    Ignored(
        "turn.alternate_server",
        lambda c: c.turn.alternate_server is not None,
        "natkit does not render coturn's alternate-server; set it in coturn if needed",
    ),
    Ignored(
        "turn.drain_timeout",
        lambda c: c.turn.drain_timeout != _DRAIN_TIMEOUT,
        "coturn ends its allocations at SIGTERM (natkit forwards the signal)",
    ),
    Ignored(
        "turn.pump",
        lambda c: c.turn.pump != "auto",
        "coturn relays in its own C code; the pump is the builtin engine's",
    ),
    Ignored(
        "metrics.listen",
        lambda c: c.metrics.listen is not None,
        "Debian's coturn 4.6.1 is built without Prometheus and natkit serves no metrics for it",
    ),
    Ignored(
        "signal.enabled",
        lambda c: c.signal.enabled,
        "the rendezvous runs with the builtin engine only; run natkit p2p signal",
    ),
    Ignored(
        "check.enabled",
        lambda c: c.check.enabled,
        "the browser check page runs with the builtin engine only",
    ),
    Ignored(
        "cluster.redis",
        lambda c: c.cluster.redis is not None,
        "fleet quotas, revocations and redirects are the builtin engine's (coturn's own Redis "
        "holds users and statistics only)",
    ),
)


def ignored_keys(config: Config) -> list[Ignored]:
    """The keys `config` sets that its TURN engine ignores (none for the builtin engine)."""
    if not (config.turn.enabled and config.turn.engine == "coturn"):
        return []
    return [item for item in COTURN_IGNORED if item.applies(config)]


def ignored_message(keys: list[Ignored]) -> str:
    """One line: ``turn.engine coturn ignores stun.rate_limit (why), metrics.listen (why)``."""
    listed = "; ".join(f"{item.key} ({item.why})" for item in keys)
    return f"turn.engine coturn ignores {listed}"
