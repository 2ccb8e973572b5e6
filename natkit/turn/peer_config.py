"""The peer policy of a natkit config, shared by both TURN engines.

`natkit.turn.peers` is the pure policy (ranges in, verdicts out); this module builds one from a
`Config`: the configured deny/allow lists, this server's own addresses (listeners, alternate,
relay) and every address of this host (`natkit.hostaddr`). The builtin engine uses it directly
(`natkit.turn.engine`); the coturn renderer (`natkit.turn.coturn_conf`) renders it. It lives
apart from both so that serving with the builtin engine never imports the coturn renderer.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from natkit.config.model import Config
from natkit.errors import ConfigError
from natkit.hostaddr import host_addresses
from natkit.turn.peers import PeerPolicy

__all__ = ["own_addresses", "peer_policy"]


def own_addresses(cfg: Config) -> list[str]:
    """This server's addresses: relaying to them would loop into its own services."""
    own = [uri.host for uri in cfg.stun.listen]
    if cfg.stun.alternate_address is not None:
        own.append(cfg.stun.alternate_address.host)
    own += [a for a in (cfg.turn.relay.address, cfg.turn.relay.external_address) if a]
    return own


def peer_policy(
    cfg: Config, extra_own: Sequence[str] = (), host: Collection[str] | None = None
) -> PeerPolicy:
    """The peer policy of `cfg` (both engines); `extra_own` adds addresses found at run time.

    `host` is every address of this host (default: enumerated now, `host_addresses`): a
    wildcard listener names none of them, yet a relay to any of them reaches this host's own
    services (ssh, the signal port, the TURN port itself). The builtin refreshes them while it
    runs (`natkit.turn.engine.HostAddressRefresh`); coturn gets them rendered at start and HUP.
    """
    found = host_addresses() if host is None else host
    try:
        return PeerPolicy(
            cfg.turn.peers.deny, cfg.turn.peers.allow, [*own_addresses(cfg), *extra_own], found
        )
    except ValueError as err:
        raise ConfigError(str(err), file=cfg.source, path="turn.peers") from None
