"""Exercise 14, a reference solution: find a statistic in KVM's binary statistics file.

KVM_GET_STATS_FD on a vCPU gives a read-only file: a header, an id string,
one descriptor per statistic (16 bytes of fields, then the name padded with
NULs to name_size bytes), and the data -- the values themselves. The checker
opens a fresh vCPU's file and calls ``find_stat(fd, name)`` for every
statistic it offers and for two names it does not, and compares each answer
with where KVM put the values; then asks a few again on a file of its own,
the same statistics laid out another way the header allows. The task
(14_stats.md).
Check with:  minikvm lesson check 14
"""

import os
import struct

#: struct kvm_stats_header: flags, name_size, num_desc, id_offset, desc_offset, data_offset
HEADER = struct.Struct("<6I")
#: struct kvm_stats_desc without its name: flags, exponent, size, offset, bucket_size
DESC = struct.Struct("<IhHII")


def find_stat(fd: int, name: str) -> tuple[int, int] | None:
    """Where the statistic ``name`` lies in the statistics file ``fd``:
    (the byte offset of its first value in the file, its number of u64
    values), or None when the file has no statistic of that name.

    Read with ``os.pread(fd, size, offset)``: the file cannot seek.
    """
    flags, name_size, num_desc, id_offset, desc_offset, data_offset = HEADER.unpack(
        os.pread(fd, HEADER.size, 0))
    stride = DESC.size + name_size
    descriptors = os.pread(fd, num_desc * stride, desc_offset)
    for start in range(0, num_desc * stride, stride):
        _flags, _exponent, size, offset, _bucket_size = DESC.unpack_from(descriptors, start)
        padded = descriptors[start + DESC.size:start + stride]
        if padded.split(b"\0", 1)[0].decode() == name:
            return data_offset + offset, size     # offset counts from the data block
    return None
