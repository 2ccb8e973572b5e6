"""The wheel: built offline from the source tree, quietly, and it ships the lab presets.

setuptools used to warn on every install that 'natkit.netns.presets' "would be ignored" (an
importable directory missing from `packages`). The build here is the one `pip install` runs,
without build isolation so nothing is fetched from a package index.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import natkit
from tests.readme_shell import copy_source_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the wheel, pip's verbose output) from a copy of the tracked and new files."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    copy_source_tree(src)
    out = tmp / "dist"
    done = subprocess.run(
        [
            *PIP,
            "wheel",
            "-v",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(out),
            ".",
        ],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("natkit-*.whl")
    return wheel, done.stdout + done.stderr


def test_the_wheel_ships_every_preset_and_module(built: tuple[Path, str]) -> None:
    wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {f"natkit/netns/presets/{p.name}" for p in (ROOT / "netns/presets").glob("*.yaml")}
    assert len(presets) >= 10 and presets <= names, sorted(presets - names)
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "natkit").rglob("*.py")}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
    assert "natkit/py.typed" in names
    assert f"natkit-{natkit.__version__}.dist-info/METADATA" in names


def test_the_build_prints_no_packaging_warning(built: tuple[Path, str]) -> None:
    _, log = built
    assert "is absent from the `packages` configuration" not in log
    assert "Package would be ignored" not in log
    # setuptools' own notes about byte-compiling (pip turns it off) are not about natkit.
    warnings = [
        line
        for line in log.splitlines()
        if "warning" in line.lower()
        and "byte-compiling is disabled" not in line
        and "is neither a file nor a directory" not in line  # pip's note on a local index
    ]
    assert not warnings, warnings
