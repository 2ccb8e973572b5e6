"""Batched UDP I/O for IPv4 STUN sockets: recvmmsg(2)/sendmmsg(2) through ctypes (Linux).

Why: on a busy server the interpreter's per-call overhead of `recvfrom` + `sendto` (argument
parsing, a new bytes and a new address tuple, the text IP, the exception machinery for EAGAIN)
costs as much as the Binding answer itself. One `recvmmsg` fills up to `batch` datagrams and their
source sockaddrs into preallocated buffers, one `sendmmsg` sends every answer of the batch, and
the plain Binding answer is computed from the raw source address (no text IP, no `Transmit`).

Layout (x86-64 and aarch64 Linux, LP64): `struct mmsghdr` is a 56-byte `msghdr` + `msg_len`, 64
bytes; `struct iovec` 16 bytes; `sockaddr_in` 16 bytes. The arrays are read and written through
integer memoryviews, far cheaper than ctypes attribute access per datagram. `available()` says
whether this process can use it; the server falls back to recvfrom/sendto otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import sys

__all__ = ["MMsgSocket", "available"]

_MSG_DONTWAIT = 0x40
_MMSG_SIZE = 64  # sizeof(struct mmsghdr)
_MMSG_U32 = _MMSG_SIZE // 4
_MMSG_U64 = _MMSG_SIZE // 8
_NAME_SIZE = 16  # sockaddr_in


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("hdr", _MsgHdr), ("len", ctypes.c_uint))


def _libc_calls() -> tuple[object, object] | None:
    if not sys.platform.startswith("linux") or ctypes.sizeof(_MMsgHdr) != _MMSG_SIZE:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    int_, ptr, uint = ctypes.c_int, ctypes.c_void_p, ctypes.c_uint
    recvmmsg.argtypes = (int_, ptr, uint, int_, ptr)
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = (int_, ptr, uint, int_)
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_CALLS = _libc_calls()


def available() -> bool:
    return _CALLS is not None


class MMsgSocket:
    """Buffers for `batch` datagrams of at most `size` bytes in, `send_size` bytes out, on one
    IPv4 socket.

    Usage per wake-up: ``n = recv()``; for each i < n read `datagram(i)` / `source(i)`, queue
    answers with `queue(i, data)` (to the source of datagram i); then `flush()` sends them all.
    """

    def __init__(
        self, sock: socket.socket, *, batch: int = 64, size: int = 2048, send_size: int = 2048
    ) -> None:
        if _CALLS is None:
            raise OSError("recvmmsg/sendmmsg are not available here")
        if sock.family != socket.AF_INET:
            raise ValueError("batched I/O is for IPv4 sockets")
        self._recvmmsg, self._sendmmsg = _CALLS
        self.fd = sock.fileno()
        self.batch, self.size, self.send_size = batch, size, send_size
        self._rbuf = (ctypes.c_char * (batch * size))()
        self._names = (ctypes.c_char * (batch * _NAME_SIZE))()
        self._sbuf = (ctypes.c_char * (batch * send_size))()
        self._riov = (_IoVec * batch)()
        self._siov = (_IoVec * batch)()
        self._rmsgs = (_MMsgHdr * batch)()
        self._smsgs = (_MMsgHdr * batch)()
        names = ctypes.addressof(self._names)
        for i in range(batch):
            self._riov[i].base = ctypes.addressof(self._rbuf) + i * size
            self._riov[i].len = size
            self._siov[i].base = ctypes.addressof(self._sbuf) + i * send_size
            for msgs, iov in ((self._rmsgs, self._riov), (self._smsgs, self._siov)):
                msgs[i].hdr.name = names + i * _NAME_SIZE
                msgs[i].hdr.namelen = _NAME_SIZE
                msgs[i].hdr.iov = ctypes.addressof(iov[i])
                msgs[i].hdr.iovlen = 1
        self._names_base = names
        self._rview = memoryview(self._rbuf).cast("B")
        self._nview = memoryview(self._names).cast("B")
        self._sview = memoryview(self._sbuf).cast("B")
        self._r32 = memoryview(self._rmsgs).cast("B").cast("I")
        self._s64 = memoryview(self._smsgs).cast("B").cast("Q")
        self._s32 = memoryview(self._smsgs).cast("B").cast("I")
        self._siov64 = memoryview(self._siov).cast("B").cast("Q")
        self._received = batch
        self._queued = 0

    def recv(self) -> int:
        """Datagrams received now (0 when none is waiting). Raises OSError on real errors."""
        r32 = self._r32
        for i in range(self._received):  # the kernel wrote namelen: give each slot room again
            r32[i * _MMSG_U32 + 2] = _NAME_SIZE
        n: int = self._recvmmsg(  # type: ignore[operator]
            self.fd, ctypes.addressof(self._rmsgs), self.batch, _MSG_DONTWAIT, None
        )
        if n < 0:
            self._received = 0
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(err, f"recvmmsg: {errno.errorcode.get(err, err)}")
        self._received = n
        return n

    def datagram(self, i: int) -> bytes:
        start = i * self.size
        return bytes(self._rview[start : start + self._r32[i * _MMSG_U32 + 14]])

    def source(self, i: int) -> tuple[int, int]:
        """(IPv4 address as an int, port) of datagram i."""
        off = i * _NAME_SIZE
        nview = self._nview
        port = nview[off + 2] << 8 | nview[off + 3]
        return int.from_bytes(nview[off + 4 : off + 8], "big"), port

    def queue(self, i: int, data: bytes) -> None:
        """Queue `data` to the source of datagram i (dropped if it does not fit the slot)."""
        j = self._queued
        size = len(data)
        if size > self.send_size:
            return
        start = j * self.send_size
        self._sview[start : start + size] = data
        self._siov64[j * 2 + 1] = size
        self._s64[j * _MMSG_U64] = self._names_base + i * _NAME_SIZE
        self._s32[j * _MMSG_U32 + 2] = _NAME_SIZE
        self._queued = j + 1

    def flush(self) -> int:
        """Send every queued answer; returns how many the kernel did not take (UDP drops)."""
        total, sent = self._queued, 0
        self._queued = 0
        while sent < total:
            n: int = self._sendmmsg(  # type: ignore[operator]
                self.fd, ctypes.addressof(self._smsgs) + sent * _MMSG_SIZE, total - sent, 0
            )
            if n <= 0:
                break
            sent += n
        return total - sent
