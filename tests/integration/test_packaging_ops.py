"""Production packaging (issue 17): the systemd unit checked by systemd itself, the container
entrypoint run as the image runs it (no container builder here: `docker build` only where a
daemon answers). The Kubernetes manifests: tests/unit/test_packaging_manifests.py."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.testing import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "natkit.service"
ENTRYPOINT = ROOT / "packaging" / "docker" / "entrypoint.sh"
DOCKERFILE = ROOT / "packaging" / "docker" / "Dockerfile"
BIN = Path(sys.executable).parent  # this venv's natkit


def _need(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{binary} is missing: make system-packages installs it")
        pytest.skip(f"{binary} is not installed")
    return found


def _unit_here(tmp_path: Path) -> Path:
    """The unit with its natkit paths pointed at this venv (verify checks they exist)."""
    copy = tmp_path / "natkit.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/natkit", str(BIN / "natkit")))
    return copy


def test_systemd_unit_verifies_clean_and_is_sandboxed(tmp_path: Path) -> None:
    analyze = _need("systemd-analyze")
    unit = _unit_here(tmp_path)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    # Unknown keys are only warned about: any output is a finding.
    assert done.returncode == 0 and not done.stdout and not done.stderr, done.stderr
    text = UNIT.read_text()
    for line in ("Type=simple", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE", "LimitNOFILE=1048576",
                 "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM"):  # fmt: skip
        assert re.search(f"^{re.escape(line)}$", text, re.M), line
    done = subprocess.run([analyze, "security", "--offline=yes", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert score is not None, done.stdout[-500:] + done.stderr
    assert float(score.group(1)) <= 2.0, done.stdout  # systemd's "OK" band


def test_systemd_unit_with_a_typo_is_caught(tmp_path: Path) -> None:
    """The check above can fail: a misspelled sandboxing key is reported."""
    analyze = _need("systemd-analyze")
    unit = _unit_here(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSystm="))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert "Unknown key 'ProtectSystm'" in done.stderr


def test_dockerfile_runs_as_its_own_user_through_the_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert 'ENTRYPOINT ["/usr/local/bin/natkit-entrypoint"]' in text
    for source in re.findall(r"^COPY\s+(\S+)\s", text, re.M):
        assert (ROOT / source).exists(), source
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True,
                                        timeout=20, check=False).returncode:  # fmt: skip
        return  # no builder here: the entrypoint is tested directly below
    argv = [docker, "build", "-f", str(DOCKERFILE), "-t", "natkit:test", str(ROOT)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def _entrypoint(
    *args: str, uid: int | None, config: Path | None, path: Path = BIN, allow_root: bool = False
) -> subprocess.Popen[str]:
    env = {"PATH": f"{path}:/usr/bin:/bin", "HOME": "/tmp"}
    if config is not None:
        env["NATKIT_CONFIG"] = str(config)
    if allow_root:
        env["NATKIT_ALLOW_ROOT"] = "1"
    argv = ["sh", str(ENTRYPOINT), *args]
    if uid is not None:  # as the image's unprivileged user would
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory uid 65534 can read (pytest's tmp_path is root's alone, 0700)."""
    with tempfile.TemporaryDirectory(prefix="natkit-entrypoint-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


def test_entrypoint_refuses_root_and_a_missing_config(shared_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to tell root from the image's user")
    _need("setpriv")
    proc = _entrypoint(uid=None, config=shared_dir / "natkit.yaml")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and err.count("\n") == 1 and "refusing to run as root" in err
    proc = _entrypoint(uid=65534, config=shared_dir / "missing.yaml")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and err.count("\n") == 1 and "no readable config" in err


def test_entrypoint_as_the_images_user_execs_natkit(shared_dir: Path) -> None:
    """As uid 65534 (this venv's interpreter lives under /root, out of its reach: a stand-in
    `natkit` on PATH shows what the entrypoint runs, as whom, in which process)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    _need("setpriv")
    config = shared_dir / "natkit.yaml"
    config.write_text("version: 1\n")
    config.chmod(0o644)
    stand_in = shared_dir / "natkit"
    stand_in.write_text('#!/bin/sh\necho "pid=$$ uid=$(id -u) args=$*"\n')
    stand_in.chmod(0o755)
    for args, expected in (((), f"serve -c {config}"), (("serve", "--x"), f"serve -c {config} --x"),
                           (("cluster", "status"), "cluster status")):  # fmt: skip
        proc = _entrypoint(*args, uid=65534, config=config, path=shared_dir)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        # exec: natkit is the entrypoint's own process (PID 1 in the container gets SIGTERM).
        assert out.strip() == f"pid={proc.pid} uid=65534 args={expected}", out


def test_entrypoint_serves_and_drains_on_sigterm(shared_dir: Path) -> None:
    port = free_port()
    config = shared_dir / "natkit.yaml"
    config.write_text(f"version: 1\nstun: {{listen: ['udp://127.0.0.1:{port}'], workers: 1}}\n"
                      "metrics: {listen: null}\n")  # fmt: skip
    proc = _entrypoint("serve", uid=None, config=config, allow_root=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith(f"listening udp://127.0.0.1:{port}"), line + proc.stderr.read()
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"natkit") for part in cmdline[:2]), cmdline  # exec'd
        os.kill(proc.pid, signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(20) == 0
        assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
