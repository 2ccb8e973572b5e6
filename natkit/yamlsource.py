"""YAML read so that every error can name its line: composing (not constructing) keeps the line
of each key and value; syntax errors say the line and never quote it (it may hold a secret).

Shared by the config loader (`natkit.config.load`) and the lab topology reader
(`natkit.lab.topology`). Light on purpose: only PyYAML and `natkit.errors`, so the lab does not pay
for importing the config package.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import yaml

from natkit.errors import ConfigError

__all__ = ["closest", "compose", "line_of"]


def compose(text: str, source: str, error: type[ConfigError] = ConfigError) -> yaml.Node | None:
    """The YAML node tree of `text` (None for an empty document); a syntax error is `error`
    ("FILE:LINE: YAML syntax error: problem")."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        # Only `problem`: str(err) quotes the offending line, which may hold a secret.
        line = err.problem_mark.line + 1 if err.problem_mark else None
        problem = err.problem or err.context or "invalid YAML"
        raise error(f"YAML syntax error: {problem}", file=source, line=line) from None
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        message = f"YAML syntax error: character {err.character!r} is not allowed in YAML"
        raise error(message, file=source, line=line) from None
    except yaml.YAMLError as err:  # pragma: no cover - every PyYAML error above carries a mark
        raise error(f"YAML syntax error: {type(err).__name__}", file=source) from None


def line_of(node: yaml.Node) -> int:
    """The 1-based line where `node` starts."""
    return int(node.start_mark.line) + 1


def closest(word: object, options: Iterable[str]) -> str | None:
    """The option `word` was most likely meant to be (a typo), for a "did you mean" hint."""
    if not isinstance(word, str):
        return None
    close = difflib.get_close_matches(word, list(options), n=1)
    return close[0] if close else None
