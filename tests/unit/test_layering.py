"""The package layering of DESIGN.md, read from the source: no import cycle between natkit's
modules, no arrow from the transport layer or the protocols up to what runs them, and one
function that reads the RFC 7983 first-byte bits."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import natkit

ROOT = Path(natkit.__file__).parent
# Packages that may never import the ones listed for them (every import counts: lazy ones
# inside functions and TYPE_CHECKING ones too, since they are dependencies all the same).
FORBIDDEN = {
    "natkit.net": ("natkit.stun", "natkit.turn", "natkit.serve", "natkit.diag", "natkit.cli"),
    "natkit.stun": ("natkit.turn", "natkit.serve", "natkit.diag", "natkit.cli", "natkit.p2p"),
    "natkit.turn": ("natkit.serve", "natkit.diag", "natkit.cli", "natkit.p2p", "natkit.lab"),
    "natkit.config": ("natkit.serve", "natkit.diag", "natkit.cli", "natkit.net"),
    "natkit.fastpath": (
        "natkit.stun",
        "natkit.turn",
        "natkit.serve",
        "natkit.diag",
        "natkit.cli",
        "natkit.net",
    ),
    # Port-mapping wire formats: sans-IO, below the diagnosis and the lab that use them.
    "natkit.portmap": (
        "natkit.diag",
        "natkit.lab",
        "natkit.p2p",
        "natkit.cli",
        "natkit.net",
        "natkit.serve",
    ),
    # The fleet's state beside turn/stun (DESIGN.md): it knows Redis and the config, no protocol.
    "natkit.cluster": (
        "natkit.turn",
        "natkit.stun",
        "natkit.net",
        "natkit.serve",
        "natkit.diag",
        "natkit.cli",
    ),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("natkit"))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("natkit")
        ):
            found.add(node.module or "")
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # `from natkit.x import y` may name a module y: count the deepest module it names.
        graph[name] = {imp for imp in _imports(path) if imp in modules and imp != name}
    return graph


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_upward_imports() -> None:
    wrong = [
        f"{mod} imports {imp}"
        for mod, imports in _graph().items()
        for low, highs in FORBIDDEN.items()
        if _in(mod, low)
        for imp in imports
        if any(_in(imp, high) for high in highs)
    ]
    assert not wrong, wrong


def test_no_import_cycle() -> None:
    # Package __init__ modules re-export their children, so parent→child edges are not
    # dependencies of the package; a cycle between modules is.
    graph = {
        mod: {imp for imp in imps if not _in(imp, mod) and not _in(mod, imp)}
        for mod, imps in _graph().items()
    }
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycle: list[str] = []

    def visit(mod: str, path: list[str]) -> bool:
        state[mod] = 1
        for imp in sorted(graph.get(mod, ())):
            if state.get(imp) == 1:
                cycle.extend([*path[path.index(imp) :], imp] if imp in path else [mod, imp])
                return True
            if imp not in state and visit(imp, [*path, imp]):
                return True
        state[mod] = 2
        return False

    for mod in sorted(graph):
        if mod not in state and visit(mod, [mod]):
            break
    assert not cycle, " -> ".join(cycle)


# What RFC 7983 demultiplexing looks like when someone writes it again: the STUN range (first
# byte below 4) or the ChannelData range (0x40-0x4F) tested on a first byte.
_DEMUX = re.compile(
    r"\[0\]\s*(<|<=)\s*(4|3|0x40)\b|\[0\]\s*(>=|>)\s*(4|3|0x40|64)\b|0x40\s*<=|64\s*<=|first\s*[<>]"
)


def test_one_demultiplexer() -> None:
    allowed = {ROOT / "net" / "demux.py"}
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted(ROOT.rglob("*.py"))
        if path not in allowed
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _DEMUX.search(line.split("#")[0]) and not line.strip().startswith(('"', "'"))
    ]
    assert not found, found
