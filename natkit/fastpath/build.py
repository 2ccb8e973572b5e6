"""Building the kernel fast path's BPF object (``bpf/fastpath.bpf.c``) with clang.

`make install` builds it next to its source (`main`); without
clang there it is built on first use into a cache (``$NATKIT_BPF_DIR``, else
``~/.cache/natkit/bpf``). Objects are named by the source's hash, so an edited source is never
served by a stale object. Run time needs no compiler once built: `tc` loads the object.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from natkit import compiled

__all__ = ["SOURCE", "FastPathError", "build_object"]

SOURCE = Path(__file__).with_name("bpf") / "fastpath.bpf.c"


class FastPathError(RuntimeError):
    """The kernel fast path cannot run here: the message says why and what to do."""


def build_object(directory: Path | None = None) -> Path:
    """The compiled BPF object for this source: the one `make install` built next to it, else
    one in the cache (``$NATKIT_BPF_DIR``, else ``~/.cache/natkit/bpf``), compiled now if
    needed. Objects are named by the source's hash: an edited source is never served stale."""
    clang = shutil.which("clang")

    def argv(output: Path) -> list[str]:
        if clang is None:
            raise FastPathError(
                "the kernel fast path needs clang to build its BPF program: "
                "apt-get install clang libbpf-dev (or set stun.fast_path: off)"
            )
        machine = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True,
                                 check=False).stdout.strip()  # fmt: skip
        include = f"-I/usr/include/{machine or 'x86_64-linux-gnu'}"
        return [clang, "-O2", "-g", "-target", "bpf", include, "-c", str(SOURCE), "-o", str(output)]

    try:
        return compiled.build(SOURCE, ".o", argv, compiled.cache_dir("NATKIT_BPF_DIR", "bpf"),
                              directory)  # fmt: skip
    except compiled.CompileError as err:
        detail = f"compiling {SOURCE.name} failed: {err} (is libbpf-dev installed?)"
        raise FastPathError(detail) from None


def main() -> int:
    """Build the object next to its source (what make install runs;
    skipped with a note when clang is missing: serve then builds it on first use)."""
    return compiled.report("kernel fast path", lambda: build_object(SOURCE.parent), FastPathError)
