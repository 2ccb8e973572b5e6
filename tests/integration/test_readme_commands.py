"""Every command in README.md's ```sh blocks runs as written (issue 10 item 8).

`COMMANDS` maps each README command, character for character, to how this test runs it, and
`test_every_readme_command_is_listed` fails when the README gains, loses or changes a command
without this file knowing. Nothing is skipped silently: a command this test does not run is listed
in `ELSEWHERE` with the test that runs it, or in `NOT_RUN` with the reason.

The commands run from a copy of the source tree (like a fresh clone, with this checkout's .venv),
in bash, one environment for the whole README (`export` lines change it, as in a terminal).
Example hosts never reach the internet (hard network rule): commands aimed at stun.example.org,
turn.example.org or HOST run inside a natkit lab (pair-full-cone), via `ip netns exec`, which
bind-mounts /etc/netns/NS/hosts over /etc/hosts: there those names are node `server`
(203.0.113.10), where this test runs `natkit serve` with LAB_SERVER (STUN with RFC 5780, TURN
with user alice and the README's secret, the lab's ranges allowed) — the stand-in for "your
server". The operator's `natkit serve -c configs/natkit.yaml` runs in node `server` too (its port
3478 is then that node's, not the host's). The one placeholder substituted is CODE, the pairing
code `natkit p2p offer` prints. `sudo` is run as written; as root on a machine without sudo a
`sudo` that just runs its arguments is put first on PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.readme_shell import copy_source_tree, readme_env

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
NAMES = ("stun.example.org", "turn.example.org", "HOST")
SERVER_IP = "203.0.113.10"


def readme_blocks() -> list[list[str]]:
    """The ```sh blocks of README.md (indented ones in lists too), as their raw lines."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in README.read_text().splitlines():
        fence = line.strip()
        if current is None and fence == "```sh":
            current = []
        elif current is not None and fence == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line.strip())
    return blocks


def command_of(line: str) -> str | None:
    """A block line without its trailing `# comment`; None for blank and comment lines."""
    if not line or line.startswith("#"):
        return None
    return re.sub(r"\s+#\s.*$", "", line)


def readme_commands() -> list[str]:
    return [c for block in readme_blocks() for c in map(command_of, block) if c]


def readme_output_after(command: str) -> list[str]:
    """The `#   output` lines the README shows right below `command`."""
    for block in readme_blocks():
        if command in block:
            shown = []
            for line in block[block.index(command) + 1 :]:
                if not line.startswith("#   "):
                    break
                shown.append(line[4:])
            return shown
    raise AssertionError(f"{command!r} is not in README.md")


# -- commands run elsewhere or not at all: each with its reason --------------------------------
_LAB_SERVER_TEST = "tests/netns/test_lab_server_example.py (runs the README's demo lab lines)"
ELSEWHERE = {
    "make run": "tests/integration/test_make_run.py (a fresh clone: make run, then the check)",
    '.venv/bin/natkit turn check turn:127.0.0.1:3478 --secret "$(cat .natkit/turn-secret)"': (
        "tests/integration/test_make_run.py (needs the server `make run` starts)"
    ),
    "sudo .venv/bin/natkit lab up port-restricted-cone --name demo": _LAB_SERVER_TEST,
    "sudo .venv/bin/natkit lab exec demo server -- .venv/bin/natkit serve -c "
    "configs/examples/lab-server.yaml &": _LAB_SERVER_TEST,
    "sudo .venv/bin/natkit lab exec demo peer -- .venv/bin/natkit diagnose --stun 203.0.113.10 "
    "--turn 'turn:203.0.113.10:3478?transport=udp' --secret natkit-lab-only-secret": (
        _LAB_SERVER_TEST
    ),
    "sudo .venv/bin/natkit lab down demo": _LAB_SERVER_TEST,
    **dict.fromkeys(
        [
            "sudo .venv/bin/natkit lab up ipv6-only-nat64 --name v6",
            "sudo .venv/bin/natkit lab exec v6 server -- .venv/bin/natkit serve -c "
            "configs/examples/lab-server-ipv6.yaml &",
            "sudo .venv/bin/natkit lab exec v6 peer -- .venv/bin/natkit diagnose --stun "
            "'[2001:db8::10]:3478' --dns64 2001:db8:1::1 --json",
            "sudo .venv/bin/natkit lab down v6",
        ],
        "tests/netns/test_lab_ipv6.py::test_the_readme_ipv6_lines_run_as_written",
    ),
    "sudo .venv/bin/natkit lab matrix": (
        "tests/netns/test_p2p_matrix.py runs run_matrix(), which this command calls (minutes)"
    ),
    "sudo .venv/bin/natkit lab matrix --topology matrix-extended": (
        "tests/netns/test_p2p_matrix_extended.py runs run_matrix('matrix-extended'), which this "
        "command calls (4 minutes)"
    ),
    "sudo .venv/bin/natkit lab matrix --topology matrix-same-type": (
        "tests/netns/test_p2p_matrix_ports.py runs run_matrix('matrix-same-type'), which this "
        "command calls (20 s)"
    ),
}
NOT_RUN = {
    "make test": "it is this test suite; .ci/run runs it from a clean clone",
}

LAB_SERVER = {
    "version": 1,
    "stun": {
        "listen": [f"udp://{SERVER_IP}:3478", f"tcp://{SERVER_IP}:3478"],
        "alternate": "203.0.113.11:3479",
        "workers": 1,
    },
    "turn": {
        "enabled": True,
        "realm": "example.org",
        "auth": {"secret": "${NATKIT_TURN_SECRET}", "users": {"alice": "secret"}},
        "relay": {"address": SERVER_IP, "ports": "50000-50999"},
        # As the README's example: the lab's ranges, not the server's own .10/.11.
        "peers": {"allow": ["203.0.113.96/27", "203.0.113.128/25", "10.0.0.0/8", "100.64.0.0/10"]},
    },
    "metrics": {"listen": None},
    "logging": {"level": "warning"},
}


@dataclass
class Session:
    """One terminal's worth of state: the tree, the environment, the lab, what runs."""

    tree: Path
    env: dict[str, str]
    lab: Any = None
    procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)
    code: str = ""

    def host(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self._run(["bash", "-c", command], timeout)

    def node(
        self, node: str, command: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self._run(self._in(node, command), timeout)

    def _in(self, node: str, command: str) -> list[str]:
        return ["ip", "netns", "exec", self.lab.netns(node), "bash", "-c", command]

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.tree, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def spawn(self, node: str, command: str, ready: str, timeout: float = 30) -> Path:
        """Start `command` in `node` (output to a file: nobody reads a pipe while it runs) and
        wait until its output has a line starting with `ready`; return the output file."""
        out = self.tree / f".out-{len(self.procs)}"
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                self._in(node, command),
                cwd=self.tree,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((proc, out))
        deadline = time.monotonic() + timeout
        while not any(line.startswith(ready) for line in out.read_text().splitlines()):
            assert proc.poll() is None, f"{command!r} exited {proc.returncode}: {out.read_text()}"
            assert time.monotonic() < deadline, f"{command!r}: no {ready!r}: {out.read_text()}"
            time.sleep(0.05)
        return out

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.stop(proc, 5)


def ok(done: subprocess.CompletedProcess[str], status: int = 0) -> str:
    assert done.returncode == status, (done.args, done.returncode, done.stdout, done.stderr)
    return done.stdout


# -- how each README command is run and what it must do ----------------------------------------
def credentials_after_make_run(s: Session, command: str) -> None:
    # `make run` makes .natkit/turn-secret first (its own rule); the rest needs no server.
    ok(s.host("make -s .natkit/turn-secret"))
    secret = (s.tree / ".natkit/turn-secret").read_text().strip()
    entry = json.loads(ok(s.host(command)))
    from natkit.turn.credentials import verify

    assert verify(secret, entry["username"], entry["credential"], now=time.time())
    assert entry["urls"] and not any("localhost" in url for url in entry["urls"]), entry


def export(s: Session, command: str) -> None:
    done = ok(s.host(f"{command} && env -0"))
    s.env = dict(item.split("=", 1) for item in done.split("\0") if "=" in item)
    assert re.fullmatch(r"[0-9a-f]{32}", s.env["NATKIT_TURN_SECRET"])


def config_check(s: Session, command: str) -> None:
    assert ok(s.host(command)).startswith("configs/examples/public-operator.yaml: ok")


def operator_serve(s: Session, command: str) -> None:
    out = s.spawn("server", command, ready="metrics ")
    proc = s.procs[-1][0]
    shown = readme_output_after(command)
    # stdout's lines (log lines on stderr share the file); the README shows a 2-core machine:
    # only the worker count may differ.
    got = [
        line for line in out.read_text().splitlines() if line.startswith(("listening", "metrics"))
    ]
    pattern = [re.escape(line).replace(r"2\ workers", r"\d+\ workers?") for line in shown]
    assert len(shown) == 3 and len(got) == len(shown), (shown, got)
    assert all(re.fullmatch(p, g) for p, g in zip(pattern, got, strict=True)), (shown, got)
    assert s.stop(proc) == 0, out.read_text()  # SIGTERM drains and exits 0, as the README says
    lab_server(s)  # from here on node `server` is turn.example.org of the README


def lab_server(s: Session) -> None:
    config = s.tree / "lab-server.yaml"
    config.write_text(yaml.safe_dump(LAB_SERVER))
    s.spawn("server", f".venv/bin/natkit serve -c {config}", ready=f"listening tcp://{SERVER_IP}")


def credentials_with_host(s: Session, command: str) -> None:
    entry = json.loads(ok(s.host(command)))
    assert entry["urls"] == [
        "turn:turn.example.org:3478?transport=udp",
        "turn:turn.example.org:3478?transport=tcp",
    ]


def turn_check(s: Session, command: str) -> None:
    ok(s.node("alice", command))


def diagnose(s: Session, command: str) -> None:
    text = ok(s.node("alice", command))  # 0: a direct connection is possible (full cone)
    assert "full-cone" in text or "full cone" in text, text


def diagnose_json(s: Session, command: str) -> None:
    ok(s.node("alice", command))
    report = json.loads((s.tree / "report.json").read_text())
    assert report["version"] == 2 and report["nat_type"] == "full-cone", report


def p2p_signal(s: Session, command: str) -> None:
    s.spawn("server", command, ready="listening signal ")


def p2p_offer(s: Session, command: str) -> None:
    out = s.spawn("alice", command, ready="pairing code: ")
    s.code = re.search(r"pairing code: (\S+)", out.read_text()).group(1)  # type: ignore[union-attr]


def p2p_answer(s: Session, command: str) -> None:
    assert "CODE" in command and s.code
    text = ok(s.node("bob", command.replace("CODE", s.code), timeout=90))
    assert "connected" in text, text
    offer, out = s.procs[-1]
    assert offer.wait(60) == 0, out.read_text()


def lab_presets(s: Session, command: str) -> None:
    listed = [line.split()[0] for line in ok(s.host(command)).splitlines()]
    assert {"open", "symmetric", "cgnat", "udp-blocked", "pair-symmetric", "matrix"} <= set(listed)


def lab_up(s: Session, command: str) -> None:
    assert ok(s.host(command)) == "ci1\n"


def lab_exec(s: Session, command: str) -> None:
    assert "inet 10.0." in ok(s.host(command))


def lab_status(s: Session, command: str) -> None:
    status = json.loads(ok(s.host(command)))
    assert status["name"] == "ci1" and status["topology"] == "symmetric", status


def lab_down(s: Session, command: str) -> None:
    ok(s.host(command))
    assert "ci1" not in ok(s.host(".venv/bin/natkit lab status"))


COMMANDS: dict[str, Callable[[Session, str], None]] = {
    "NATKIT_TURN_SECRET=$(cat .natkit/turn-secret) .venv/bin/natkit turn credentials --user alice "
    "--json": credentials_after_make_run,
    "export NATKIT_TURN_SECRET=$(openssl rand -hex 16)": export,
    ".venv/bin/natkit config check -c configs/examples/public-operator.yaml": config_check,
    ".venv/bin/natkit serve -c configs/natkit.yaml": operator_serve,
    ".venv/bin/natkit turn credentials --user alice --ttl 1h --json --host turn.example.org": (
        credentials_with_host
    ),
    '.venv/bin/natkit turn check turn:turn.example.org:3478 --secret "$NATKIT_TURN_SECRET"': (
        turn_check
    ),
    ".venv/bin/natkit diagnose --stun stun.example.org --turn turn:turn.example.org:3478 --user "
    "alice --password secret": diagnose,
    ".venv/bin/natkit diagnose --stun stun.example.org --json > report.json": diagnose_json,
    ".venv/bin/natkit p2p signal --listen 0.0.0.0:8765": p2p_signal,
    ".venv/bin/natkit p2p offer --signal http://HOST:8765 --stun stun:HOST:3478": p2p_offer,
    ".venv/bin/natkit p2p answer CODE --signal http://HOST:8765 --stun stun:HOST:3478": p2p_answer,
    "sudo .venv/bin/natkit lab presets": lab_presets,
    "sudo .venv/bin/natkit lab up symmetric --name ci1": lab_up,
    "sudo .venv/bin/natkit lab exec ci1 peer -- ip addr": lab_exec,
    "sudo .venv/bin/natkit lab status ci1 --json": lab_status,
    "sudo .venv/bin/natkit lab down ci1": lab_down,
}


def test_every_readme_command_is_listed() -> None:
    commands = readme_commands()
    assert len(commands) == len(set(commands)), "a README command appears twice"
    listed = set(COMMANDS) | set(ELSEWHERE) | set(NOT_RUN)
    assert not set(commands) - listed, f"README commands no test runs: {set(commands) - listed}"
    assert not listed - set(commands), f"listed but not in README.md: {listed - set(commands)}"
    assert not set(COMMANDS) & (set(ELSEWHERE) | set(NOT_RUN))
    for covered in ELSEWHERE.values():
        path = ROOT / covered.split()[0]
        assert path.name.startswith("test_"), covered  # names the test that runs it


def test_readme_commands_need_no_natkit_on_path() -> None:
    # `natkit` is not on PATH after `make run`, and sudo resets PATH: every invocation is explicit.
    for command in readme_commands():
        assert not re.search(r"(^|[\s;|&(])natkit\s", command), command


def _tree(tmp: Path) -> Path:
    """A copy of the tracked and new files (what a clone has), with this checkout's .venv."""
    tree = copy_source_tree(tmp / "natkit")
    (tree / ".venv").symlink_to(ROOT / ".venv")
    return tree


def _env(tmp: Path) -> dict[str, str]:
    return readme_env(tmp)


@contextlib.contextmanager
def _lab_with_names() -> Iterator[Any]:
    """pair-full-cone, where alice and bob resolve the README's example names to `server`."""
    from natkit.lab import Lab

    lab = Lab.up("pair-full-cone")
    dirs = [Path("/etc/netns") / lab.netns(node) for node in ("alice", "bob")]
    try:
        for d in dirs:
            d.mkdir(parents=True)
            hosts = f"127.0.0.1 localhost\n{SERVER_IP} {' '.join(NAMES)}\n"
            (d / "hosts").write_text(hosts)
        yield lab
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        lab.down()


@pytest.mark.netns
@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    from natkit.lab.netlink import check_privileges

    check_privileges()
    session = Session(_tree(tmp_path), _env(tmp_path))
    ran = []
    with _lab_with_names() as lab:
        session.lab = lab
        try:
            for command in readme_commands():
                if command in COMMANDS:
                    COMMANDS[command](session, command)
                    ran.append(command)
        finally:
            session.stop_all()
            # `lab up ... --name ci1` ran, and a failure may have come before `lab down ci1`.
            subprocess.run(
                [sys.executable, "-m", "natkit", "lab", "down", "ci1"],
                capture_output=True,
                check=False,
            )
    assert ran == [c for c in readme_commands() if c in COMMANDS]
