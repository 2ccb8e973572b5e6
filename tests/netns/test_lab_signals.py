"""SIGTERM and SIGHUP remove labs exactly as Ctrl-C does; `lab exec` lets signals reach its
command; `lab down` asks processes to stop before it kills them (issue 10, item 7; needs root).

Other test runs share this machine, so every check looks only at the lab under test (its prefix,
its namespaces' inodes), never at totals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from natkit.lab import Lab
from natkit.lab.netlink import NETNS_DIR, list_namespaces
from natkit.lab.registry import LabState, load_all, load_state
from tests.netns.children import reaped, slow_up

pytestmark = pytest.mark.netns
NATKIT = [sys.executable, "-m", "natkit"]


def _wait_for(what: str, check: Callable[[], object], timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _lab_of(pid: int) -> LabState:
    """The lab process `pid` owns, once it is up."""
    found = _wait_for(
        f"a lab owned by {pid}",
        lambda: [s for s in load_all() if s.pid == pid and s.status == "up"],
    )
    assert isinstance(found, list)
    return found[0]  # type: ignore[no-any-return]


def _inodes(state: LabState) -> set[int]:
    return {os.stat(os.path.join(NETNS_DIR, ns)).st_ino for ns in state.namespaces}


def _pids_in(inodes: set[int]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _descendants(pid: int, word: str) -> list[int]:
    """Processes under `pid` whose command line or name (a forked command's: `forkserver`)
    holds the word `word`."""
    parents: dict[int, int] = {}
    named: set[int] = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/comm", "rb") as f:
                argv += f.read().split()
        except (OSError, ValueError, IndexError):
            continue
        if word.encode() in argv:
            named.add(int(entry))

    def under(p: int) -> bool:
        while p > 1:
            p = parents.get(p, 0)
            if p == pid:
                return True
        return False

    return [p for p in named if under(p)]


def _leftovers(state: LabState, inodes: set[int]) -> dict[str, list[str]]:
    """What remains of the lab: namespaces, host veths and nft tables naming its prefix,
    processes in its namespaces, its state file."""

    def lines(*argv: str) -> list[str]:
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if state.prefix in line]

    return {
        k: v
        for k, v in {
            "namespaces": [n for n in list_namespaces() if n.startswith(state.prefix)],
            "veths": lines("ip", "-o", "link", "show", "type", "veth"),
            "nft": lines("nft", "list", "tables"),  # lab tables live in its namespaces only
            "processes": [str(p) for p in _pids_in(inodes)],
            "state": [str(state.path)] if state.path.exists() else [],
        }.items()
        if v
    }


@pytest.fixture
def persistent_lab() -> object:
    """A `natkit lab up` lab, which no other process's signal may touch."""
    name = f"bystander-{os.getpid()}"
    up = subprocess.run([*NATKIT, "lab", "up", "open", "--name", name], capture_output=True)
    assert up.returncode == 0, up.stderr
    yield load_state(name)
    subprocess.run([*NATKIT, "lab", "down", name], capture_output=True, check=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signalled_matrix_removes_everything_and_prints_no_fake_rows(
    signum: signal.Signals, persistent_lab: LabState
) -> None:
    """As CI's cancel, `timeout` and a terminal send it: to the whole process group, while a pair
    is running (symmetric <-> symmetric: the direct attempt runs until --timeout)."""
    argv = [*NATKIT, "lab", "matrix", "--topology", "pair-symmetric", "--timeout", "8"]
    run = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        state = _lab_of(run.pid)
        inodes = _inodes(state)
        _wait_for("a p2p offer", lambda: _descendants(run.pid, "offer"))
        time.sleep(1.0)  # well inside the direct attempt
        os.killpg(run.pid, signum)
        out, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 128 + signum, err
    assert "fail" not in err.lower() and "FAIL" not in out, err
    assert err.strip().splitlines()[-1] == f"natkit: interrupted ({signum.name})"
    assert _leftovers(state, inodes) == {}
    assert persistent_lab.namespaces[0] in list_namespaces()  # not the dying process's lab


def _pytest_run(tmp_path: Path) -> subprocess.Popen[str]:
    test = tmp_path / "test_sleeps.py"
    test.write_text(
        textwrap.dedent(
            """
            import time
            def test_sleeps(nat_lab):
                lab = nat_lab("open")
                lab.spawn("peer", ["sleep", "60"])
                time.sleep(60)
            """
        )
    )
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
    return subprocess.Popen(
        argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signalled_pytest_run_removes_its_labs(tmp_path: Path, signum: signal.Signals) -> None:
    with reaped(_pytest_run(tmp_path)) as run:
        state = _lab_of(run.pid)
        inodes = _inodes(state)
        _wait_for("the spawned sleep", lambda: _descendants(run.pid, "sleep"))
        run.send_signal(signum)
        out, _ = run.communicate(timeout=30)
    assert _leftovers(state, inodes) == {}
    assert run.returncode == 128 + signum, out


def test_library_handlers_only_while_a_lab_is_owned() -> None:
    """natkit as a library: SIGTERM unwinds only while it owns a lab, and an application's own
    handler is never replaced."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this test run has its own SIGTERM handler")
    with Lab.up("open"):
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL

    def mine(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGTERM, mine)
    try:
        with Lab.up("open"):
            assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture
def cli_lab() -> object:
    name = f"sig-{os.getpid()}"
    up = subprocess.run([*NATKIT, "lab", "up", "open", "--name", name], capture_output=True)
    assert up.returncode == 0, up.stderr
    yield Lab.attach(name)
    subprocess.run([*NATKIT, "lab", "down", name], capture_output=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_lab_exec_lets_the_signal_reach_its_command(cli_lab: Lab, signum: signal.Signals) -> None:
    inodes = {os.stat(os.path.join(NETNS_DIR, cli_lab.netns("peer"))).st_ino}
    argv = [*NATKIT, "lab", "exec", cli_lab.name, "peer", "--", "sleep", "30"]
    with reaped(subprocess.Popen(argv)) as run:
        _wait_for("the sleep in node peer", lambda: _pids_in(inodes))
        run.send_signal(signum)
        run.wait(10)
    assert run.returncode == -signum  # what killed the command is what the caller sees
    _wait_for("no process left in node peer", lambda: not _pids_in(inodes), timeout=5)


def test_lab_down_asks_processes_to_stop_then_kills(cli_lab: Lab, tmp_path: Path) -> None:
    mark = tmp_path / "got-term"
    graceful = cli_lab.spawn(
        "peer", ["sh", "-c", f'trap "echo yes > {mark}; exit 0" TERM; while :; do sleep 0.1; done']
    )
    stubborn = cli_lab.spawn("peer", ["sh", "-c", 'trap "" TERM; while :; do sleep 0.1; done'])
    netns = cli_lab.netns("peer")
    time.sleep(0.3)  # both shells have set their traps
    started = time.monotonic()
    down = subprocess.run([*NATKIT, "lab", "down", cli_lab.name], capture_output=True, timeout=30)
    took = time.monotonic() - started
    assert down.returncode == 0, down.stderr
    assert graceful.wait(5) == 0 and mark.read_text() == "yes\n"  # it had its SIGTERM
    assert stubborn.wait(5) == -signal.SIGKILL  # and the one ignoring it did not stop the down
    assert 1.5 < took < 10, took
    assert netns not in list_namespaces()


def test_sigterm_during_a_persistent_up_removes_the_half_built_lab() -> None:
    """`natkit lab up` keeps its lab after it exits, but one it was still building is its own."""
    name = f"building-{os.getpid()}"
    with reaped(slow_up(name, persistent=True)) as child:
        state = load_state(name)
        inodes = _inodes(state)
        child.send_signal(signal.SIGTERM)
        child.wait(30)
    assert _leftovers(state, inodes) == {}  # without `natkit lab gc`


@pytest.mark.parametrize("how", ["exit", "SIGTERM"])
def test_a_lab_nobody_took_down_is_removed_at_exit(how: str) -> None:
    """A script that never calls down() (no `with`), ending normally or by SIGTERM."""
    script = textwrap.dedent(
        """
        import sys, time
        from natkit.lab import Lab
        lab = Lab.up("open")
        print(lab.name, flush=True)
        sys.stdin.readline()  # the test has read the lab's state
        if sys.argv[1] == "SIGTERM":
            time.sleep(60)
        """
    )
    argv = [sys.executable, "-c", script, how]
    with reaped(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)) as child:
        assert child.stdout is not None and child.stdin is not None
        state = load_state(child.stdout.readline().decode().strip())
        inodes = _inodes(state)
        child.stdin.write(b"go\n")
        child.stdin.flush()
        if how == "SIGTERM":
            time.sleep(0.3)
            child.send_signal(signal.SIGTERM)
        child.wait(30)
    assert _leftovers(state, inodes) == {}
