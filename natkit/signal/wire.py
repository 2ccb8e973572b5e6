"""JSON from the network, parsed with bounds: both ends of the rendezvous read untrusted bodies.

`json.loads` recurses once per nesting level and raises RecursionError (not ValueError) past the
interpreter's limit, about 1,000 levels: a 20 KB body of brackets would end the connection with a
traceback. The depth is therefore counted before parsing, by a scan that only looks at brackets,
quotes and backslashes (linear, no backtracking), and every failure is one `ValueError`.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_DEPTH", "loads", "too_deep"]

MAX_DEPTH = 16
"""Deeper than any body natkit sends (its bodies are one flat object) by a wide margin."""

_SIGNIFICANT = re.compile(rb'[\[\]{}"\\]')


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text `data` nests arrays/objects more than `limit` levels deep.

    Brackets inside strings do not count; a backslash in a string escapes the next byte. With
    at most `limit` brackets in all there is nothing to scan.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    in_string = False
    skip = -1  # index of a byte escaped by the preceding backslash
    for match in _SIGNIFICANT.finditer(data):
        pos = match.start()
        if pos == skip:
            continue
        char = data[pos]
        if in_string:
            if char == 0x5C:  # backslash
                skip = pos + 1
            elif char == 0x22:  # quote
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in b"[{":
            depth += 1
            if depth > limit:
                return True
        elif char in b"]}":
            depth -= 1
    return False


def loads(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads(data)` for remote input: nesting past `max_depth` and any decoding problem
    (bad UTF-8, numbers past the int-digit limit, ...) are a `ValueError` with a reason."""
    if too_deep(data, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except RecursionError:  # cannot happen below the bound; kept so no input escapes as one
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise ValueError(f"not JSON: {err}") from None
