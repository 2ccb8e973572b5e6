"""Every runtime dependency pyproject.toml declares is imported by natkit (none is dead weight)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Distribution name -> the module it installs, where they differ.
MODULE = {"pyyaml": "yaml", "pystun3": "stun"}


def test_every_declared_dependency_is_imported() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    source = "\n".join(p.read_text() for p in (ROOT / "natkit").rglob("*.py"))
    unused = []
    for spec in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", spec)
        assert name is not None, spec
        module = MODULE.get(name[0].lower(), name[0].lower().replace("-", "_"))
        if not re.search(rf"^\s*(import|from) {re.escape(module)}\b", source, re.MULTILINE):
            unused.append(name[0])
    assert unused == []
