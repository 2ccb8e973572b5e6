"""A fork server in a lab node: Python starts once there, and each `natkit` command is forked.

Why: the NAT matrix starts some 400 `natkit` processes (p2p offer and answer, diagnose), and each
spent 0.8 s of CPU importing aiortc, aioice and natkit before it did anything: 330 of the 440
CPU-seconds of `matrix-extended` on 2 cores (measured with /usr/bin/time). A fork server imports
them once per node; a command forked from it runs `natkit.cli` as `python -m natkit` would, in
the node's network namespace, with its own stdin/stdout/stderr, exit status and signals.

Theory of operation. `start(lab, node)` binds a listening SOCK_SEQPACKET unix socket under an
abstract name (in this process's namespace), hands it to `python -m natkit.lab.forkserver` started
with `lab.spawn` (so `Lab.stop()` ends it) and closes its own copy: a server that died leaves
no socket to connect to. Each `ForkServer.spawn` is one connection:

    client -> server   {"args": [...]} with SCM_RIGHTS (stdin, stdout, stderr)
    server -> client   {"pid": N}, and when the child is reaped {"status": S} (Popen's
                       returncode: -N for a signal)
    client -> server   {"signal": N}: the server signals the child unless it reaped it (the
                       server holds the zombie, so a pid is never reused under it)

Only the process that started the server may connect (SO_PEERCRED): any local user can read an
abstract name in /proc/net/unix, and the server runs commands as root in the node.
A closed connection kills its child (the client is gone). SIGTERM to the server sends SIGTERM to
every child, SIGKILL after `_CHILD_GRACE`, reports what it reaped, and exits; children carry
PR_SET_PDEATHSIG(SIGKILL), so a server killed outright takes them along. The server ignores
SIGINT and SIGHUP: a terminal's signal reaches its children (same process group) and the server
reports how they ended.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import importlib
import json
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from natkit.lab.lab import Lab

__all__ = ["DEFAULT_PRELOAD", "ForkServer", "Forked", "start"]

# What the matrix's commands import when they run (their CLI modules import lazily).
DEFAULT_PRELOAD = (
    "natkit.cli",
    "natkit.cli.p2p_cmd",
    "natkit.cli.diagnose_cmd",
    "natkit.p2p.session",
    "natkit.diag.runner",
    "natkit.diag.report",
)
_MESSAGE_MAX = 1 << 16  # one request: argv of a command line
_CHILD_GRACE = 0.5  # s between SIGTERM and SIGKILL at shutdown (Lab.stop waits 1 s)
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME, _NAME_MAX = 15, 15  # /proc/PID/comm: 15 bytes and a NUL
_UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid
_HANDLED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}


class ForkServer:
    """The client side: one server process in one node."""

    def __init__(self, address: str, process: subprocess.Popen[Any], node: str) -> None:
        self.address, self.process, self.node = address, process, node

    def spawn(
        self,
        args: list[str],
        *,
        stdout: int | None = None,
        stderr: int | None = None,
        text: bool = True,
    ) -> Forked:
        """Fork `natkit *args` in the node. `stdout`/`stderr`: subprocess.PIPE, DEVNULL or None
        (this process's own); stdin is /dev/null."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        opened: list[int] = []
        readers: list[IO[Any] | None] = []
        try:
            conn.connect(self.address)
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            opened.append(null)
            targets = [null]
            for choice, own in ((stdout, 1), (stderr, 2)):
                if choice == subprocess.PIPE:
                    read_end, write_end = os.pipe2(os.O_CLOEXEC)
                    opened.append(write_end)
                    reader = open(read_end, encoding="utf-8") if text else open(read_end, "rb")  # noqa: SIM115
                    readers.append(reader)
                    targets.append(write_end)
                else:
                    readers.append(None)
                    targets.append(null if choice == subprocess.DEVNULL else own)
            socket.send_fds(conn, [json.dumps({"args": args}).encode()], targets)
            reply = _recv(conn, timeout=60.0)
            if not isinstance(reply, dict) or "pid" not in reply:
                raise OSError(f"fork server in node {self.node} did not start {args[:1]}")
        except BaseException:
            conn.close()
            for stream in readers:
                if stream is not None:
                    stream.close()
            raise
        finally:
            for fd in opened:
                os.close(fd)  # the child holds its copies: EOF comes when it ends
        return Forked(["natkit", *args], int(reply["pid"]), conn, readers[0], readers[1])

    def close(self) -> None:
        """Stop the server (its children with it)."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(2.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Forked:
    """A command forked by a `ForkServer`: the part of `subprocess.Popen` the matrix uses."""

    def __init__(
        self,
        args: list[str],
        pid: int,
        conn: socket.socket,
        stdout: IO[Any] | None,
        stderr: IO[Any] | None,
    ) -> None:
        self.args, self.pid, self._conn = args, pid, conn
        self.stdout, self.stderr = stdout, stderr
        self.returncode: int | None = None
        self._readers: list[tuple[threading.Thread, list[Any]]] = []
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        if not self._lock.acquire(blocking=False):  # another thread waits: it takes the status
            return self.returncode
        try:
            if self.returncode is None:
                self._take_status(0.0)
            return self.returncode
        finally:
            self._lock.release()

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self.returncode is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
                self._take_status(left)
            return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(OSError):
                self._conn.send(json.dumps({"signal": int(signum)}).encode())

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: None = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Read stdout and stderr to their end and wait for the exit status (no stdin)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._readers:
            for stream in (self.stdout, self.stderr):
                box: list[Any] = []
                reader = threading.Thread(target=_read_all, args=(stream, box), daemon=True)
                reader.start()
                self._readers.append((reader, box))
        for reader, _ in self._readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self._readers[0][1][0], self._readers[1][1][0]

    def _take_status(self, timeout: float | None) -> None:
        message = _recv(self._conn, timeout)
        if message is _CLOSED:  # the server is gone: so is the child (PDEATHSIG)
            self.returncode = -signal.SIGKILL
        elif isinstance(message, dict) and "status" in message:
            self.returncode = int(message["status"])
        if self.returncode is not None:
            self._conn.close()


def start(lab: Lab, node: str, preload: tuple[str, ...] = DEFAULT_PRELOAD) -> ForkServer:
    """Start a fork server in `node` (it imports `preload` while the first requests queue)."""
    address = f"\0natkit-fork-{secrets.token_hex(8)}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        listener.bind(address)
        listener.listen(64)
        argv = [sys.executable, "-m", "natkit.lab.forkserver", "--fd", str(listener.fileno())]
        process = lab.spawn(
            node,
            [*argv, *preload],
            pass_fds=(listener.fileno(),),
            stdin=subprocess.DEVNULL,
        )
    finally:
        listener.close()
    return ForkServer(address, process, node)


_CLOSED = object()


def _recv(conn: socket.socket, timeout: float | None) -> Any:
    """One JSON message; `_CLOSED` at the end of the connection; None if none came in time."""
    ready, _, _ = select.select([conn], [], [], timeout)
    if not ready:
        return None
    try:
        data = conn.recv(_MESSAGE_MAX)
    except OSError:
        return _CLOSED
    if not data:
        return _CLOSED
    try:
        return json.loads(data)
    except ValueError:
        return None


def _read_all(stream: IO[Any] | None, box: list[Any]) -> None:
    if stream is None:
        box.append(None)
        return
    with stream:
        box.append(stream.read())


# -- the server (python -m natkit.lab.forkserver --fd N module...) ----------------------------


class _Server:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.children: dict[int, socket.socket] = {}  # pid -> its client's connection
        self.clients: dict[socket.socket, int | None] = {}  # connection -> pid (None: no child)
        self.stopping = False
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd is the point
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        while not self.stopping:
            ready, _, _ = select.select([self.listener, self.wake_r, *self.clients], [], [])
            for sock in ready:
                if sock is self.listener:
                    self._accept()
                elif sock is self.wake_r:
                    with contextlib.suppress(OSError):
                        self.wake_r.recv(4096)
                else:
                    self._request(sock)
            self._reap()
        self._shutdown()

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except OSError:
            return
        pid, _, _ = _UCRED.unpack(creds)
        if pid != os.getppid():  # an abstract name is no secret (/proc/net/unix), a pid is
            conn.close()
            return
        self.clients[conn] = None

    def _request(self, conn: socket.socket) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(conn, _MESSAGE_MAX, 3)
        except OSError:
            data, fds = b"", []
        pid = self.clients.get(conn)
        if not data:  # the client is gone: its child has no one to report to
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._drop(conn)
            return
        try:
            message = json.loads(data)
        except ValueError:
            message = {}
        if pid is None and len(fds) == 3 and isinstance(message.get("args"), list):
            pid = self._fork([str(a) for a in message["args"]], fds)
            self.clients[conn] = pid
            self.children[pid] = conn
            _send(conn, {"pid": pid})
        elif pid is not None and isinstance(message.get("signal"), int):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, message["signal"])  # not reaped yet: still our child's pid
        for fd in fds:
            os.close(fd)

    def _fork(self, args: list[str], fds: list[int]) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across fork: a SIGTERM before the child drops the server's handlers would
        # reach the server's `_stop` in the child, and the command would not end until SIGKILL.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        pid = os.fork()
        if pid == 0:
            try:
                self._become_child(args, fds)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                _run_cli(args)
            finally:
                os._exit(70)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return pid

    def _become_child(self, args: list[str], fds: list[int]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the server died before prctl took effect
            os._exit(70)
        # Its argv is the server's: the name is what ps, top and pgrep show of the command.
        name = ctypes.create_string_buffer(" ".join(args).encode()[:_NAME_MAX])
        libc.prctl(_PR_SET_NAME, name, 0, 0, 0)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sock in (self.listener, self.wake_r, self.wake_w, *self.clients):
            sock.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                _send(conn, {"status": os.waitstatus_to_exitcode(status)})
                self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self.clients.pop(conn, None)
        conn.close()

    def _shutdown(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _CHILD_GRACE
        while self.children and time.monotonic() < deadline:
            time.sleep(0.02)
            self._reap()
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children:
            time.sleep(0.01)
            self._reap()


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.send(json.dumps(message).encode())


def _run_cli(args: list[str]) -> None:
    """In the child: `natkit *args` as `python -m natkit` runs it, then exit with its status."""
    sys.argv = ["natkit", *args]
    code: int = 0
    try:
        from natkit.cli import cli

        cli.main(args=args, prog_name="natkit")
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:
            print(done.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # as Python itself ends on one: killed by SIGINT
        _exit_hooks()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    _exit_hooks()
    os._exit(code)


def _exit_hooks() -> None:
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m natkit.lab.forkserver")
    parser.add_argument("--fd", type=int, required=True, help="listening socket (inherited)")
    parser.add_argument("preload", nargs="*", help="modules to import before serving")
    options = parser.parse_args(argv)
    listener = socket.socket(fileno=options.fd)
    for name in options.preload:
        importlib.import_module(name)
    _Server(listener).serve()


if __name__ == "__main__":
    main()
