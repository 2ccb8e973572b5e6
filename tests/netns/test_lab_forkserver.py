"""The lab's fork server (`natkit.lab.forkserver`): a `natkit` command forked from it behaves as
`python -m natkit` started in the node would — its namespace, exit status, output, signals — and
nothing it started outlives the server or the lab (needs root)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from natkit.lab import Lab, forkserver
from natkit.lab.netlink import alive
from tests.netns.fleet import wait_for
from tests.netns.test_lab_lifecycle import new_leftovers

pytestmark = pytest.mark.netns
# A STUN server address in the lab where nothing listens: diagnose waits out its --timeout.
SILENT = "203.0.113.10:3999"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.up("pair-full-cone") as lab:
        yield lab


@pytest.fixture
def fork(lab: Lab) -> Iterator[forkserver.ForkServer]:
    server = forkserver.start(lab, "alice")
    yield server
    server.close()


def _waiting(fork: forkserver.ForkServer, seconds: int = 20) -> forkserver.Forked:
    """A command that runs `seconds` unless signalled: diagnose against a silent server."""
    return fork.spawn(
        ["diagnose", "--stun", SILENT, "--json", "--timeout", str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _gone(pid: int) -> None:
    wait_for(lambda: not alive(pid), 5.0, 0.02)


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as comm:
        return comm.read().strip()


def test_output_and_exit_status_are_the_commands(fork: forkserver.ForkServer) -> None:
    version = fork.spawn(["--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = version.communicate(timeout=30)
    assert (version.returncode, err) == (0, "")
    assert out.startswith("natkit")

    wrong = fork.spawn(
        ["config", "check", "-c", "/nonexistent.yaml"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = wrong.communicate(timeout=30)
    assert wrong.returncode == 2  # natkit's bad-input status, one line, no traceback
    assert "/nonexistent.yaml" in err and "Traceback" not in err


def test_command_runs_in_the_nodes_namespace_under_its_name(
    lab: Lab, fork: forkserver.ForkServer
) -> None:
    child = _waiting(fork)
    try:
        node_ns = os.stat(f"/run/netns/{lab.netns('alice')}").st_ino
        assert os.stat(f"/proc/{child.pid}/ns/net").st_ino == node_ns
        assert os.stat("/proc/self/ns/net").st_ino != node_ns
        # What ps shows: the command, not the server (once the child has named itself).
        wait_for(lambda: _comm(child.pid) == "diagnose --stun", 5.0, 0.01)
    finally:
        child.kill()
        assert child.wait(10) == -signal.SIGKILL


def test_signals_reach_the_command(fork: forkserver.ForkServer) -> None:
    child = _waiting(fork)
    time.sleep(1.0)  # past its imports: SIGTERM now ends it as it would a started natkit
    child.terminate()
    assert child.wait(10) == -signal.SIGTERM
    assert child.poll() == -signal.SIGTERM
    with pytest.raises(subprocess.TimeoutExpired):
        _waiting(fork).communicate(timeout=0.5)


def test_closed_client_connection_kills_its_command(fork: forkserver.ForkServer) -> None:
    child = _waiting(fork)
    child._conn.close()  # the client died without a word
    _gone(child.pid)


def test_server_stop_ends_every_command(fork: forkserver.ForkServer) -> None:
    children = [_waiting(fork) for _ in range(3)]
    fork.close()
    assert fork.process.returncode == 0
    assert [c.wait(5) for c in children] == [-signal.SIGTERM] * 3
    for c in children:
        _gone(c.pid)


def test_server_killed_outright_takes_its_commands(fork: forkserver.ForkServer) -> None:
    child = _waiting(fork)
    fork.process.kill()
    fork.process.wait()
    assert child.wait(5) == -signal.SIGKILL  # the connection closed: reported as killed
    _gone(child.pid)  # PR_SET_PDEATHSIG did it
    with pytest.raises(OSError):
        fork.spawn(["--version"])


def test_lab_down_leaves_no_server_nor_command() -> None:
    from natkit.lab.netlink import list_namespaces

    before = set(list_namespaces())
    with Lab.up("pair-full-cone") as lab:
        server = forkserver.start(lab, "bob")
        child = _waiting(server)
    assert server.process.poll() is not None
    _gone(child.pid)
    assert new_leftovers(before) == []


def test_a_kill_from_another_thread_ends_a_wait(fork: forkserver.ForkServer) -> None:
    import threading

    child = _waiting(fork)
    waiter = threading.Thread(target=child.wait, daemon=True)
    waiter.start()
    time.sleep(0.3)  # the waiter holds the status lock
    child.kill()
    waiter.join(10)
    assert not waiter.is_alive() and child.returncode == -signal.SIGKILL


# Another local process connects to the server's abstract name (any user can read it in
# /proc/net/unix) and asks for a command: it must get none.
_INTRUDER = """
import json, socket, sys
conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
conn.settimeout(10)
conn.connect(bytes.fromhex(sys.argv[1]).decode())
try:
    socket.send_fds(conn, [json.dumps({"args": ["--version"]}).encode()], [0, 1, 2])
    print("answered" if conn.recv(4096) else "closed")
except ConnectionResetError:  # closed with the request unread
    print("closed")
"""


@pytest.mark.parametrize("user", [None, 65534], ids=["root", "nobody"])
def test_only_the_process_that_started_it_gets_commands(
    fork: forkserver.ForkServer, user: int | None
) -> None:
    intruder = subprocess.run(  # the system's Python: nobody may not run this checkout's
        ["/usr/bin/python3", "-c", _INTRUDER, fork.address.encode().hex()],
        capture_output=True,
        text=True,
        timeout=30,
        user=user,
        cwd="/",
    )
    assert (intruder.returncode, intruder.stdout.strip()) == (0, "closed"), intruder.stderr
    version = fork.spawn(["--version"], stdout=subprocess.PIPE)  # its own client still is served
    assert version.communicate(timeout=30)[0].startswith("natkit")
