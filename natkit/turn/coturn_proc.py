"""Run coturn as a supervised child of ``natkit serve`` (turn.engine: coturn).

The supervisor owns everything coturn leaves to its operator: a private config file (0600, it
holds the secret) in a private temp dir, signals, logs and cleanup.

- SIGTERM / SIGINT are forwarded; coturn 4.6 dies by SIGTERM's default action, which natkit
  reports as a clean stop (exit 0) since it was asked for. A child that ignores the stop for
  `STOP_GRACE` seconds is killed.
- SIGHUP re-reads the natkit config, re-renders the file, and forwards HUP (coturn reopens its
  log) and USR2 (coturn reloads its TLS certificates). coturn rereads nothing else of its config
  while running, so other changes are logged as applying at the next restart.
- coturn's log lines (``log-file=stdout`` + ``simple-log``) become records of logger
  ``natkit.coturn`` at the level coturn gave them.
- The child never outlives natkit: PR_SET_PDEATHSIG kills it if natkit dies (even by SIGKILL),
  and a ``finally`` kills it and removes the temp dir on every other way out.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import IO

from natkit.config import Config, load
from natkit.errors import DependencyError, NatkitError
from natkit.turn.coturn_conf import MISSING_BINARY, Version, detect_version, render

__all__ = ["STOP_GRACE", "parse_log_line", "serve", "write_private"]

log = logging.getLogger("natkit.coturn")
STOP_GRACE = 10.0
_PR_SET_PDEATHSIG = 1

# "0: : ERROR: text" (4.6 simple-log) or "12: (4242): INFO: text" (newer): uptime, pid, level.
_LOG_RE = re.compile(
    r"^\s*\d+:\s*(?:\(\d+\))?:?\s*(?:(ERROR|WARNING|INFO|DEBUG|CONTROL|FATAL):\s*)?(?P<msg>.*)$"
)
_LEVELS = {
    "FATAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "CONTROL": logging.INFO,
    "DEBUG": logging.DEBUG,
}


def parse_log_line(line: str) -> tuple[int, str] | None:
    """(logging level, message) of one coturn log line; None for blank lines."""
    line = line.rstrip()
    if not line.strip():
        return None
    match = _LOG_RE.match(line)
    if match is None:  # banner continuation lines carry no prefix
        return logging.INFO, line.strip()
    msg = match["msg"].strip()
    if not msg:
        return None
    level = _LEVELS.get(match[1] or "", logging.INFO)
    if match[1] is None and ("ALERT" in msg or msg.startswith("WARNING")):
        level = logging.WARNING
    return level, msg


def write_private(path: str, text: str) -> None:
    """Write `text` to `path` readable by the owner only (it holds the TURN secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _pump_logs(stream: IO[str]) -> None:
    for line in stream:
        parsed = parse_log_line(line)
        if parsed is not None:
            log.log(parsed[0], "%s", parsed[1])


class _Supervisor:
    def __init__(
        self,
        cfg: Config,
        binary: str,
        version: Version,
        workdir: str,
        reload: Callable[[], Config] | None,
    ) -> None:
        self.cfg = cfg
        self.binary = binary
        self.version = version
        self.conf_path = os.path.join(workdir, "turnserver.conf")
        self.workdir = workdir
        self.reload = reload
        self.proc: subprocess.Popen[str] | None = None
        self.stop_signal: int | None = None
        self.stop_deadline = 0.0

    def write_conf(self) -> str:
        text = render(self.cfg, self.version, runtime_dir=self.workdir)
        write_private(self.conf_path, text)
        return text

    def on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_deadline = time.monotonic() + STOP_GRACE
        self.stop_signal = signum
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        old = self.cfg
        try:
            if self.reload is not None:
                self.cfg = self.reload()
            self.write_conf()
        except NatkitError as err:
            self.cfg = old
            log.error("SIGHUP: config not reloaded: %s", err)
            return
        if self.cfg != old:
            log.warning("SIGHUP: coturn applies config changes (except TLS certs) on restart")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)
            self.proc.send_signal(signal.SIGUSR2)

    def run(self) -> int:
        self.write_conf()
        self.proc = subprocess.Popen(
            [self.binary, "-c", self.conf_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            cwd=self.workdir,
            # Own process group: a terminal's ^C reaches natkit only, which forwards it once.
            process_group=0,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        version = ".".join(map(str, self.version))
        log.info("coturn %s started (pid %d, %s)", version, self.proc.pid, self.conf_path)
        assert self.proc.stdout is not None
        pump = threading.Thread(target=_pump_logs, args=(self.proc.stdout,), daemon=True)
        pump.start()
        while True:
            try:
                status = self.proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if self.stop_signal is not None and time.monotonic() > self.stop_deadline:
                    log.error("coturn ignored the stop for %.0f s: killing it", STOP_GRACE)
                    self.proc.kill()
        pump.join(timeout=2.0)
        return self.exit_status(status)

    def exit_status(self, status: int) -> int:
        if status < 0:
            if self.stop_signal is not None and -status in (self.stop_signal, signal.SIGKILL):
                log.info("coturn stopped")
                return 0
            log.error("coturn died of signal %d", -status)
            return 128 - status
        if status:
            log.error("coturn exited with status %d", status)
        return status

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def serve(config: Config, *, reload: Callable[[], Config] | None = None) -> int:
    """Run coturn per `config` in the foreground until it exits or natkit is told to stop.

    Returns the exit status for ``natkit serve``. `reload` re-reads the config on SIGHUP; by
    default the file `config.source` through `natkit.config.load`. Must run in the main thread
    (signal handlers).
    """
    binary = shutil.which(config.turn.coturn.binary)
    if binary is None:
        raise DependencyError(MISSING_BINARY)
    version = detect_version(binary)
    if reload is None and config.source:
        reload = _loader(config.source)
    workdir = tempfile.mkdtemp(prefix="natkit-coturn-")  # mode 0700
    sup = _Supervisor(config, binary, version, workdir, reload)
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in handled}
    try:
        signal.signal(signal.SIGTERM, sup.on_stop)
        signal.signal(signal.SIGINT, sup.on_stop)
        signal.signal(signal.SIGHUP, sup.on_hup)
        return sup.run()
    finally:
        sup.kill()
        for sig, handler in previous.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, handler)
        shutil.rmtree(workdir, ignore_errors=True)


def _loader(path: str) -> Callable[[], Config]:
    def reload() -> Config:
        return load(path)

    return reload
