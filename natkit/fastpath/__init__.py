"""natkit's kernel fast path: plain STUN Binding requests answered and TURN ChannelData relayed in
tc-BPF, driven from Python.

`natkit.fastpath.control.KernelFastPath` attaches the program (``stun.fast_path``), `status`
and `remove_leftovers` serve ``natkit fastpath status`` and ``natkit serve --cleanup``;
`natkit.fastpath.relay` is the TURN engine's side (its channel entries). The program itself is
``fastpath.bpf.c`` (its header says what it does and what it leaves to user space);
`natkit.fastpath.bpf` and `natkit.fastpath.tc` are the bpf(2) calls and the `tc` commands
underneath.
"""

from __future__ import annotations

from natkit.fastpath.control import (
    COUNTER_NAMES,
    FastPathError,
    KernelFastPath,
    Listener,
    remove_leftovers,
    status,
)

__all__ = [
    "COUNTER_NAMES",
    "FastPathError",
    "KernelFastPath",
    "Listener",
    "remove_leftovers",
    "status",
]
