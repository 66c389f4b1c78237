"""KVM's binary statistics: a vCPU's counters, read while it runs.

KVM counts things per VM and per vCPU (exits, halt polls, page faults ...)
and hands the counters out as a read-only file: ``KVM_GET_STATS_FD`` on a
VM or vCPU fd returns a new fd (Documentation/virt/kvm/api.rst,
"KVM_GET_STATS_FD"; the reading side is virt/kvm/binary_stats.c). The file
is laid out as

* a header (:class:`~minikvm.kvm.uapi.kvm_stats_header`): where the id
  string, the descriptors and the data begin, how many statistics there
  are, how long their names may be;
* one descriptor per statistic (:class:`~minikvm.kvm.uapi.kvm_stats_desc`,
  followed by its NUL-padded name): its type and unit in ``flags``, how many
  u64 values it has (``size``: one for a counter, several for a histogram),
  and ``offset``, where they lie from the start of the data;
* the data: the values, read fresh from the kernel's counters on each
  ``pread``.

The layout never changes while the fd is open, so :class:`KvmStats` reads it
once; after that one statistic is one ``pread`` of eight bytes at a fixed
place. The kernel copies the values straight out of ``struct kvm_vcpu``
(``kvm_vcpu_stats_read``, virt/kvm/kvm_main.c) without taking the vCPU's
mutex -- so another thread can read them while the vCPU is inside
``KVM_RUN``, which no ioctl on the vCPU fd can (each waits for that mutex
until the next exit).

The one minikvm reads is ``blocking``: ``kvm_vcpu_block``
(virt/kvm/kvm_main.c) sets it to 1 when the vCPU goes to sleep inside
``KVM_RUN`` -- a ``hlt`` the in-kernel LAPIC handles, an AP waiting for its
startup IPI -- and back to 0 when it wakes. The watchdog reads it to see,
without kicking it, that a vCPU stopped running
(:class:`~minikvm.core.runner.Watchdog`).
Older kernels have the fd but not that statistic; :meth:`KvmStats.reader`
then returns None and the caller does without.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable
from typing import NamedTuple

from minikvm.kvm.fd import KvmFd
from minikvm.kvm.uapi import kvm_stats_desc, kvm_stats_header

__all__ = ["KvmStats", "StatDescriptor", "StatsError", "read_layout"]

#: Bounds on what a header may claim before we allocate for it (the kernel
#: has ~50 vCPU statistics with names of 48 bytes; ``KVM_STATS_NAME_SIZE``).
MAX_STATS = 4096
MAX_NAME_SIZE = 4096
_HEADER_SIZE = ctypes.sizeof(kvm_stats_header)
_DESC_SIZE = ctypes.sizeof(kvm_stats_desc)
_U64 = struct.Struct("<Q")


class StatsError(ValueError):
    """The statistics file does not look as its header says."""


class StatDescriptor(NamedTuple):
    """One descriptor of a statistics file (``struct kvm_stats_desc`` and the
    name after it), and where it was found. (A named tuple, not a dataclass:
    this module is on ``minikvm run``'s path, which imports no
    ``dataclasses``: tests/test_startup_path.py.)"""

    name: str
    #: Type, unit and base (``KVM_STATS_TYPE_*``, ``KVM_STATS_UNIT_*``,
    #: ``KVM_STATS_BASE_*`` in minikvm/kvm/uapi.py) and the base's exponent.
    flags: int
    exponent: int
    #: How many u64 values the statistic has (more than one: a histogram).
    size: int
    #: Where its first value lies, in bytes from the start of the data block.
    offset: int
    bucket_size: int
    #: Its place among the descriptors, and its own position in the file.
    index: int
    at: int


def read_layout(fd: int) -> tuple[kvm_stats_header, list[StatDescriptor]]:
    """The header of the statistics file ``fd`` and all of its descriptors,
    read with ``pread`` (the file has no position to keep). A header that
    claims more than :data:`MAX_STATS` statistics or names of 0 or more than
    :data:`MAX_NAME_SIZE` bytes, or a file that ends early, is a
    :class:`StatsError`: the sizes come from the kernel, but nothing is
    allocated on a number read from a file without a bound."""
    header = kvm_stats_header.from_buffer_copy(_pread_exactly(fd, _HEADER_SIZE, 0))
    if header.num_desc > MAX_STATS or not 0 < header.name_size <= MAX_NAME_SIZE:
        raise StatsError(f"a header claiming {header.num_desc} statistics with names "
                         f"of {header.name_size} bytes")
    stride = _DESC_SIZE + header.name_size
    block = _pread_exactly(fd, stride * header.num_desc, header.desc_offset)
    found = []
    for index, start in enumerate(range(0, len(block), stride)):
        desc = kvm_stats_desc.from_buffer_copy(block, start)
        raw = block[start + _DESC_SIZE:start + stride]
        name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        found.append(StatDescriptor(name, desc.flags, desc.exponent, desc.size, desc.offset,
                                    desc.bucket_size, index, header.desc_offset + start))
    return header, found


def _pread_exactly(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise StatsError(f"{size} bytes at offset {offset} asked, {len(data)} read")
    return data


class KvmStats(KvmFd):
    """The binary statistics fd of a VM or vCPU (``KVM_GET_STATS_FD``).

    ``fd`` is the new fd the ioctl returned; this object owns it. The
    layout is read here (:func:`read_layout`: :attr:`header`,
    :attr:`descriptors`): :attr:`names` lists the statistics, :meth:`read`
    reads one, :meth:`reader` makes a cheap callable for one read often.
    """

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        try:
            self.header, self.descriptors = read_layout(fd)
        except BaseException:
            self.close()
            raise
        self.data_offset = self.header.data_offset
        #: Each statistic's place in the data and its number of u64 values.
        self._places = {desc.name: (desc.offset, desc.size) for desc in self.descriptors}

    @property
    def names(self) -> list[str]:
        """The statistics this fd offers, in the kernel's order."""
        return list(self._places)

    def read(self, name: str) -> int:
        """The (first) value of the statistic ``name``; KeyError if there is none."""
        offset, _ = self._places[name]
        return _U64.unpack(_pread_exactly(self.fd, 8, self.data_offset + offset))[0]

    def reader(self, name: str) -> Callable[[], int] | None:
        """A callable returning the statistic ``name`` (its first value) on
        each call: one ``pread``, nothing looked up. None if this kernel
        does not offer it, or it has no value to read (one trial read is
        made here). After :meth:`close` the callable returns 0 without
        reading: the fd number may belong to another file by then. A read
        that fails raises :class:`OSError` or :class:`StatsError`."""
        place = self._places.get(name)
        if place is None or place[1] < 1:
            return None
        at, pread = self.data_offset + place[0], os.pread

        def read() -> int:
            fd = self.fd
            if fd < 0:
                return 0
            data = pread(fd, 8, at)
            if len(data) != 8:
                raise StatsError(f"{name}: {len(data)} bytes read at offset {at}, not 8")
            return _U64.unpack(data)[0]

        try:
            read()
        except (OSError, StatsError):
            return None
        return read
