"""`natkit serve`: run STUN (+ TURN + metrics) per config in the foreground until SIGINT/SIGTERM.

`serve(config)` is the one call the CLI makes; it is usable from Python too. It validates what it
can before starting anything (listener plan, TLS files), starts the metrics endpoint and the
workers, prints one ``listening ...`` line per listener on stdout (scripts and tests wait for
them), then supervises. SIGTERM/SIGINT drain and return normally; SIGHUP re-reads the config file
and applies what can change live (rate limits, logging). Problems a user can fix raise
`NatkitError`, which the CLI prints as one line and exit status 2.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TextIO

from natkit import logs
from natkit.addr import Transport
from natkit.config.model import Config
from natkit.errors import DependencyError, NatkitError
from natkit.metrics import MetricsServer, SharedCounters, render
from natkit.stun.sockets import make_ssl_context, plan_listeners
from natkit.stun.workers import Supervisor, resolve_workers

__all__ = ["serve"]

log = logging.getLogger("natkit.serve")

# Keys that need a restart: SIGHUP says so instead of silently ignoring a change.
_RESTART_ONLY = ("listen", "alternate", "workers", "software", "tls", "stream")


def serve(config: Config, *, out: TextIO | None = None) -> None:
    """Serve per `config` until SIGINT/SIGTERM; NatkitError for anything the user must fix."""
    out = out or sys.stdout
    logs.setup(config.logging.level, config.logging.format, role="supervisor")
    if config.turn.enabled and config.turn.engine == "coturn":
        _serve_coturn(config)
        return
    if config.turn.enabled:
        log.warning("turn.engine builtin is not built yet; serving STUN only")
    if not config.stun.enabled:
        raise NatkitError("nothing to serve: stun.enabled is false and TURN is off")
    plans = plan_listeners(config.stun, config.source)  # ConfigError before anything starts
    if any(p.uri.transport is Transport.TLS for p in plans):
        make_ssl_context(config.stun.tls, config.source)
    asyncio.run(_run(config, out))


def _serve_coturn(config: Config) -> None:
    # The coturn engine serves STUN and TURN on the same ports itself; natkit only supervises it.
    try:
        from natkit.turn import coturn
    except ImportError:
        raise DependencyError("turn.engine coturn: the coturn engine is not built yet") from None
    run = getattr(coturn, "serve", None)
    if run is None:
        raise DependencyError("turn.engine coturn: the coturn engine is not built yet")
    run(config)


async def _run(config: Config, out: TextIO) -> None:
    loop = asyncio.get_running_loop()
    count = resolve_workers(config.stun.workers)
    counters = SharedCounters(count)
    supervisor = Supervisor(config, count, counters.array)
    metrics: MetricsServer | None = None
    if config.metrics.listen:
        metrics = MetricsServer(
            config.metrics.listen, lambda: render(counters.totals(), supervisor.live())
        )
        try:
            await metrics.start()
        except OSError as err:
            raise NatkitError(
                f"cannot serve metrics on {config.metrics.listen}: {err.strerror or err}"
            ) from None
    # Handlers first: a SIGTERM during startup must still end in a clean drain and exit 0.
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = {"config": config}
    loop.add_signal_handler(signal.SIGHUP, _reload, state, supervisor)
    try:
        await supervisor.start()
        plural = "worker" if count == 1 else "workers"
        for uri in config.stun.listen:
            print(f"listening {uri} ({count} {plural})", file=out, flush=True)
        if metrics is not None:
            print(f"metrics http://{config.metrics.listen}/metrics", file=out, flush=True)
        await stop.wait()
        log.info("stopping: draining workers")
    finally:
        await supervisor.stop()
        if metrics is not None:
            await metrics.close()


def _reload(state: dict[str, Config], supervisor: Supervisor) -> None:
    old = state["config"]
    if old.source is None:
        log.warning("SIGHUP: running on built-in defaults, no config file to reload")
        return
    try:
        from natkit.config import load

        new = load(old.source)
    except NatkitError as err:
        log.error("SIGHUP: config not reloaded, keeping the running one: %s", err)
        return
    logs.setup(new.logging.level, new.logging.format)
    changed = [k for k in _RESTART_ONLY if getattr(new.stun, k) != getattr(old.stun, k)]
    if new.metrics != old.metrics:
        changed.append("metrics")
    if changed:
        log.warning("SIGHUP: %s changed; restart natkit serve to apply", ", ".join(changed))
    state["config"] = new
    supervisor.reload(new)
    log.info("SIGHUP: reloaded rate limits and logging from %s", new.source)
