"""``${VAR}`` substitution from the environment inside string values of the config.

Forms: ``${VAR}`` (an unset variable is an error), ``${VAR:-default}`` (the default when VAR is
unset or empty, as in POSIX sh), ``$$`` for a literal ``$``. A ``$`` followed by anything else is
kept as is, so passwords such as ``pa$word`` need no escaping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["substitute"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def substitute(text: str, env: Mapping[str, str]) -> str:
    """Return `text` with references replaced; raise ValueError with a message fit for a user.

    Messages never quote `text` itself: it may be a secret.
    """
    if "$" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        dollar = text.find("$", i)
        if dollar < 0:
            out.append(text[i:])
            break
        out.append(text[i:dollar])
        nxt = text[dollar + 1 : dollar + 2]
        if nxt == "$":
            out.append("$")
            i = dollar + 2
        elif nxt == "{":
            close = text.find("}", dollar + 2)
            if close < 0:
                raise ValueError("unclosed '${' (write $$ for a literal $)")
            out.append(_expand(text[dollar + 2 : close], env))
            i = close + 1
        else:
            out.append("$")
            i = dollar + 1
    return "".join(out)


def _expand(body: str, env: Mapping[str, str]) -> str:
    name, sep, default = body.partition(":-")
    if not _NAME.match(name):
        # Not quoted: in a password, "${...}" may be part of the secret.
        raise ValueError("bad variable name in '${...}' (write ${NAME}, or $$ for a literal $)")
    value = env.get(name)
    if sep:
        return value if value else default
    if value is None:
        raise ValueError(f"environment variable {name} is not set")
    return value
