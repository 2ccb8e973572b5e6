"""The STUN exception tree.

`StunError` carries the STUN ERROR-CODE a server would answer with. Like h11, the tree separates
who broke the rules: `StunDecodeError` means the peer sent bytes that are not a valid STUN message
(a remote protocol error: drop or answer 400); `StunEncodeError` means our own code asked for a
message that cannot be put on the wire (a local bug or bad input, also a `ValueError`).
"""

from __future__ import annotations

__all__ = ["StunDecodeError", "StunEncodeError", "StunError"]


class StunError(Exception):
    """Base of every natkit.stun error; `error_code` is the STUN ERROR-CODE it maps to."""

    error_code: int = 400


class StunDecodeError(StunError):
    """The bytes are not a well-formed STUN message (or ChannelData frame)."""


class StunEncodeError(StunError, ValueError):
    """A message or attribute value cannot be encoded (out of range, wrong type, too long)."""

    error_code = 500
