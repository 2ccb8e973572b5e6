"""Building the kernel fast path's BPF object (``bpf/fastpath.bpf.c``) with clang.

`make install` builds it next to its source (`main`); without
clang there it is built on first use into a cache (``$NATKIT_BPF_DIR``, else
``~/.cache/natkit/bpf``). Objects are named by the source's hash, so an edited source is never
served by a stale object. Run time needs no compiler once built: `tc` loads the object.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["SOURCE", "FastPathError", "build_object"]

SOURCE = Path(__file__).with_name("bpf") / "fastpath.bpf.c"


class FastPathError(RuntimeError):
    """The kernel fast path cannot run here: the message says why and what to do."""


def _cache_dir() -> Path:
    configured = os.environ.get("NATKIT_BPF_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "natkit" / "bpf"


def build_object(directory: Path | None = None) -> Path:
    """The compiled BPF object for this source: the one `make install` built next to it, else
    one in the cache (``$NATKIT_BPF_DIR``, else ``~/.cache/natkit/bpf``), compiled now if
    needed. Objects are named by the source's hash: an edited source is never served stale."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    name = f"fastpath-{digest}.o"
    if directory is None:
        built = SOURCE.with_name(name)
        if built.exists():
            return built
        directory = _cache_dir()
    obj = directory / name
    if obj.exists():
        return obj
    clang = shutil.which("clang")
    if clang is None:
        raise FastPathError(
            "the kernel fast path needs clang to build its BPF program: "
            "apt-get install clang libbpf-dev (or set stun.fast_path: off)"
        )
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True, check=False)
    include = f"-I/usr/include/{arch.stdout.strip() or 'x86_64-linux-gnu'}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        directory = Path(tempfile.gettempdir())
        obj = directory / f"natkit-fastpath-{digest}-{os.getpid()}.o"
    partial = obj.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run(
        [clang, "-O2", "-g", "-target", "bpf", include, "-c", str(SOURCE), "-o", str(partial)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FastPathError(f"compiling {SOURCE.name} failed: {detail} (is libbpf-dev installed?)")
    partial.replace(obj)  # atomic: a concurrent start sees a whole object or none
    return obj


def main() -> int:
    """Build the object next to its source (what make install runs;
    skipped with a note when clang is missing: serve then builds it on first use)."""
    try:
        obj = build_object(SOURCE.parent)
    except FastPathError as err:
        print(f"note: kernel fast path not built: {err}")
        return 0
    print(f"kernel fast path: {obj}")
    return 0
