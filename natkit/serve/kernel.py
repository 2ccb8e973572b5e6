"""``stun.fast_path``: the kernel fast path (`natkit.fastpath`) for serve's UDP listeners, and
``turn.pump``: the relay pump's library (`natkit.turn.pump`), both settled by the supervisor.

The supervisor attaches the kernel program before the workers bind (a failure in ``kernel`` mode
stops serve before anything runs) and detaches it last; every UDP listener socket gets the
suffix its own `BindingHandler` would answer with, so the two paths are indistinguishable on
the wire. It builds the pump's library once, before the workers load it; where it cannot, it
says why in one line and the workers start with ``turn.pump: off`` (one line, not one each).
"""

from __future__ import annotations

import dataclasses
import logging

from natkit.addr import Transport
from natkit.config.model import Config
from natkit.errors import NatkitError
from natkit.fastpath import FastPathError, KernelFastPath, Listener
from natkit.net.sockets import plan_listeners
from natkit.stun.binding import BindingHandler
from natkit.turn import pump

__all__ = ["resolve_pump", "start_fast_path"]

log = logging.getLogger("natkit.serve")


def kernel_listeners(config: Config) -> list[Listener]:
    """Every UDP listener socket with a port of its own, and its plain answer's suffix."""
    found = []
    for plan in plan_listeners(config.stun, config.source):
        if plan.uri.transport is not Transport.UDP:
            continue
        handler = BindingHandler(
            primary=plan.primary, alternate=plan.alternate, software=config.stun.software
        )
        for local in plan.addresses:
            if local.port:  # port 0: the kernel learns no port before the workers bind
                found.append(Listener(local, handler.plain_suffix(local)))
    return found


def start_fast_path(config: Config) -> KernelFastPath | None:
    """The attached fast path, or None (off, or auto where it cannot load). NatkitError in
    kernel mode when it cannot load."""
    mode = config.stun.fast_path
    if mode == "off":
        return None
    limit = config.stun.rate_limit
    rate = (limit.per_source, limit.burst) if limit.enabled else None
    try:
        fast = KernelFastPath.start(kernel_listeners(config), rate)
    except FastPathError as err:
        if mode == "kernel":
            raise NatkitError(f"stun.fast_path: kernel: {err}") from None
        log.warning("stun.fast_path: auto: serving from user space only: %s", err)
        return None
    where = ", ".join(f"{a.device}" for a in fast.attachments)
    log.info("kernel fast path: plain UDP Binding requests answered in tc-BPF on %s", where)
    return fast


def resolve_pump(config: Config) -> Config:
    """`config` for the workers: ``turn.pump: auto`` stays when the pump's library builds and
    loads here (built now if needed, so workers only load it), else becomes off, said once."""
    turn = config.turn
    if not turn.enabled or turn.engine != "builtin" or turn.pump != "auto":
        return config
    try:
        pump.load()
    except pump.PumpUnavailable as err:
        log.warning(pump.FALLBACK, err)
        return dataclasses.replace(config, turn=dataclasses.replace(turn, pump="off"))
    return config
