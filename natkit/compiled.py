"""Objects natkit compiles from the C it ships: the kernel fast path's BPF program
(`natkit.fastpath.build`) and the relay pump's shared library (`natkit.turn.pump`).

An object is named by its source's hash, so an edited source is never served by a stale object.
`make install` builds each next to its source; where that directory is not writable (a wheel
installed system-wide) or the object is missing, it is built on first use into a cache
(``$<env>``, else ``~/.cache/natkit/<kind>``), falling back to the temporary directory. The
compiler writes a partial file that is renamed into place: a concurrent start sees a whole
object or none.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["CompileError", "build", "cache_dir", "report"]


class CompileError(RuntimeError):
    """The compiler failed: the message is its last line of output."""


def cache_dir(env: str, kind: str) -> Path:
    configured = os.environ.get(env)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "natkit" / kind


def build(
    source: Path,
    suffix: str,
    argv: Callable[[Path], list[str]],
    cache: Path,
    directory: Path | None = None,
) -> Path:
    """The object of `source` (``<stem>-<hash><suffix>``): the one next to the source, else the
    one in `directory` (default: `cache`), compiled now with ``argv(output)`` if missing."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    name = f"{source.name.split('.')[0]}-{digest}{suffix}"
    if directory is None:
        built = source.with_name(name)
        if built.exists():
            return built
        directory = cache
    obj = directory / name
    if obj.exists():
        return obj
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        directory = Path(tempfile.gettempdir())
        obj = directory / f"natkit-{name}"
        if obj.exists():
            return obj
    partial = obj.with_name(f"{obj.name}.{os.getpid()}.tmp")
    proc = subprocess.run(argv(partial), capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise CompileError((proc.stderr.strip().splitlines() or ["no output"])[-1])
    partial.replace(obj)
    return obj


def report(what: str, make: Callable[[], Path], unavailable: type[Exception]) -> int:
    """What `make install` runs for one object: build it (`make`), print where, or a note
    saying why not (`unavailable`: serve then builds it on first use or goes without)."""
    try:
        obj = make()
    except unavailable as err:
        print(f"note: {what} not built: {err}")
        return 0
    print(f"{what}: {obj}")
    return 0
