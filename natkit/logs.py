"""Logging setup: human text or one JSON object per line, level from config, re-appliable on SIGHUP.

Logs go to stderr (stdout carries the "listening ..." lines scripts wait for). Every record names
its process role (``supervisor`` or ``worker-N``) so lines from several workers can be told apart.
Extra fields passed with ``logger.info(msg, extra={...})`` become JSON keys.

`RateLimitFilter` keeps a per-datagram error path from turning a flood into a log flood: attach it
to the logger of a server loop and each distinct warning or error (same logger, code line and
exception type) is printed at most `burst` times per `interval`; the next one printed says how
many were suppressed in between.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["JsonFormatter", "RateLimitFilter", "setup"]

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


class RateLimitFilter(logging.Filter):
    """Let each distinct warning/error through at most `burst` times per `interval` seconds.

    Records below WARNING always pass. Keys are bounded in number (`max_keys`, oldest dropped):
    they come from code locations and exception types, not from remote input, so this only
    guards against a bug in that assumption.
    """

    def __init__(
        self,
        interval: float = 60.0,
        burst: int = 5,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval, self.burst, self.max_keys, self.clock = interval, burst, max_keys, clock
        self._windows: dict[tuple[object, ...], list[float]] = {}  # key → [start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[0] if record.exc_info else None
        key = (record.name, record.pathname, record.lineno, exc)
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.interval:
            dropped = int(window[2]) if window is not None else 0
            if window is None and len(self._windows) >= self.max_keys:
                self._windows.pop(next(iter(self._windows)))
            self._windows[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} ({dropped} similar suppressed)"
            return True
        if window[1] < self.burst:
            window[1] += 1
            return True
        window[2] += 1
        return False
