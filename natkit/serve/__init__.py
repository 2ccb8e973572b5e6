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
from natkit.check.server import CheckServer, render_check
from natkit.config.cross import validate
from natkit.config.ignored import ignored_keys, ignored_message
from natkit.config.model import Config
from natkit.errors import NatkitError
from natkit.fastpath import KernelFastPath
from natkit.fdlimit import fd_budget, raise_nofile
from natkit.metrics import MetricsServer, SharedCounters, cluster_ready, render, render_signal
from natkit.net.sockets import make_ssl_context, plan_listeners
from natkit.serve.kernel import resolve_pump, start_fast_path
from natkit.serve.workers import Supervisor, resolve_workers
from natkit.signal.http import SignalServer, serve_signal

__all__ = ["preflight", "serve", "warn_ignored"]

log = logging.getLogger("natkit.serve")

# Keys that need a restart: SIGHUP says so instead of silently ignoring a change.
_RESTART_ONLY = (
    "listen",
    "fast_path",
    "alternate",
    "workers",
    "software",
    "tls",
    "stream",
    "proxy_protocol",
    "proxy_trusted",
)


def serve(config: Config, *, out: TextIO | None = None) -> int:
    """Serve per `config` until SIGINT/SIGTERM and return the exit status (0 after a clean
    stop; coturn's own status with that engine). NatkitError for anything the user must fix."""
    out = out or sys.stdout
    logs.setup(config.logging.level, config.logging.format, role="supervisor")
    preflight(config)
    warn_ignored(config)
    budget = fd_budget(config, raise_nofile())  # before the workers: they inherit the limit
    if budget:
        log.warning("%s", budget)
    if config.turn.enabled and config.turn.engine == "coturn":
        # coturn serves STUN and TURN on the same ports itself; natkit only supervises it.
        from natkit.turn import coturn

        return coturn.serve(config)
    asyncio.run(_run(config, out))
    return 0


def preflight(config: Config) -> None:
    """Everything `serve` checks before it starts anything, without binding a socket: the load
    rules again (for a Config built in Python), the listener plan, TLS files, the relay settings
    and the TURN core, or for coturn the rendered turnserver.conf. NatkitError if it would fail.
    What is left for start-up is the host's: ports in use, privileges."""
    validate(config)
    if config.turn.enabled and config.turn.engine == "coturn":
        from natkit.turn.coturn_conf import detect_version, render

        render(config, detect_version(config.turn.coturn.binary))
        return
    if not config.stun.enabled:
        raise NatkitError(
            "nothing to serve: stun.enabled is false (the builtin TURN engine "
            "shares the STUN listeners)"
        )
    plan_listeners(config.stun, config.source)
    if any(uri.transport is Transport.TLS for uri in config.stun.listen):
        make_ssl_context(config.stun.tls, config.source)
    if config.turn.enabled:
        from natkit.turn.engine import build_relay

        build_relay(config)  # the relay IP, the port range, credentials: checked once, here
    if config.cluster.redis is not None:
        _cluster_preflight(config)


def _cluster_preflight(config: Config) -> None:
    try:
        import redis  # noqa: F401
    except ImportError:
        raise NatkitError(
            "cluster.redis needs the Redis client: pip install 'natkit[cluster]' (redis-py)"
        ) from None


def warn_ignored(config: Config) -> None:
    """One warning line naming the keys the configured engine does not use."""
    keys = ignored_keys(config)
    if keys:
        log.warning("%s", ignored_message(keys))


async def _run(config: Config, out: TextIO) -> None:
    config = resolve_pump(config)  # the pump's library built once, before the workers load it
    fast = start_fast_path(config)  # before anything binds: in kernel mode a failure stops here
    try:
        await _serve(config, out, fast)
    finally:
        if fast is not None:
            fast.close()  # last: the workers answered up to their end, the kernel alongside


async def _serve(config: Config, out: TextIO, fast: KernelFastPath | None) -> None:
    loop = asyncio.get_running_loop()
    count = resolve_workers(config.stun.workers)
    counters = SharedCounters(count)
    programs = () if fast is None else tuple(a.prog_id for a in fast.attachments)
    supervisor = Supervisor(config, count, counters.array, kernel_programs=programs)
    metrics: MetricsServer | None = None
    rendezvous: SignalServer | None = None
    checker: CheckServer | None = None

    def scrape() -> str:
        kernel = fast.counters() if fast is not None else None
        text = render(counters.totals(), supervisor.live(), kernel)
        text += render_signal(rendezvous.stats) if rendezvous is not None else ""
        return text + (render_check(checker.stats) if checker is not None else "")

    readiness = {"ready": False}  # listeners bound and not draining (/readyz)

    def ready() -> bool:
        fleet_ok = cluster_ready(counters.totals(), config.cluster.fail_open)[0]
        return readiness["ready"] and bool(supervisor.live()) and fleet_ok

    def detail() -> str:
        return cluster_ready(counters.totals(), config.cluster.fail_open)[1]

    if config.metrics.listen:
        metrics = MetricsServer(config.metrics.listen, scrape, ready, detail)
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
    loop.add_signal_handler(signal.SIGHUP, _reload, state, supervisor, fast)
    try:
        await supervisor.start()
        # The rendezvous keeps pairings in memory: one instance, in the supervisor, not per worker.
        if config.signal.enabled:
            rendezvous = serve_signal(config.signal)
            await rendezvous.start()
        # The browser check page keeps its tests in memory too: one instance, here.
        if config.check.enabled:
            checker = CheckServer(config)
            await checker.start()
        plural = "worker" if count == 1 else "workers"
        served = "STUN + TURN" if config.turn.enabled else "STUN"
        for uri in config.stun.listen:
            print(f"listening {uri} ({served}, {count} {plural})", file=out, flush=True)
        if rendezvous is not None:
            print(f"signal {rendezvous.url}", file=out, flush=True)
        if checker is not None:
            print(f"check {checker.url}", file=out, flush=True)
        if metrics is not None:
            print(f"metrics http://{config.metrics.listen}/metrics", file=out, flush=True)
        readiness["ready"] = True
        await stop.wait()
        readiness["ready"] = False
        log.info("stopping: draining workers")
    finally:
        if checker is not None:
            await checker.stop()
        if rendezvous is not None:
            await rendezvous.stop()
        # Workers drain TURN for up to turn.drain_timeout, then their streams for 2 s.
        drain = config.turn.drain_timeout + 5.0 if config.turn.enabled else 5.0
        await supervisor.stop(timeout=drain)
        if metrics is not None:
            await metrics.close()


def _reload(
    state: dict[str, Config], supervisor: Supervisor, fast: KernelFastPath | None = None
) -> None:
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
    # Compared with what runs (not with the last file read): a change stays "to apply" until a
    # restart, however many SIGHUPs follow.
    changed = [k for k in _RESTART_ONLY if getattr(new.stun, k) != getattr(old.stun, k)]
    changed += [
        k
        for k in ("turn", "signal", "check", "metrics", "cluster")
        if getattr(new, k) != getattr(old, k)
    ]
    if changed:
        log.warning("SIGHUP: %s changed; restart natkit serve to apply", ", ".join(changed))
    state["config"] = supervisor.reload(new)
    if fast is not None:
        limit = new.stun.rate_limit
        fast.set_rate((limit.per_source, limit.burst) if limit.enabled else None)
    log.info("SIGHUP: reloaded rate limits, logging and TLS certificates from %s", new.source)
