"""The NAT matrix for the matrix tests: `timed_matrix` runs one under a time limit, and
`extended_matrix` runs `matrix-extended` once per session. It holds every node of `matrix` and
of `matrix-same-type` under the same definitions (tests/netns/test_p2p_matrix*.py check that),
so their tests read its records instead of building those labs again (about 3 minutes)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from natkit.lab.presets import preset_path
from natkit.p2p.matrix import PairRecord, render_table, run_matrix


def preset_yaml(name: str) -> dict[str, Any]:
    """Preset `name` as written (nodes by their YAML keys, before any defaults)."""
    loaded: dict[str, Any] = yaml.safe_load(preset_path(name).read_text())
    return loaded


def timed_matrix(topology: str, limit: float) -> list[PairRecord]:
    """`run_matrix(topology)` as the tests run it (6 pairs at once, 10 s to connect), its table
    printed; fails past `limit` seconds."""
    from natkit.lab.netlink import check_privileges

    check_privileges()
    started = time.monotonic()
    records = run_matrix(topology, concurrency=6, timeout=10.0)
    took = time.monotonic() - started
    print(f"\n{render_table(records)}\n{topology}: {len(records)} pairs in {took:.1f} s")
    assert took < limit, f"{topology} took {took:.0f} s (limit {limit:.0f} s)"
    return records


@pytest.fixture(scope="session")
def extended_matrix() -> list[PairRecord]:
    return timed_matrix("matrix-extended", 420)
