"""NAT labs: RFC 4787 NAT topologies built from network namespaces and nftables.

    from natkit.lab import Lab
    with Lab.up("port-restricted-cone") as lab:
        lab.exec("peer", ["ping", "-c1", lab.address("server")], check=True)

Topologies are YAML (`natkit.lab.topology` documents the format); presets ship in `natkit.netns`.
"""

from natkit.lab.lab import Lab, down_all, gc
from natkit.lab.presets import load_topology, preset_names
from natkit.lab.topology import NAT_TYPES, Topology

__all__ = ["NAT_TYPES", "Lab", "Topology", "down_all", "gc", "load_topology", "preset_names"]
