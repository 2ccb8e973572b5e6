"""natkit.config: the one config layer shared by STUN, TURN, diagnostics and metrics.

    >>> from natkit.config import load
    >>> config = load("configs/natkit.yaml")      # or load(None) for the built-in defaults
    >>> [str(uri) for uri in config.stun.listen]
    ['udp://0.0.0.0:3478', 'tcp://0.0.0.0:3478']

YAML in, typed frozen dataclasses out (`natkit.config.model`); every error is a `ConfigError`
reading ``FILE:LINE: key.path: problem``. Secrets are printed only as ``***``.
"""

from __future__ import annotations

from natkit.config.load import load, loads
from natkit.config.model import (
    DEFAULT_DENIED_PEERS,
    Config,
    DiagnoseConfig,
    DiagnoseTurnServer,
    LoggingConfig,
    MetricsConfig,
    RateLimitConfig,
    SignalConfig,
    StreamConfig,
    StunConfig,
    TlsConfig,
    TurnAuthConfig,
    TurnConfig,
    TurnCoturnConfig,
    TurnLifetimeConfig,
    TurnPeersConfig,
    TurnQuotaConfig,
    TurnRelayConfig,
)
from natkit.config.redact import REDACTED, to_dict
from natkit.config.render import to_yaml
from natkit.errors import ConfigError

__all__ = [
    "DEFAULT_DENIED_PEERS",
    "REDACTED",
    "Config",
    "ConfigError",
    "DiagnoseConfig",
    "DiagnoseTurnServer",
    "LoggingConfig",
    "MetricsConfig",
    "RateLimitConfig",
    "SignalConfig",
    "StreamConfig",
    "StunConfig",
    "TlsConfig",
    "TurnAuthConfig",
    "TurnConfig",
    "TurnCoturnConfig",
    "TurnLifetimeConfig",
    "TurnPeersConfig",
    "TurnQuotaConfig",
    "TurnRelayConfig",
    "load",
    "loads",
    "to_dict",
    "to_yaml",
]
