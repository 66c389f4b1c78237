"""Guest physical memory: anonymous host mappings that KVM maps into the guest.

A VMM gives KVM ordinary host memory (``mmap``) and tells it, with
``KVM_SET_USER_MEMORY_REGION``, at which guest-physical address each piece
appears. Everything the VMM later does with guest memory -- loading a kernel,
reading a virtqueue, copying a disk sector -- is a read or write of that host
memory at ``host_base + (gpa - region_start)``.

The guest chooses every address a device uses, so every access here is
checked: the address must be an ``int`` that is not negative, ``addr + size``
must not pass 2**64, and the whole access must fall inside *one* region.
Nothing here can touch host memory outside the mappings (compare rust-vmm's
``vm-memory``: invalid address, partial access, overflow).
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from typing import NewType

__all__ = [
    "FILL_CHUNK",
    "GuestAddress",
    "GuestMemory",
    "GuestMemoryError",
    "MemoryRegion",
    "PAGE_SIZE",
]

#: A guest-physical address. Its own name so that signatures say which
#: address space a number lives in (a host offset is never a GuestAddress).
GuestAddress = NewType("GuestAddress", int)

PAGE_SIZE = 4096
_ADDRESS_LIMIT = 1 << 64  # guest-physical addresses are at most 64 bits wide
#: The most bytes :meth:`GuestMemory.fill` copies at once (its pattern's largest size).
FILL_CHUNK = 1 << 20

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemoryError(Exception):
    """A guest-physical access that is out of bounds, partial or overflows."""


class MemoryRegion:
    """One contiguous piece of guest RAM backed by one anonymous mapping.

    A plain class rather than a dataclass (every command loads this module;
    see :mod:`minikvm.record`): equal only to itself, as before.
    """

    def __init__(self, guest_phys_addr: int, size: int, mapping: mmap.mmap, slot: int = 0,
                 read_only: bool = False) -> None:
        self.guest_phys_addr = guest_phys_addr
        self.size = size
        self.mapping = mapping
        self.slot = slot
        self.read_only = read_only

    def __repr__(self) -> str:
        return (f"MemoryRegion(guest_phys_addr={self.guest_phys_addr!r}, size={self.size!r}, "
                f"slot={self.slot!r}, read_only={self.read_only!r})")

    @property
    def end(self) -> int:
        """First guest-physical address after the region."""
        return self.guest_phys_addr + self.size

    @property
    def host_address(self) -> int:
        """Host virtual address of the first byte (what KVM is told)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.mapping))


def _check_range(addr: object, size: object) -> None:
    if not isinstance(addr, int) or isinstance(addr, bool):
        raise GuestMemoryError(f"guest address must be an int, not {type(addr).__name__}")
    if not isinstance(size, int) or isinstance(size, bool):
        raise GuestMemoryError(f"access size must be an int, not {type(size).__name__}")
    if addr < 0:
        raise GuestMemoryError(f"negative guest address {addr:#x}")
    if size < 0:
        raise GuestMemoryError(f"negative access size {size}")
    if addr + size > _ADDRESS_LIMIT:
        raise GuestMemoryError(f"access of {size} bytes at {addr:#x} wraps past 2**64")


class GuestMemory:
    """Guest RAM as a set of non-overlapping regions.

    >>> mem = GuestMemory.with_size(2 * 1024 * 1024)
    >>> mem.write_u32(0x1000, 0xDEADBEEF)
    >>> hex(mem.read_u32(0x1000))
    '0xdeadbeef'
    """

    def __init__(self) -> None:
        self._regions: list[MemoryRegion] = []
        # Guest-physical page numbers the VMM wrote since the last
        # take_written(), or None when nobody asked (see track_writes).
        self._written: set[int] | None = None

    @classmethod
    def with_size(cls, size: int, base: int = 0) -> GuestMemory:
        """One region of ``size`` bytes starting at guest-physical ``base``."""
        memory = cls()
        memory.add_region(base, size)
        return memory

    # -- regions ---------------------------------------------------------

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        return tuple(self._regions)

    @property
    def size(self) -> int:
        """Total bytes of RAM over all regions."""
        return sum(r.size for r in self._regions)

    def add_region(self, guest_phys_addr: int, size: int, read_only: bool = False) -> MemoryRegion:
        """Map ``size`` fresh zeroed bytes at ``guest_phys_addr``.

        KVM maps guest memory in whole pages, so both numbers must be page
        aligned; regions may not overlap.
        """
        _check_range(guest_phys_addr, size)
        if size == 0 or size % PAGE_SIZE or guest_phys_addr % PAGE_SIZE:
            raise GuestMemoryError(
                f"region {guest_phys_addr:#x}+{size:#x} must be non-empty and page aligned"
            )
        for other in self._regions:
            if guest_phys_addr < other.end and other.guest_phys_addr < guest_phys_addr + size:
                raise GuestMemoryError(
                    f"region {guest_phys_addr:#x}+{size:#x} overlaps "
                    f"{other.guest_phys_addr:#x}+{other.size:#x}"
                )
        mapping = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE)
        region = MemoryRegion(guest_phys_addr, size, mapping, slot=len(self._regions),
                              read_only=read_only)
        self._regions.append(region)
        self._regions.sort(key=lambda r: r.guest_phys_addr)
        return region

    def close(self) -> None:
        """Give the RAM back to the host now (idempotent).

        Each region is unmapped. Where a zero-copy :meth:`view` is still
        alive somewhere (a device mid-request), unmapping would leave it
        pointing at nothing, so the pages are released instead
        (``MADV_REMOVE`` frees the shared memory behind them; the view then
        reads zeros) and the mapping goes when the last view does. After
        close every access raises :class:`GuestMemoryError`.
        """
        regions, self._regions = self._regions, []
        for region in regions:
            try:
                region.mapping.close()
            except BufferError:
                try:
                    region.mapping.madvise(mmap.MADV_REMOVE)
                except (OSError, ValueError, AttributeError):
                    pass

    @property
    def closed(self) -> bool:
        return not self._regions

    def region_at(self, addr: int) -> MemoryRegion | None:
        """The region holding guest-physical ``addr``, or None."""
        for region in self._regions:
            if region.guest_phys_addr <= addr < region.end:
                return region
        return None

    def contains(self, addr: int, size: int = 1) -> bool:
        """True when ``[addr, addr+size)`` lies inside one region."""
        try:
            self._locate(addr, size)
        except GuestMemoryError:
            return False
        return True

    def _locate(self, addr: int, size: int) -> tuple[MemoryRegion, int]:
        _check_range(addr, size)
        for region in self._regions:
            if region.guest_phys_addr <= addr < region.end or (
                size == 0 and addr == region.end
            ):
                offset = addr - region.guest_phys_addr
                if offset + size > region.size:
                    raise GuestMemoryError(
                        f"access of {size} bytes at {addr:#x} runs past the end of guest RAM "
                        f"region {region.guest_phys_addr:#x}-{region.end - 1:#x}"
                    )
                return region, offset
        raise GuestMemoryError(f"guest-physical address {addr:#x} is not in guest RAM")

    # -- write tracking ----------------------------------------------------

    def track_writes(self, enabled: bool = True) -> None:
        """Remember which pages the *VMM* writes (loaders, device DMA, a debugger).

        KVM's dirty-page log (``KVM_GET_DIRTY_LOG``) sees only the guest's own
        stores, made through the guest's mapping of this memory; writes through
        the host mapping never reach it. The reverse-execution recorder needs
        both, so it turns this on. A zero-copy :meth:`view` counts as a write
        of its pages (a device may store through it). Off by default: one
        ``is None`` test per write is all it costs then.
        """
        self._written = set() if enabled else None

    def take_written(self) -> set[int]:
        """The page numbers (``address // PAGE_SIZE``) written since the last
        call, and forget them; empty when tracking is off."""
        written = self._written
        if not written:
            return set()
        self._written = set()
        return written

    def _mark(self, addr: int, size: int) -> None:
        if size > 0:
            self._written.update(range(addr // PAGE_SIZE,  # type: ignore[union-attr]
                                       (addr + size - 1) // PAGE_SIZE + 1))

    # -- bytes -------------------------------------------------------------

    def read(self, addr: int, size: int) -> bytes:
        """Copy ``size`` bytes from guest-physical ``addr``."""
        region, offset = self._locate(addr, size)
        return region.mapping[offset:offset + size]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to guest-physical ``addr``."""
        data = memoryview(data).cast("B")
        region, offset = self._locate(addr, len(data))
        region.mapping[offset:offset + len(data)] = data
        if self._written is not None:
            self._mark(addr, len(data))

    def fill(self, addr: int, size: int, byte: int = 0) -> None:
        """Set ``size`` bytes at ``addr`` to ``byte`` (zeroing a BSS, say).

        The range is written :data:`FILL_CHUNK` bytes at a time from one
        pattern of at most that size. The size comes from the image (an ELF
        or multiboot BSS may be most of guest RAM), so a pattern as large as
        the range would be a host allocation as large as the image asks for,
        and each byte would be written twice: filling 64 MiB took 140-170 ms
        that way, 75-90 ms in chunks (measured 2026-12-02; the rest is the
        host's first touch of each page)."""
        region, offset = self._locate(addr, size)
        mapping = region.mapping
        pattern = bytes((byte,)) * min(size, FILL_CHUNK)
        whole = len(pattern)   # 0 only when size is
        end = offset + size
        while end - offset >= whole > 0:
            mapping[offset:offset + whole] = pattern
            offset += whole
        if offset < end:
            mapping[offset:end] = memoryview(pattern)[:end - offset]
        if self._written is not None:
            self._mark(addr, size)

    def view(self, addr: int, size: int) -> memoryview:
        """A writable zero-copy view of guest RAM (for device DMA).

        The view aliases guest memory: the guest can change it at any time, so
        read each field once and validate what was read.
        """
        region, offset = self._locate(addr, size)
        if self._written is not None:
            self._mark(addr, size)
        return memoryview(region.mapping)[offset:offset + size]

    # -- little-endian integers -------------------------------------------

    def read_u8(self, addr: int) -> int:
        region, offset = self._locate(addr, 1)
        return region.mapping[offset]

    def read_u16(self, addr: int) -> int:
        region, offset = self._locate(addr, 2)
        return _U16.unpack_from(region.mapping, offset)[0]

    def read_u32(self, addr: int) -> int:
        region, offset = self._locate(addr, 4)
        return _U32.unpack_from(region.mapping, offset)[0]

    def read_u64(self, addr: int) -> int:
        region, offset = self._locate(addr, 8)
        return _U64.unpack_from(region.mapping, offset)[0]

    def write_u8(self, addr: int, value: int) -> None:
        region, offset = self._locate(addr, 1)
        region.mapping[offset] = value & 0xFF
        if self._written is not None:
            self._mark(addr, 1)

    def write_u16(self, addr: int, value: int) -> None:
        region, offset = self._locate(addr, 2)
        _U16.pack_into(region.mapping, offset, value & 0xFFFF)
        if self._written is not None:
            self._mark(addr, 2)

    def write_u32(self, addr: int, value: int) -> None:
        region, offset = self._locate(addr, 4)
        _U32.pack_into(region.mapping, offset, value & 0xFFFF_FFFF)
        if self._written is not None:
            self._mark(addr, 4)

    def write_u64(self, addr: int, value: int) -> None:
        region, offset = self._locate(addr, 8)
        _U64.pack_into(region.mapping, offset, value & 0xFFFF_FFFF_FFFF_FFFF)
        if self._written is not None:
            self._mark(addr, 8)

    def read_int(self, addr: int, size: int) -> int:
        """Little-endian unsigned integer of 1, 2, 4 or 8 bytes."""
        return int.from_bytes(self.read(addr, size), "little")

    def write_int(self, addr: int, size: int, value: int) -> None:
        self.write(addr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
