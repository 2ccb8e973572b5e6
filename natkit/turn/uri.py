"""``turn:`` and ``turns:`` URIs (RFC 7065 §3): the parser lives in `natkit.uri`, one layer down,
so the config loader validates with the same code every command uses."""

from __future__ import annotations

from natkit.uri import DEFAULT_PORTS, TurnURI

__all__ = ["DEFAULT_PORTS", "TurnURI"]
