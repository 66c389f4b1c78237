"""Exercise 14, a WRONG solution the tests use: the values looked for at desc_offset.

KVM_GET_STATS_FD on a vCPU gives a read-only file: a header, an id string,
one descriptor per statistic (16 bytes of fields, then the name padded with
NULs to name_size bytes), and the data -- the values themselves. The checker
opens a fresh vCPU's file and calls ``find_stat(fd, name)`` for every
statistic it offers and for two names it does not, and compares each answer
with where KVM put the values. The task (14_stats.md).
Check with:  minikvm lesson check 14
"""

import os
import struct

#: struct kvm_stats_header: flags, name_size, num_desc, id_offset, desc_offset, data_offset
HEADER = struct.Struct("<6I")
#: struct kvm_stats_desc without its name: flags, exponent, size, offset, bucket_size
DESC = struct.Struct("<IhHII")


def find_stat(fd: int, name: str) -> tuple[int, int] | None:
    """Where the statistic ``name`` lies -- but counted from the descriptors."""
    flags, name_size, num_desc, id_offset, desc_offset, data_offset = HEADER.unpack(
        os.pread(fd, HEADER.size, 0))
    stride = DESC.size + name_size
    for index in range(num_desc):
        raw = os.pread(fd, stride, desc_offset + index * stride)
        _flags, _exponent, size, offset, _bucket_size = DESC.unpack_from(raw)
        if raw[DESC.size:].rstrip(b"\0").decode() == name:
            return desc_offset + offset, size
    return None
