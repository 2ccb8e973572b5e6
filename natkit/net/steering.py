"""Which worker a new TCP/TLS connection goes to: by client IP, not by 4-tuple.

The kernel spreads a SO_REUSEPORT group's connections by a hash of the 4-tuple, so two
connections of one client usually land on different workers. Some protocols tie a client's
connections together: an RFC 6062 TURN client opens its data connections beside the control
connection that holds the allocation, and the worker that did not make the allocation knows
nothing of its CONNECTION-ID (400). A classic BPF program on the group (SO_ATTACH_REUSEPORT_CBPF,
Linux >= 4.5) picks the socket from the source IP instead: every connection of one IP goes to
one worker, different IPs are spread by a multiplicative hash. The program returns a socket
index of the group, which is the order its members were bound (`bind_worker_sockets` binds
worker 0's first, and the supervisor keeps every member open, so the order never changes).

Not for listeners behind a load balancer (``stun.proxy_protocol``): there the source IP is the
balancer's, and steering by it would put every connection on one worker.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct

__all__ = ["SO_ATTACH_REUSEPORT_CBPF", "program", "steer_by_source_ip"]

log = logging.getLogger("natkit.net.steering")

SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h; Python does not name it
_SKF_NET_OFF = -0x100000  # linux/filter.h: offsets from the network header
# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
_LD_W_ABS = 0x20
_TAX = 0x07
_XOR_X = 0xAC
_MUL_K = 0x24
_RSH_K = 0x74
_MOD_K = 0x94
_RET_A = 0x16
_GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash constant (2^32 / phi)


def _insn(code: int, k: int = 0) -> bytes:
    return struct.pack("HBBI", code, 0, 0, k & 0xFFFFFFFF)


def program(family: int, members: int) -> list[bytes]:
    """The filter for a group of `members` sockets of `family`: hash the source IP (IPv4: the
    word at network offset 12; IPv6: the four words from offset 8 XORed), index = hash % n."""
    if family == socket.AF_INET:
        load = [_insn(_LD_W_ABS, _SKF_NET_OFF + 12)]
    else:
        load = [_insn(_LD_W_ABS, _SKF_NET_OFF + 8)]
        for offset in (12, 16, 20):
            load += [_insn(_TAX), _insn(_LD_W_ABS, _SKF_NET_OFF + offset), _insn(_XOR_X)]
    return [
        *load,
        _insn(_MUL_K, _GOLDEN),
        _insn(_RSH_K, 16),  # the well-mixed high bits
        _insn(_MOD_K, members),
        _insn(_RET_A),
    ]


def steer_by_source_ip(sock: socket.socket, members: int) -> bool:
    """Attach the program to the reuseport group of `sock` (any member); False, logged, where
    the kernel refuses it (the kernel's 4-tuple hash stays)."""
    code = b"".join(program(sock.family, members))
    buffer = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog {unsigned short len; struct sock_filter *filter;}: the kernel copies
    # the instructions during the call, so `buffer` may go after it.
    fprog = struct.pack("HP", len(code) // 8, ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as err:
        log.warning(
            "cannot steer TCP/TLS connections by client IP (%s): a TURN client's RFC 6062 "
            "data connections may reach another worker than its allocation",
            err.strerror or err,
        )
        return False
    return True
