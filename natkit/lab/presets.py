"""Topology presets shipped in ``natkit.netns`` (netns/presets/*.yaml), and resolving a TOPOLOGY
argument: a preset name, a YAML file path, or a Topology object."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from natkit.errors import LabError
from natkit.lab.topology import Topology

__all__ = ["load_topology", "preset_names", "preset_path", "presets"]


def _preset_dir() -> Path:
    return Path(str(files("natkit.netns").joinpath("presets")))


def preset_names() -> list[str]:
    return sorted(p.stem for p in _preset_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of preset `name` (which may not exist)."""
    return _preset_dir() / f"{name}.yaml"


def presets() -> dict[str, Topology]:
    """Every preset, loaded and validated."""
    return {name: load_topology(name) for name in preset_names()}


def load_topology(spec: str | Path | Topology) -> Topology:
    """A preset name, a path to a YAML file, or a Topology (returned as is)."""
    if isinstance(spec, Topology):
        return spec
    text = str(spec)
    preset = preset_path(text)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        if preset.is_file():
            return Topology.from_yaml(preset)
        raise LabError(
            f"no preset named {text!r} (natkit lab presets lists them; "
            "or give a path to a YAML file)"
        )
    return Topology.from_yaml(Path(text))
