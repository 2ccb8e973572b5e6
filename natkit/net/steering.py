"""Which worker the kernel hands a client to: by its source address, not its 5-tuple.

SO_REUSEPORT alone hashes the whole 5-tuple, so two sockets of one client host (an RTP/RTCP
pair, a TURN control connection and its RFC 6062 data connections, ICE candidates from several
ports) land on different workers, and whatever state one worker holds for that host (a
RESERVATION-TOKEN, a TCP allocation, a rate-limit bucket) is missing on the other. A classic
BPF program attached to each reuseport group (SO_ATTACH_REUSEPORT_CBPF, Linux ≥ 4.5, no
privilege needed) picks the group member from a hash of the source IPv4 address or IPv6 /64
(the unit natkit rate-limits), so one host always meets one worker.

The program returns an index into the group, which is the order its sockets joined it: the
supervisor binds worker 0's socket first (`natkit.net.sockets.bind_worker_sockets`), and keeps
its own copy of every socket, so the order never changes. A socket that joins later (another
process of the same uid setting SO_REUSEPORT itself) gets an index the program never returns:
it receives nothing.
"""

from __future__ import annotations

import ctypes
import socket
import struct

__all__ = ["steer_by_source"]

_SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h; Python's socket module lacks it
_SKF_NET_OFF = -0x100000  # linux/filter.h: loads relative to the network header
# Classic BPF opcodes (linux/bpf_common.h).
_LD_W_ABS = 0x00 | 0x00 | 0x20
_TAX = 0x07 | 0x00
_XOR_X = 0x04 | 0xA0 | 0x08
_MUL_K = 0x04 | 0x20 | 0x00
_RSH_K = 0x04 | 0x70 | 0x00
_MOD_K = 0x04 | 0x90 | 0x00
_RET_A = 0x06 | 0x10
_GOLDEN = 0x9E3779B1  # Fibonacci hashing: nearby addresses spread over the workers


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


def _net(offset: int) -> int:
    return (_SKF_NET_OFF + offset) & 0xFFFFFFFF


def _program(family: int, members: int) -> list[tuple[int, int]]:
    """(opcode, k) pairs: hash the source address (IPv4) or /64 (IPv6), modulo `members`."""
    if family == socket.AF_INET:
        load = [(_LD_W_ABS, _net(12))]  # IPv4 source address
    else:  # IPv6 source bytes 8-15: the /64, folded into one word
        load = [(_LD_W_ABS, _net(8)), (_TAX, 0), (_LD_W_ABS, _net(12)), (_XOR_X, 0)]
    return [*load, (_MUL_K, _GOLDEN), (_RSH_K, 16), (_MOD_K, members), (_RET_A, 0)]


def steer_by_source(sock: socket.socket, members: int) -> bool:
    """Attach the program to `sock`'s reuseport group of `members` sockets (call after the
    group is complete); False where the kernel refuses (not Linux, or too old)."""
    program = _program(sock.family, members)
    filters = (_SockFilter * len(program))(*(_SockFilter(op, 0, 0, k) for op, k in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(filters))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError:
        return False
    return True  # the kernel copied the program: `filters` may go
