"""The config as commented YAML: what `natkit config show` prints.

Each key carries its one-line help from the model as a comment, so the output documents itself and
loads back as the same config (when not redacted).
"""

from __future__ import annotations

from functools import cache
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from natkit.config.model import Config, config_fields, is_section
from natkit.config.redact import to_dict

__all__ = ["to_yaml"]

_FLOW_WIDTH = 80  # lists longer than this go one item a line


def to_yaml(config: Config, redact: bool = True) -> str:
    """`config` as YAML with a help comment on every key; secrets ``***`` with `redact`."""
    lines = _section(Config, to_dict(config, redact=redact), "")
    return "\n".join(lines) + "\n"


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...")


def _section(cls: type, data: dict[str, Any], pad: str) -> list[str]:
    lines: list[str] = []
    for f in config_fields(cls):
        tp, value, note = _hints(cls)[f.name], data[f.name], f"  # {f.metadata['help']}"
        item_tp = get_args(tp)[0] if get_origin(tp) is tuple else None
        if is_section(tp):
            lines += [f"{pad}{f.name}:{note}", *_section(tp, value, pad + "  ")]
        elif value and item_tp is not None and is_section(item_tp):
            lines.append(f"{pad}{f.name}:{note}")
            for item in value:
                body = _section(item_tp, item, pad + "    ")
                lines += [f"{pad}  - {body[0].lstrip()}", *body[1:]]
        elif value and isinstance(value, dict):
            lines.append(f"{pad}{f.name}:{note}")
            lines += [f"{pad}  {_scalar(k)}: {_scalar(v)}" for k, v in value.items()]
        elif isinstance(value, list) and len(_scalar(value)) > _FLOW_WIDTH:
            lines.append(f"{pad}{f.name}:{note}")
            lines += [f"{pad}  - {_scalar(v)}" for v in value]
        else:
            lines.append(f"{pad}{f.name}: {_scalar(value)}{note}")
    return lines
