"""Batched UDP I/O for IPv4 sockets: recvmmsg(2)/sendmmsg(2) through ctypes (Linux).

Why: on a busy server the interpreter's per-call overhead of `recvfrom` + `sendto` (argument
parsing, a new bytes and a new address tuple, the text IP, the exception machinery for EAGAIN)
costs as much as the work itself, and every `sendto` to a sleeping receiver pays for a wake-up
that a burst pays once. One `recvmmsg` fills up to `batch` datagrams and their source sockaddrs
into preallocated buffers (`RecvBatch`), one `sendmmsg` sends every queued datagram
(`SendBatch`), and callers read raw source addresses (no text IP).

A `RecvBatch` is not tied to a socket: `recv(fd)` reads any socket into the same buffers, so one
batch serves every TURN relay socket of a worker (one thread: each batch is consumed before the
next read). A `SendBatch` sends on one socket; what it queues is copied into its own slots, so it
may wait until the end of the event loop's iteration. `MMsgSocket` is the pair a listener
socket uses.

Layout (x86-64 and aarch64 Linux, LP64): `struct mmsghdr` is a 56-byte `msghdr` + `msg_len`, 64
bytes; `struct iovec` 16 bytes; `sockaddr_in` 16 bytes. The arrays are read and written through
integer memoryviews, far cheaper than ctypes attribute access per datagram. `available()` says
whether this process can use it; callers fall back to recvfrom/sendto otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
import sys

__all__ = ["MMsgSocket", "RecvBatch", "SendBatch", "available", "sockaddr_in"]

_MSG_DONTWAIT = 0x40
_MMSG_SIZE = 64  # sizeof(struct mmsghdr)
_MMSG_U32 = _MMSG_SIZE // 4
_MMSG_U64 = _MMSG_SIZE // 8
_NAME_SIZE = 16  # sockaddr_in
_SOCKADDR_IN = struct.Struct("=H2s4s8x")  # family in host order, port and address in network


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
    # No argtypes: callers pass ints that fit a C int and `ctypes.c_void_p` objects made once,
    # which halves the cost of a call (argtypes converts every argument on every call).
    recvmmsg.restype = ctypes.c_int
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_CALLS = _libc_calls()


def available() -> bool:
    return _CALLS is not None


def sockaddr_in(host: str, port: int) -> bytes:
    """The `struct sockaddr_in` of an IPv4 address, for `SendBatch.queue_to`."""
    return _SOCKADDR_IN.pack(socket.AF_INET, port.to_bytes(2, "big"), socket.inet_aton(host))


def _calls() -> tuple[object, object]:
    if _CALLS is None:
        raise OSError("recvmmsg/sendmmsg are not available here")
    return _CALLS


class RecvBatch:
    """Buffers for `batch` datagrams of at most `size` bytes and their IPv4 sources.

    Usage: ``n = recv(fd)``; for each i < n read `datagram(i)` (a copy), `view(i, ...)` (no
    copy, valid until the next `recv`) and `source(i)`."""

    def __init__(self, *, batch: int = 64, size: int = 2048) -> None:
        self._recvmmsg = _calls()[0]
        self.batch, self.size = batch, size
        self._buf = (ctypes.c_char * (batch * size))()
        self._names = (ctypes.c_char * (batch * _NAME_SIZE))()
        self._iov = (_IoVec * batch)()
        self._msgs = (_MMsgHdr * batch)()
        self.names_base = ctypes.addressof(self._names)
        for i in range(batch):
            self._iov[i].base = ctypes.addressof(self._buf) + i * size
            self._iov[i].len = size
            self._msgs[i].hdr.name = self.names_base + i * _NAME_SIZE
            self._msgs[i].hdr.namelen = _NAME_SIZE
            self._msgs[i].hdr.iov = ctypes.addressof(self._iov[i])
            self._msgs[i].hdr.iovlen = 1
        self._msgs_ptr = ctypes.c_void_p(ctypes.addressof(self._msgs))
        self.msgs_ptr = self._msgs_ptr
        """The `struct mmsghdr` array, for compiled code that reads a batch (`natkit.turn.pump`)."""
        self._handled = (ctypes.c_ubyte * batch)()
        self.handled_ptr = ctypes.c_void_p(ctypes.addressof(self._handled))
        self.handled = memoryview(self._handled).cast("B")
        """One byte per datagram that compiled code sets when it relayed the datagram itself."""
        self.buffer = memoryview(self._buf).cast("B")
        """Every slot, `size` bytes apart (datagram i starts at ``i * size``)."""
        self._nview = memoryview(self._names).cast("B")
        self._r32 = memoryview(self._msgs).cast("B").cast("I")

    def recv(self, fd: int) -> int:
        """Datagrams read from the IPv4 socket `fd` now (0 when none is waiting). Raises
        OSError on errors. The kernel writes each slot's namelen back as 16 (sockaddr_in) for
        an IPv4 socket: the room it had, so it needs no reset between calls."""
        n: int = self._recvmmsg(  # type: ignore[operator]
            fd, self._msgs_ptr, self.batch, _MSG_DONTWAIT, None
        )
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(err, f"recvmmsg: {errno.errorcode.get(err, err)}")
        return n

    def length(self, i: int) -> int:
        """Bytes of datagram i (at most `size`: a longer one was truncated)."""
        return self._r32[i * _MMSG_U32 + 14]

    def datagram(self, i: int) -> bytes:
        start = i * self.size
        return bytes(self.buffer[start : start + self._r32[i * _MMSG_U32 + 14]])

    def source(self, i: int) -> tuple[int, int]:
        """(IPv4 address as an int, port) of datagram i."""
        off = i * _NAME_SIZE
        nview = self._nview
        port = nview[off + 2] << 8 | nview[off + 3]
        return int.from_bytes(nview[off + 4 : off + 8], "big"), port


class SendBatch:
    """Up to `batch` datagrams of at most `size` bytes queued for one socket, sent by `flush`
    in one sendmmsg. A datagram that does not fit a slot is not queued (`queue*` says so)."""

    def __init__(self, fd: int, *, batch: int = 64, size: int = 2048) -> None:
        self._sendmmsg = _calls()[1]
        self.fd, self.batch, self.size = fd, batch, size
        self._buf = (ctypes.c_char * (batch * size))()
        self._names = (ctypes.c_char * (batch * _NAME_SIZE))()
        self._iov = (_IoVec * batch)()
        self._msgs = (_MMsgHdr * batch)()
        names = ctypes.addressof(self._names)
        for i in range(batch):
            self._iov[i].base = ctypes.addressof(self._buf) + i * size
            self._msgs[i].hdr.name = names + i * _NAME_SIZE
            self._msgs[i].hdr.namelen = _NAME_SIZE
            self._msgs[i].hdr.iov = ctypes.addressof(self._iov[i])
            self._msgs[i].hdr.iovlen = 1
        self._names_base = names
        self._msgs_addr = ctypes.addressof(self._msgs)
        self._msgs_ptr = ctypes.c_void_p(self._msgs_addr)
        self._view = memoryview(self._buf).cast("B")
        self._nview = memoryview(self._names).cast("B")
        self._m64 = memoryview(self._msgs).cast("B").cast("Q")
        self._iov64 = memoryview(self._iov).cast("B").cast("Q")
        self.queued = 0

    def queue(self, data: bytes | memoryview, name: int) -> bool:
        """Queue `data` to the sockaddr at address `name` (it must stay valid until `flush`,
        e.g. a `RecvBatch` slot before its next `recv`)."""
        j = self.queued
        size = len(data)
        if size > self.size or j == self.batch:
            return False
        start = j * self.size
        self._view[start : start + size] = data
        self._iov64[j * 2 + 1] = size
        self._m64[j * _MMSG_U64] = name
        self.queued = j + 1
        return True

    def queue_to(self, head: bytes, body: bytes | memoryview, name: bytes) -> bool:
        """Queue `head` + `body` (copied, no concatenation) to the sockaddr `name` (copied)."""
        j = self.queued
        first = len(head)
        size = first + len(body)
        if size > self.size or j == self.batch:
            return False
        view, start = self._view, j * self.size
        if first:
            view[start : start + first] = head
        view[start + first : start + size] = body
        self._iov64[j * 2 + 1] = size
        at = j * _NAME_SIZE
        self._nview[at : at + _NAME_SIZE] = name
        self._m64[j * _MMSG_U64] = self._names_base + at
        self.queued = j + 1
        return True

    def flush(self) -> int:
        """Send every queued datagram; returns how many the kernel did not take (UDP drops)."""
        total, sent = self.queued, 0
        if not total:
            return 0
        self.queued = 0
        while sent < total:
            start = (
                self._msgs_ptr if not sent else ctypes.c_void_p(self._msgs_addr + sent * _MMSG_SIZE)
            )
            n: int = self._sendmmsg(self.fd, start, total - sent, 0)  # type: ignore[operator]
            if n <= 0:
                break
            sent += n
        return total - sent


class MMsgSocket:
    """A listener socket's pair: a `RecvBatch` of `batch` datagrams of at most `size` bytes in,
    a `SendBatch` of `send_size`-byte slots out, on one IPv4 socket.

    Usage per wake-up: ``n = recv()``; for each i < n read `datagram(i)` / `source(i)`, queue
    answers with `queue(i, data)` (to the source of datagram i); then `flush()` sends them all.
    """

    def __init__(
        self, sock: socket.socket, *, batch: int = 64, size: int = 2048, send_size: int = 2048
    ) -> None:
        if sock.family != socket.AF_INET:
            raise ValueError("batched I/O is for IPv4 sockets")
        self.fd = sock.fileno()
        self.received = RecvBatch(batch=batch, size=size)
        self.sends = SendBatch(self.fd, batch=batch, size=send_size)
        self.batch, self.size, self.send_size = batch, size, send_size
        self.datagram = self.received.datagram
        self.source = self.received.source
        self.flush = self.sends.flush
        self._names_base = self.received.names_base

    def recv(self) -> int:
        """Datagrams received now (0 when none is waiting). Raises OSError on real errors."""
        return self.received.recv(self.fd)

    def queue(self, i: int, data: bytes) -> int:
        """Queue `data` to the source of datagram i (dropped if it does not fit a slot); what
        others queued meanwhile (`SendBatch` is shared) may have to go first: returns how
        many of those the kernel did not take."""
        sends, dropped = self.sends, 0
        if sends.queued == sends.batch:
            dropped = sends.flush()
        sends.queue(data, self._names_base + i * _NAME_SIZE)
        return dropped
