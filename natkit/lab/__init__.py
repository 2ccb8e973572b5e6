"""NAT labs: RFC 4787 NAT topologies built from network namespaces and nftables.

    from natkit.lab import Lab
    with Lab.up("port-restricted-cone") as lab:
        lab.exec("peer", ["ping", "-c1", lab.address("server")], check=True)

Topologies are YAML (`natkit.lab.topology` documents the format); presets ship in `natkit.netns`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from natkit.lab.lab import Lab, down_all, gc

if TYPE_CHECKING:
    from natkit.lab.presets import load_topology, preset_names
    from natkit.lab.topology import NAT_TYPES, Topology

__all__ = ["NAT_TYPES", "Lab", "Topology", "down_all", "gc", "load_topology", "preset_names"]

# Loaded on first use: the topology model pulls in yaml, which `natkit lab down`/`gc` never need.
_LAZY = {
    "NAT_TYPES": "natkit.lab.topology",
    "Topology": "natkit.lab.topology",
    "load_topology": "natkit.lab.presets",
    "preset_names": "natkit.lab.presets",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'natkit.lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
