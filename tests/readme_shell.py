"""The shell a README reader has: natkit's variables unset, and `sudo` that works as root."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


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
