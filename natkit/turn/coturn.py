"""The coturn engine: render turnserver.conf, detect the version, supervise turnserver.

The pieces live in `coturn_conf` (pure rendering, version rules, known bypasses) and
`coturn_proc` (the supervised child); this module is the engine's public face.
"""

from __future__ import annotations

from natkit.turn.coturn_conf import (
    KNOWN_BYPASSES,
    MISSING_BINARY,
    Bypass,
    Version,
    VulnerableCoturnError,
    detect_version,
    parse_version,
    peer_policy,
    render,
)
from natkit.turn.coturn_proc import parse_log_line, serve, write_private

__all__ = [
    "KNOWN_BYPASSES",
    "MISSING_BINARY",
    "Bypass",
    "Version",
    "VulnerableCoturnError",
    "detect_version",
    "parse_log_line",
    "parse_version",
    "peer_policy",
    "render",
    "serve",
    "write_private",
]
