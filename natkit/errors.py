"""The natkit exception tree.

Every error a user can cause (bad config, bad input, missing binary, no privileges) derives from
`NatkitError` and carries the process exit status the CLI uses. The CLI turns it into one line:
``natkit: error: <message>``; nothing else prints a traceback for these.

Protocol errors that travel on the wire carry their STUN ERROR-CODE instead (`natkit.stun`).
"""

from __future__ import annotations

import signal

__all__ = [
    "ConfigError",
    "DependencyError",
    "Interrupted",
    "LabError",
    "NatkitError",
    "PrivilegeError",
    "TopologyError",
    "UsageError",
]


class NatkitError(Exception):
    """Base of every user-facing natkit error; `str(err)` is the one-line message."""

    exit_status: int = 2


class UsageError(NatkitError):
    """Wrong arguments or an input that cannot be used (an unresolvable host, a bad URL)."""


class ConfigError(NatkitError):
    """The config file is invalid. The message reads ``FILE:LINE: key.path: problem``."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        line: int | None = None,
        path: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        self.path = path
        super().__init__(self.render())

    def render(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.path}: {self.problem}" if self.path else f"{where}: {self.problem}"


class DependencyError(NatkitError):
    """An external binary or package natkit needs is missing; the message says how to install it."""


class PrivilegeError(NatkitError):
    """The operation needs root or CAP_NET_ADMIN."""


class LabError(NatkitError):
    """A lab could not be built, found or removed."""


class TopologyError(LabError, ConfigError):
    """A lab topology (YAML) is invalid; like a config error it reads
    ``FILE:LINE: key.path: problem``."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP received while this process owned a lab (`natkit.lab.signals`): it
    unwinds exactly like Ctrl-C, and the CLI then exits 128 + `signum`."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)
