"""The bpf(2) calls the control plane needs, through ctypes: find a loaded program's maps and
read and write their elements (no libbpf at run time; `tc` loads the object).

Map and program IDs are global to the host, not per network namespace, so a program attached
inside a lab namespace is reached from here like one on the host. Every fd opened here is closed
by its owner (`Map.close`, or the `with` block). Layouts are `union bpf_attr` and the
`bpf_prog_info` / `bpf_map_info` prefixes of linux/bpf.h (stable kernel ABI).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct
from pathlib import Path
from types import TracebackType

__all__ = [
    "BpfError",
    "Map",
    "available",
    "possible_cpus",
    "program_maps",
    "program_name",
    "programs",
    "tcx_attach",
    "tcx_links",
]

_SYSCALL_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
_MAP_LOOKUP_ELEM, _MAP_UPDATE_ELEM, _MAP_DELETE_ELEM, _MAP_GET_NEXT_KEY = 1, 2, 3, 4
_PROG_GET_NEXT_ID, _PROG_GET_FD_BY_ID, _MAP_GET_FD_BY_ID, _OBJ_GET_INFO_BY_FD = 11, 13, 14, 15
_LINK_CREATE, _LINK_GET_FD_BY_ID, _LINK_GET_NEXT_ID = 28, 30, 31
_TCX_INGRESS = 46  # enum bpf_attach_type (Linux 6.6): BPF_TCX_INGRESS
_LINK_TYPE_TCX = 11
_PROG_INFO_SIZE = 224  # enough for every field up to map_ids and name
_MAP_INFO_SIZE = 88


class BpfError(OSError):
    """A bpf(2) call failed (errno and the operation in the message)."""


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def available() -> bool:
    """Whether this process can make bpf(2) calls at all (Linux, a known syscall number)."""
    return _LIBC is not None and _SYSCALL_BPF is not None


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    if _LIBC is None or _SYSCALL_BPF is None:
        raise BpfError(errno.ENOSYS, "bpf(2) is not available on this platform")
    result: int = _LIBC.syscall(_SYSCALL_BPF, cmd, attr, len(attr))
    if result < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf {what}: {os.strerror(err)}")
    return result


def possible_cpus() -> int:
    """CPUs a per-CPU map has a value for (/sys/devices/system/cpu/possible, e.g. "0-7")."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    total = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        total += int(high or low) - int(low) + 1
    return total


class Map:
    """An open BPF map: its fd, name and sizes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        info = ctypes.create_string_buffer(_MAP_INFO_SIZE)
        attr = ctypes.create_string_buffer(struct.pack("=IIQ", fd, _MAP_INFO_SIZE,
                                                       ctypes.addressof(info)), 16)  # fmt: skip
        _bpf(_OBJ_GET_INFO_BY_FD, attr, "map info")
        fields: tuple[int, ...] = struct.unpack_from("=IIIII", info.raw)
        self.type, self.id, self.key_size, self.value_size, self.max_entries = fields
        self.name = info.raw[24:40].split(b"\0", 1)[0].decode()
        self.per_cpu = self.type in (6, 10)  # BPF_MAP_TYPE_PERCPU_HASH, PERCPU_ARRAY

    @classmethod
    def by_id(cls, map_id: int) -> Map:
        attr = ctypes.create_string_buffer(struct.pack("=III", map_id, 0, 0), 16)
        return cls(_bpf(_MAP_GET_FD_BY_ID, attr, f"map id {map_id}"))

    def _value_room(self) -> int:
        if self.per_cpu:
            return ((self.value_size + 7) // 8 * 8) * possible_cpus()
        return self.value_size

    def _elem(self, cmd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None,
              flags: int, what: str) -> None:  # fmt: skip
        if len(key) != self.key_size:
            raise ValueError(f"{self.name}: key is {len(key)} bytes, the map's {self.key_size}")
        key_buf = ctypes.create_string_buffer(key, len(key))
        value_addr = 0 if value is None else ctypes.addressof(value)
        attr = ctypes.create_string_buffer(
            struct.pack("=IIQQQ", self.fd, 0, ctypes.addressof(key_buf), value_addr, flags), 32
        )
        _bpf(cmd, attr, f"{what} in {self.name}")

    def lookup(self, key: bytes) -> bytes | None:
        """The value (per-CPU maps: every CPU's, each padded to 8 bytes), or None if absent."""
        value = ctypes.create_string_buffer(self._value_room())
        try:
            self._elem(_MAP_LOOKUP_ELEM, key, value, 0, "lookup")
        except BpfError as err:
            if err.errno == errno.ENOENT:
                return None
            raise
        return value.raw

    def update(self, key: bytes, value: bytes) -> None:
        if len(value) != self.value_size or self.per_cpu:
            raise ValueError(f"{self.name}: a {self.value_size}-byte value, not per-CPU")
        self._elem(_MAP_UPDATE_ELEM, key, ctypes.create_string_buffer(value, len(value)), 0,
                   "update")  # fmt: skip

    def delete(self, key: bytes) -> bool:
        """Remove `key`; False if it was not there."""
        try:
            self._elem(_MAP_DELETE_ELEM, key, None, 0, "delete")
        except BpfError as err:
            if err.errno == errno.ENOENT:
                return False
            raise
        return True

    def list_keys(self) -> list[bytes]:
        found: list[bytes] = []
        key: bytes | None = None
        while len(found) <= self.max_entries:
            nxt = ctypes.create_string_buffer(self.key_size)
            key_buf = None if key is None else ctypes.create_string_buffer(key, len(key))
            key_addr = 0 if key_buf is None else ctypes.addressof(key_buf)
            attr = ctypes.create_string_buffer(
                struct.pack("=IIQQQ", self.fd, 0, key_addr, ctypes.addressof(nxt), 0), 32
            )
            try:
                _bpf(_MAP_GET_NEXT_KEY, attr, f"next key in {self.name}")
            except BpfError as err:
                if err.errno == errno.ENOENT:
                    break
                raise
            key = nxt.raw
            found.append(key)
        return found

    def per_cpu_sum_u64(self, key: bytes) -> int:
        """A per-CPU u64 value summed over the CPUs (0 if absent)."""
        raw = self.lookup(key)
        if raw is None:
            return 0
        return sum(struct.unpack_from("=Q", raw, i)[0] for i in range(0, len(raw), 8))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def program_maps(prog_id: int) -> dict[str, Map]:
    """The maps of the loaded program `prog_id`, open, by name (the caller closes them)."""
    attr = ctypes.create_string_buffer(struct.pack("=III", prog_id, 0, 0), 16)
    prog_fd = _bpf(_PROG_GET_FD_BY_ID, attr, f"program id {prog_id}")
    try:
        ids = (ctypes.c_uint32 * 64)()
        info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
        struct.pack_into("=IQ", info, 52, 64, ctypes.addressof(ids))  # nr_map_ids, map_ids
        attr = ctypes.create_string_buffer(struct.pack("=IIQ", prog_fd, _PROG_INFO_SIZE,
                                                       ctypes.addressof(info)), 16)  # fmt: skip
        _bpf(_OBJ_GET_INFO_BY_FD, attr, "program info")
        (count,) = struct.unpack_from("=I", info.raw, 52)
    finally:
        os.close(prog_fd)
    maps: dict[str, Map] = {}
    for map_id in ids[: min(count, 64)]:
        opened = Map.by_id(map_id)
        maps[opened.name] = opened
    return maps


def _prog_fd(prog_id: int) -> int:
    attr = ctypes.create_string_buffer(struct.pack("=III", prog_id, 0, 0), 16)
    return _bpf(_PROG_GET_FD_BY_ID, attr, f"program id {prog_id}")


def program_name(prog_id: int) -> str:
    """The name a loaded program was given (at most 15 characters), or "" if it is gone."""
    try:
        fd = _prog_fd(prog_id)
    except BpfError:
        return ""
    try:
        info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
        attr = ctypes.create_string_buffer(struct.pack("=IIQ", fd, _PROG_INFO_SIZE,
                                                       ctypes.addressof(info)), 16)  # fmt: skip
        _bpf(_OBJ_GET_INFO_BY_FD, attr, "program info")
    finally:
        os.close(fd)
    return info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")


def _next_ids(cmd: int, what: str) -> list[int]:
    found: list[int] = []
    current = 0
    while len(found) < 100_000:
        attr = ctypes.create_string_buffer(struct.pack("=III", current, 0, 0), 16)
        try:
            _bpf(cmd, attr, what)
        except BpfError as err:
            if err.errno == errno.ENOENT:
                break
            raise
        (current,) = struct.unpack_from("=I", attr.raw, 4)
        found.append(current)
    return found


def programs(name: str) -> list[int]:
    """IDs of every loaded program called `name` (host-wide)."""
    return [p for p in _next_ids(_PROG_GET_NEXT_ID, "next program") if program_name(p) == name]


def tcx_attach(prog_id: int, ifindex: int) -> int:
    """Attach the loaded program `prog_id` to `ifindex`'s ingress (in this process's network
    namespace) through a tcx link (Linux 6.6); the link fd. The program stays attached exactly
    as long as that fd is open: a process that dies, even by SIGKILL, leaves nothing behind."""
    prog_fd = _prog_fd(prog_id)
    try:
        attr = ctypes.create_string_buffer(struct.pack("=IIII", prog_fd, ifindex, _TCX_INGRESS, 0),
                                           64)  # fmt: skip
        return _bpf(_LINK_CREATE, attr, f"tcx link on ifindex {ifindex}")
    finally:
        os.close(prog_fd)


def tcx_links() -> list[tuple[int, int, int]]:
    """(link id, program id, ifindex) of every tcx link (host-wide; ifindex is its namespace's)."""
    found = []
    for link_id in _next_ids(_LINK_GET_NEXT_ID, "next link"):
        attr = ctypes.create_string_buffer(struct.pack("=III", link_id, 0, 0), 16)
        try:
            fd = _bpf(_LINK_GET_FD_BY_ID, attr, f"link id {link_id}")
        except BpfError:
            continue  # gone meanwhile
        try:
            info = ctypes.create_string_buffer(64)
            attr = ctypes.create_string_buffer(struct.pack("=IIQ", fd, 64, ctypes.addressof(info)),
                                               16)  # fmt: skip
            _bpf(_OBJ_GET_INFO_BY_FD, attr, "link info")
        finally:
            os.close(fd)
        kind, _, prog_id = struct.unpack_from("=III", info.raw)
        if kind == _LINK_TYPE_TCX:
            (ifindex,) = struct.unpack_from("=I", info.raw, 16)
            found.append((link_id, prog_id, ifindex))
    return found
