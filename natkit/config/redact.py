"""The config as plain JSON-able data, secrets replaced by ``***`` unless asked otherwise."""

from __future__ import annotations

from typing import Any

from natkit.addr import ListenURI
from natkit.config.model import Config, config_fields, is_section

__all__ = ["REDACTED", "to_dict"]

REDACTED = "***"


def to_dict(config: Config, redact: bool = True) -> dict[str, Any]:
    """Every key of `config` (defaults included) as dicts, lists, str, int, float, bool, None.

    With `redact`, secret values read ``***``; an unset secret stays null and a user table keeps
    its user names, so the output still shows *what* is configured.
    """
    data = _plain(config, secret=False, redact=redact)
    assert isinstance(data, dict)
    return data


def _plain(value: Any, *, secret: bool, redact: bool) -> Any:
    if is_section(type(value)):
        return {
            f.name: _plain(
                getattr(value, f.name), secret=bool(f.metadata.get("secret")), redact=redact
            )
            for f in config_fields(type(value))
        }
    if isinstance(value, dict):
        return {str(k): _plain(v, secret=secret, redact=redact) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v, secret=secret, redact=redact) for v in value]
    if isinstance(value, ListenURI):
        return str(value)
    if secret and redact and value is not None:
        return REDACTED
    return value
