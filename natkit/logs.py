"""Logging setup: human text or one JSON object per line, level from config, re-appliable on SIGHUP.

Logs go to stderr (stdout carries the "listening ..." lines scripts wait for). Every record names
its process role (``supervisor`` or ``worker-N``) so lines from several workers can be told apart.
Extra fields passed with ``logger.info(msg, extra={...})`` become JSON keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "setup"]

_ROLE = "supervisor"

# Attributes every LogRecord has; anything else came from `extra=` and is worth printing.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _ROLE
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (RFC 3339 UTC), level, logger, role, msg, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        data: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "role": getattr(record, "role", _ROLE),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key != "role":
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


_TEXT = logging.Formatter("%(asctime)s %(levelname)s %(role)s %(name)s: %(message)s")


def setup(level: str = "info", fmt: str = "text", *, role: str | None = None) -> None:
    """(Re)configure the root logger; idempotent, so SIGHUP simply calls it again."""
    global _ROLE
    if role is not None:
        _ROLE = role
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_natkit", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._natkit = True  # type: ignore[attr-defined]
        handler.addFilter(_RoleFilter())
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TEXT)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
