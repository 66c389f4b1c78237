"""Guest memory in a snapshot: only the pages that are not all zeros.

A 256 MiB guest that touched 1 MiB should give a file of about 1 MiB. A
fresh machine's RAM is zero-filled (anonymous memory), so a page that is
zero needs no saving: restoring writes only the pages in the file.

Finding the non-zero pages without reading all of RAM: reading an untouched
page of shared anonymous memory would allocate it, and comparing 256 MiB
costs time. Linux tells which pages of our mapping exist at all:
``/proc/self/pagemap`` has 8 bytes per virtual page, bit 63 "present" and
bit 62 "swapped" (Documentation/admin-guide/mm/pagemap.rst). A page the
guest never wrote was never faulted in -- KVM faults guest pages into our
page tables when the guest touches them (get_user_pages) -- so only the
present ones are compared with zero. Where pagemap cannot be read every
page is compared. (Firecracker's diff snapshots ask KVM instead, with
``KVM_GET_DIRTY_LOG``; that needs dirty logging on from the start.)

One ``MEMR`` section per RAM region (index: its slot):

============  =====================================================
``<QQI``      region base (guest-physical), size, number of runs
``<II`` × n   each run: first page, page count (sorted, disjoint)
data          the runs' pages, 4 KiB each, in order
============  =====================================================
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from minikvm.snapshot.format import Section, SnapshotError

__all__ = ["PAGE_SIZE", "RegionImage", "capture_region", "present_pages"]

PAGE_SIZE = 4096
_HEAD = struct.Struct("<QQI")
_RUN = struct.Struct("<II")
_ZERO_PAGE = bytes(PAGE_SIZE)
_PAGEMAP = "/proc/self/pagemap"
_PRESENT_OR_SWAPPED = (1 << 63) | (1 << 62)
#: Pages looked at per pagemap read (2 MiB of guest memory, 4 KiB of entries).
_CHUNK_PAGES = 512


@dataclass
class RegionImage:
    """The non-zero pages of one RAM region: runs of (first page, count)."""

    slot: int
    base: int
    size: int
    runs: list[tuple[int, int]]
    data: bytes

    @property
    def pages(self) -> int:
        return sum(count for _, count in self.runs)

    def section(self) -> Section:
        head = _HEAD.pack(self.base, self.size, len(self.runs))
        runs = b"".join(_RUN.pack(first, count) for first, count in self.runs)
        return Section(b"MEMR", self.slot, head + runs + self.data)

    @classmethod
    def from_section(cls, section: Section) -> RegionImage:
        """Parse and check a ``MEMR`` section: runs inside the region, in
        order, not overlapping, and exactly as much data as they say."""
        payload = section.payload
        if len(payload) < _HEAD.size:
            raise SnapshotError(f"section {section.name} is too short for a memory region")
        base, size, count = _HEAD.unpack_from(payload)
        if base % PAGE_SIZE or size % PAGE_SIZE or not size:
            raise SnapshotError(f"section {section.name}: region {base:#x}+{size:#x} is not "
                                "page aligned")
        pages = size // PAGE_SIZE
        if count > pages or _HEAD.size + count * _RUN.size > len(payload):
            raise SnapshotError(f"section {section.name}: {count} runs do not fit")
        runs = []
        end = 0
        for i in range(count):
            first, length = _RUN.unpack_from(payload, _HEAD.size + i * _RUN.size)
            if length == 0 or first < end or first + length > pages:
                raise SnapshotError(f"section {section.name}: run {i} (pages {first}+{length}) "
                                    "is empty, out of order or outside the region")
            runs.append((first, length))
            end = first + length
        data = payload[_HEAD.size + count * _RUN.size:]
        if len(data) != sum(n for _, n in runs) * PAGE_SIZE:
            raise SnapshotError(f"section {section.name}: the runs name "
                                f"{sum(n for _, n in runs)} pages but hold {len(data)} bytes")
        return cls(section.index, base, size, runs, data)

    def restore(self, mapping: mmap.mmap) -> None:
        """Write the pages into a zero-filled region's mapping."""
        offset = 0
        for first, count in self.runs:
            length = count * PAGE_SIZE
            mapping[first * PAGE_SIZE:first * PAGE_SIZE + length] = \
                self.data[offset:offset + length]
            offset += length


def present_pages(address: int, pages: int) -> Iterator[int] | None:
    """The pages (numbers from 0) of the mapping at host ``address`` that
    exist in RAM or swap, from ``/proc/self/pagemap``; None where it
    cannot be read (then every page must be looked at)."""
    try:
        fd = os.open(_PAGEMAP, os.O_RDONLY)
    except OSError:
        return None
    try:
        entries = os.pread(fd, pages * 8, (address // PAGE_SIZE) * 8)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(entries) != pages * 8:
        return None
    return _present_in(entries, pages)


def _present_in(entries: bytes, pages: int) -> Iterator[int]:
    empty = bytes(_CHUNK_PAGES * 8)
    for start in range(0, pages, _CHUNK_PAGES):
        chunk = entries[start * 8:(start + _CHUNK_PAGES) * 8]
        if chunk == empty[:len(chunk)]:
            continue   # 2 MiB never touched: the common case, one comparison
        for i, (entry,) in enumerate(struct.iter_unpack("<Q", chunk)):
            if entry & _PRESENT_OR_SWAPPED:
                yield start + i


def capture_region(slot: int, base: int, mapping: mmap.mmap, host_address: int) -> RegionImage:
    """The non-zero pages of one region, as runs."""
    pages = len(mapping) // PAGE_SIZE
    candidates = present_pages(host_address, pages)
    if candidates is None:
        candidates = iter(range(pages))
    runs: list[tuple[int, int]] = []
    parts: list[bytes] = []
    for page in candidates:
        data = mapping[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        if data == _ZERO_PAGE:
            continue
        parts.append(data)
        if runs and runs[-1][0] + runs[-1][1] == page:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((page, 1))
    return RegionImage(slot, base, len(mapping), runs, b"".join(parts))
