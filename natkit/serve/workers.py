"""Worker processes sharing the STUN ports (SO_REUSEPORT) and the supervisor that keeps them alive.

Theory of operation. The supervisor (the `natkit serve` process) binds every listening
socket once per worker (one SO_REUSEPORT group per address, its first member bound exclusively so
that a port anyone else holds is an error: `natkit.net.sockets.bind_worker_sockets`) and spawns
`stun.workers` processes, handing each its own sockets; the kernel spreads flows over workers
without a shared accept lock, and each runs its own event loop (uvloop when installed). A duplex
pipe joins each worker to the supervisor: the worker reports ``("ready", pid)`` or
``("error", text)`` once; the supervisor sends ``("reload", Config)`` on SIGHUP. Workers never
outlive the supervisor: PR_SET_PDEATHSIG delivers SIGTERM when it dies, and EOF on the pipe (the
kernel closes it with the supervisor) stops them even where prctl is unavailable.

The running config. A SIGHUP applies only the live parts (`stun.rate_limit`, `logging`); the rest
of a new file waits for a restart. The supervisor therefore keeps `running`: the config the
workers were started with, with the live parts of the latest reload folded in. A respawned
worker gets exactly that, never the staged file: otherwise one crashed worker would come back
with a new peer policy while its siblings keep the old one (issue 11 #9).

`spawn` rather than `fork`: the supervisor runs an event loop, and forking a process with a live
loop (and its selector, signal wake-up fd, metrics server) into a restarted worker is a known
source of subtle bugs. A spawned worker imports only what it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from natkit import logs
from natkit.addr import Transport
from natkit.config.model import Config
from natkit.errors import NatkitError

__all__ = ["Supervisor", "live_applied", "resolve_workers", "worker_main"]

log = logging.getLogger("natkit.serve.workers")

_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT = 20.0  # seconds a worker may take to import, bind and report
_FLUSH_INTERVAL = 0.5  # seconds between copies of the counters into shared memory


def resolve_workers(workers: int | str) -> int:
    return max(1, os.cpu_count() or 1) if workers == "auto" else max(1, int(workers))


def _die_with_parent(parent_pid: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(0)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def live_applied(running: Config, new: Config) -> Config:
    """`running` with the parts of `new` that a SIGHUP applies live (rate limits, logging)."""
    stun = dataclasses.replace(running.stun, rate_limit=new.stun.rate_limit)
    return dataclasses.replace(running, stun=stun, logging=new.logging)


def worker_main(
    index: int,
    config: Config,
    array: Any,
    conn: Connection,
    parent_pid: int,
    sockets: list[socket.socket] | None = None,
    nonce_key: bytes | None = None,
    quota: Any = None,
    kernel_programs: tuple[int, ...] = (),
) -> None:
    """Entry point of a worker process (runs in the spawned child); `sockets` are the listening
    sockets the supervisor bound for it (None: bind them here); `nonce_key` is the TURN nonce
    key every worker shares, `quota` the server-wide TURN quota table
    (`natkit.turn.shared_quota.SharedQuota`)."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which drains us
    logs.setup(config.logging.level, config.logging.format, role=f"worker-{index}")
    from natkit.metrics import WorkerCounters
    from natkit.net.listeners import Listeners
    from natkit.net.sockets import make_ssl_context
    from natkit.serve.routing import create_engine, dispatcher_for

    counters = WorkerCounters(array, index)
    try:
        tls = any(u.transport is Transport.TLS for u in config.stun.listen)
        ctx = make_ssl_context(config.stun.tls, config.source) if tls else None
        # Each worker relays for the clients the kernel hashes to it (SO_REUSEPORT keeps a
        # 5-tuple on one worker), so each has its own TURN engine.
        turn = create_engine(
            config,
            counters.values,
            nonce_key=nonce_key,
            worker=index,
            quota=quota,
            kernel_programs=kernel_programs,
        )
        dispatch = dispatcher_for(config.stun, turn)
        server = Listeners(config.stun, counters, dispatch, reuse_port=True, ssl_context=ctx)
        server.bind(sockets)
    except NatkitError as err:
        conn.send(("error", str(err)))
        sys.exit(3)
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(_worker_loop(index, server, turn, counters, conn, ctx))


async def _worker_loop(
    index: int, server: Any, turn: Any, counters: Any, conn: Connection, ctx: Any = None
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def on_message() -> None:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):  # the supervisor is gone: never serve unsupervised
            loop.remove_reader(conn.fileno())
            stop.set()
            return
        if kind == "reload":
            new: Config = payload
            logs.setup(new.logging.level, new.logging.format)
            server.reconfigure(new.stun.rate_limit)
            log.info("reloaded rate limits and logging")
            if ctx is not None:  # SIGHUP after a certificate renewal: new handshakes use it
                _reload_tls(ctx, new)

    loop.add_reader(conn.fileno(), on_message)
    if turn is not None:
        await turn.start()
    await server.start()
    # Everything allocated so far lives as long as the worker: keep it out of every GC pass.
    gc.collect()
    gc.freeze()
    conn.send(("ready", os.getpid()))
    log.debug("worker %d serving", index)
    sync_gauges = None if turn is None else turn.sync_gauges  # TURN gauges (natkit.metrics)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _FLUSH_INTERVAL)
        if sync_gauges is not None:
            sync_gauges()
        counters.flush()
    if turn is not None:
        await _drain_turn(turn, counters, sync_gauges)
    await server.close(drain=2.0)
    if turn is not None:
        await turn.close()
    counters.flush()


def _turn_quota(config: Config, count: int) -> Any:
    if not config.turn.enabled or config.turn.engine != "builtin":
        return None
    from natkit.turn.shared_quota import SharedQuota, table_slots

    quota = config.turn.quota
    return SharedQuota(count, table_slots(quota.total), quota.per_user, quota.total)


def _reload_tls(ctx: Any, config: Config) -> None:
    from natkit.net.sockets import reload_certificate

    try:
        reload_certificate(ctx, config.stun.tls, config.source)
    except NatkitError as err:
        log.error("SIGHUP: TLS certificate not reloaded, keeping the one served: %s", err)
        return
    log.info("reloaded the TLS certificate %s", config.stun.tls.cert)


async def _drain_turn(turn: Any, counters: Any, sync: Any) -> None:
    """TURN's graceful drain (`BuiltinTurn.drain`, up to turn.drain_timeout) before the
    listeners close, metrics still flushed meanwhile."""
    task = asyncio.ensure_future(turn.drain(elsewhere=counters.turn_allocations_total))
    while not task.done():
        await asyncio.wait({task}, timeout=_FLUSH_INTERVAL)
        if sync is not None:
            sync()
        counters.flush()
    task.result()


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: BaseProcess | None = None
        self.conn: Connection | None = None
        self.ready: asyncio.Future[str] | None = None
        self.crashes: list[float] = []


class Supervisor:
    """Starts, watches, restarts, reloads and stops the worker processes."""

    def __init__(
        self,
        config: Config,
        count: int,
        array: Any,
        on_change: Callable[[], None] | None = None,
        kernel_programs: tuple[int, ...] = (),
    ) -> None:
        self.running = config
        self.kernel_programs = kernel_programs
        """The kernel fast path's programs (`natkit.fastpath`): TURN workers install their
        channels in their maps."""
        # One TURN nonce key for every worker, for the supervisor's lifetime: the kernel spreads
        # a client's 5-tuples over the workers (SO_REUSEPORT), and a nonce one worker issued must
        # verify on another (else a 438 and a wasted round trip per worker change, or per
        # respawn).
        self.nonce_key = secrets.token_bytes(32)
        """What a (re)spawned worker runs: the start config + live reloads (`live_applied`)."""
        self.array = array
        self.quota = _turn_quota(config, count)
        """TURN quotas shared by every worker (None: no builtin TURN); a dead worker's share is
        zeroed before it is respawned."""
        self._workers = [_Worker(i) for i in range(count)]
        self._sockets: list[list[socket.socket]] = []
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = False
        self._on_change = on_change

    def live(self) -> list[tuple[int, int]]:
        """(index, pid) of workers currently running."""
        return [
            (w.index, w.proc.pid)
            for w in self._workers
            if w.proc is not None and w.proc.pid is not None and w.proc.is_alive()
        ]

    async def start(self) -> None:
        """Bind every listener, spawn every worker and wait until all serve; NatkitError (and
        nothing left) otherwise."""
        from natkit.net.sockets import bind_worker_sockets

        self._sockets = bind_worker_sockets(self.running.stun, len(self._workers))
        for worker in self._workers:
            self._spawn(worker)
        readies = [w.ready for w in self._workers if w.ready is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*readies), _READY_TIMEOUT)
        except BaseException as err:
            await self.stop()
            if isinstance(err, TimeoutError):
                raise NatkitError(f"workers did not start within {_READY_TIMEOUT:.0f} s") from None
            raise

    def _spawn(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main,
            name=f"natkit-worker-{worker.index}",
            daemon=True,
            # The sockets travel as fds (multiprocessing passes them to the spawned child); the
            # supervisor keeps its copies, so a worker's crash never unbinds its share.
            args=(
                worker.index,
                self.running,
                self.array,
                child_conn,
                os.getpid(),
                self._sockets[worker.index] if self._sockets else None,
                self.nonce_key,
                self.quota,
                self.kernel_programs,
            ),
        )
        proc.start()
        child_conn.close()
        worker.proc, worker.conn, worker.ready = proc, parent_conn, loop.create_future()
        loop.add_reader(parent_conn.fileno(), self._on_message, worker)
        loop.add_reader(proc.sentinel, self._on_exit, worker)

    def _on_message(self, worker: _Worker) -> None:
        assert worker.conn is not None and worker.ready is not None
        try:
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(worker.conn.fileno())
            return
        if worker.ready.done():
            return
        if kind == "ready":
            worker.ready.set_result(str(payload))
            if self._on_change is not None:
                self._on_change()
        else:
            worker.ready.set_exception(NatkitError(str(payload)))

    def _on_exit(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        assert worker.proc is not None and worker.conn is not None
        loop.remove_reader(worker.proc.sentinel)
        with contextlib.suppress(OSError, EOFError):
            if worker.conn.poll():  # its last words ("error", ...) may still be in the pipe
                self._on_message(worker)
        with contextlib.suppress(Exception):
            loop.remove_reader(worker.conn.fileno())
        worker.proc.join(0)
        code = worker.proc.exitcode
        worker.conn.close()
        if self.kernel_programs and worker.proc.pid is not None:
            _purge_kernel_entries(self.kernel_programs, worker.proc.pid)
        if worker.ready is not None and not worker.ready.done():
            if self._stopping:
                worker.ready.cancel()
            else:
                worker.ready.set_exception(
                    NatkitError(f"worker {worker.index} exited with status {code} while starting")
                )
        if self._stopping:
            return
        now = time.monotonic()
        worker.crashes = [t for t in worker.crashes if now - t < 60.0] + [now]
        # Back off when a worker keeps dying: a crash loop must not eat the CPU it shares.
        delay = min(0.1 * 2 ** (len(worker.crashes) - 1), 10.0)
        log.error(
            "worker %d (pid %s) exited with status %s; restarting in %.1f s",
            worker.index,
            worker.proc.pid,
            code,
            delay,
        )
        worker.proc = None
        if self.quota is not None:  # its allocations died with it (and their relay sockets)
            freed = self.quota.release_worker(worker.index)
            if freed:
                log.warning("worker %d: released its %d TURN allocation(s)", worker.index, freed)
        loop.call_later(delay, self._respawn, worker)

    def _respawn(self, worker: _Worker) -> None:
        if not self._stopping:
            self._spawn(worker)

    def reload(self, config: Config) -> Config:
        """Apply the live parts of `config` (rate limits, logging) to every worker and to
        `running`, which it returns; the rest waits for a restart."""
        self.running = live_applied(self.running, config)
        for worker in self._workers:
            if worker.conn is not None and not worker.conn.closed:
                with contextlib.suppress(OSError):
                    worker.conn.send(("reload", self.running))
        return self.running

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every worker (they drain), SIGKILL whoever is still there after `timeout`."""
        self._stopping = True
        procs = [w.proc for w in self._workers if w.proc is not None]
        for proc in procs:
            if proc.is_alive():
                with contextlib.suppress(OSError):
                    proc.terminate()
        deadline = time.monotonic() + timeout
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for proc in procs:
            if proc.is_alive():
                log.warning("worker pid %s did not drain in %.0f s; killing it", proc.pid, timeout)
                proc.kill()
            proc.join(1.0)
        for socks in self._sockets:
            for sock in socks:
                sock.close()
        self._sockets = []


def _purge_kernel_entries(programs: tuple[int, ...], pid: int) -> None:
    """A TURN worker ended: the kernel fast path forgets the channels it installed (its relay
    sockets died with it, and their ports may serve other allocations next)."""
    from natkit.fastpath.bpf import BpfError
    from natkit.fastpath.relay import KernelRelay

    try:
        kernel = KernelRelay(programs)
    except (BpfError, KeyError):
        return  # the fast path is going away too (shutdown)
    try:
        removed = kernel.purge(pid)
    except BpfError as err:
        log.warning("kernel fast path: the entries of worker pid %d could not be removed: %s",
                    pid, err)  # fmt: skip
        return
    finally:
        kernel.close()
    if removed:
        log.info("kernel fast path: removed %d channel entries of worker pid %d", removed, pid)
