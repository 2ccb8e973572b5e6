"""The labs this process owns, and SIGTERM / SIGHUP removing them exactly as Ctrl-C does.

Theory of operation. Python turns SIGINT into KeyboardInterrupt, so `with Lab.up(...)`, a failed
`up()` and the pytest fixtures unwind and remove their labs on Ctrl-C. SIGTERM and SIGHUP (what CI
timeouts and cancels, `timeout(1)`, systemd and a closed terminal send) kill a Python process
without unwinding, and every namespace stays behind until `natkit lab gc`.

So while this process owns a lab (it is building one, or holds a non-persistent one), `own()`
installs a handler for both signals that raises `Interrupted` — a KeyboardInterrupt carrying the
signal number — in the main thread: the same unwinding as Ctrl-C, through the same `finally`
blocks. When the last owned lab is gone (`disown()`) the previous handler is back, so natkit used
as a library changes nothing for good. It replaces only the *default* action: a handler the
application installed itself (or SIG_IGN) is left alone, because the application has its own plan
for those signals (asyncio's `add_signal_handler`, a server's graceful stop).

A persistent lab (`natkit lab up`) is owned only while it is being built: once `up` returns it
belongs to no process, and a later SIGTERM to some other natkit process does not touch it.

Removal runs inside `deferred()`: a second SIGTERM (CI often sends several) is held until the
teardown is done, then raised, so it cannot cut a teardown in half. An owned lab that nobody
removed (no `with`, no `down()`) is removed at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from natkit.errors import Interrupted

__all__ = ["SIGNALS", "deferred", "disown", "own", "owned", "received"]

SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""The signals that unwind like Ctrl-C while a lab is owned (SIGINT already does)."""

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

_lock = threading.RLock()
_owned: dict[str, tuple[int, Callable[[], None]]] = {}  # lab name → (owner pid, its removal)
_previous: dict[int, _Handler] = {}  # signals whose handler is ours → what it replaced
_deferring = 0
_pending: int | None = None
_received: int | None = None


def own(name: str, remove: Callable[[], None]) -> None:
    """Lab `name` is this process's until `disown(name)`; `remove()` removes it at exit."""
    with _lock:
        _owned[name] = (os.getpid(), remove)
        _install()


def disown(name: str) -> None:
    """Lab `name` is gone (or persistent): restore the handlers once no lab is owned."""
    with _lock:
        _owned.pop(name, None)
        if not _owned:
            _restore()


def owned() -> list[str]:
    """Names of the labs this process owns."""
    with _lock:
        return list(_owned)


def received() -> int | None:
    """The signal that interrupted this process while it owned labs (None if none did)."""
    return _received


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGTERM / SIGHUP during a teardown; raise the held one (as `Interrupted`) after."""
    global _deferring, _pending
    with _lock:
        _deferring += 1
    try:
        yield
    finally:
        with _lock:
            _deferring -= 1
            signum, _pending = (_pending, None) if _deferring == 0 else (None, _pending)
        if signum is not None:
            if threading.current_thread() is threading.main_thread():
                raise Interrupted(signum)
            os.kill(os.getpid(), signum)  # unwind the main thread, where the handler runs


def _main_thread() -> bool:
    # signal.signal() works only there; labs owned from other threads rely on the main thread's
    # own unwinding (as for Ctrl-C, which Python also delivers to the main thread only).
    return threading.current_thread() is threading.main_thread()


def _install() -> None:
    if not _main_thread():
        return
    for signum in SIGNALS:
        if signum in _previous:
            continue
        current = signal.getsignal(signum)
        if current is signal.SIG_DFL:
            _previous[signum] = current
            signal.signal(signum, _handle)


def _restore() -> None:
    if not _main_thread():
        return  # `_handle` with nothing owned acts as the previous (default) action
    for signum, previous in list(_previous.items()):
        if signal.getsignal(signum) is _handle:  # not if the application replaced it since
            signal.signal(signum, previous)
        del _previous[signum]


def _handle(signum: int, frame: FrameType | None) -> None:
    global _pending, _received
    with _lock:
        if _deferring:
            _pending = signum
            return
        if not _owned and _received is None:
            # Nothing of ours to remove (the last lab went from another thread): the default.
            signal.signal(signum, _previous.pop(signum, signal.SIG_DFL))
            os.kill(os.getpid(), signum)
            return
        _received = signum
    raise Interrupted(signum)


@atexit.register
def _remove_leftovers() -> None:
    with _lock:
        # A forked child that exits normally must not remove its parent's labs.
        removals = [remove for pid, remove in _owned.values() if pid == os.getpid()]
    for remove in removals:
        with contextlib.suppress(Exception):
            remove()
