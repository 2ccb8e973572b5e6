"""The file descriptor budget of `natkit serve`: raise RLIMIT_NOFILE, say when it cannot fit.

Every TCP/TLS connection and every relay socket is a file descriptor of the worker holding it,
and the common soft limit is 1024: 1,100 idle TCP connections were enough to leave no descriptor
for a relay socket (issue 11). The supervisor raises its soft limit to the hard limit at start,
before it spawns the workers (children inherit limits); what a worker may then need at once is
``stun.stream.max_connections`` + its relay sockets (one per allocation: at most
``turn.quota.total``, and never more than the relay port range) + a few for listeners, pipes and
the event loop. When that does not fit, serve says so in one line at start; at run time a relay
socket that cannot be created is a 508 (RFC 8656 §7.2), never a silent success.
"""

from __future__ import annotations

import resource

from natkit.config.model import Config

__all__ = ["SPARE", "fd_budget", "raise_nofile"]

SPARE = 64
"""Descriptors a worker holds besides connections and relay sockets (listeners, the loop, pipes,
the log, imports), with room to spare."""


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (no privilege needed); the soft limit now.

    An unlimited hard limit is capped by the kernel's ``fs.nr_open``: setrlimit refuses more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            return soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft
        return target
    return soft


def fd_budget(config: Config, limit: int) -> str | None:
    """The one line to log when a worker's connections and relay sockets cannot all fit in
    `limit` descriptors, else None."""
    if config.turn.enabled and config.turn.engine == "coturn":
        return None  # coturn serves every socket itself (it inherits the raised limit)
    connections = config.stun.stream.max_connections
    relays = 0
    if config.turn.enabled and config.turn.engine == "builtin":
        ports = config.turn.relay.port_range
        relays = min(config.turn.quota.total, ports.high - ports.low + 1)
    need = connections + relays + SPARE
    if limit == resource.RLIM_INFINITY or need <= limit:
        return None
    relay_text = f" + {relays} relay sockets (turn.quota.total, turn.relay.ports)" if relays else ""
    return (
        f"file descriptor limit {limit} per worker is below what it may need at once: "
        f"{connections} connections (stun.stream.max_connections){relay_text} + {SPARE} spare "
        f"= {need}; beyond it connections are refused and Allocate gets 508. Raise the limit "
        f"(ulimit -n, systemd LimitNOFILE=) or lower those keys"
    )
