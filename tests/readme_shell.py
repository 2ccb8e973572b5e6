"""What a README reader has: a fresh tree (the tracked and new files, as a clone has them), and a
shell with natkit's variables unset and a `sudo` that works as root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_env(tmp: Path) -> dict[str, str]:
    """This process's environment without NATKIT_* and PYTEST_* variables. On a root machine
    without sudo (CI containers), a `sudo` that just runs its arguments goes first on PATH, so
    the README's `sudo .venv/bin/natkit ...` lines run as written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATKIT_", "PYTEST_"))}
    if shutil.which("sudo") is None:
        shim = tmp / "bin"
        shim.mkdir(exist_ok=True)
        (shim / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
        (shim / "sudo").chmod(0o755)
        env["PATH"] = f"{shim}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def copy_source_tree(dest: Path) -> Path:
    """Copy the tracked and new (not ignored) files of this checkout to `dest`: what a clone
    has, plus the uncommitted work under test. Returns `dest`."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in listed:
        if (ROOT / rel).is_file():  # deleted but not yet committed files are listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest
