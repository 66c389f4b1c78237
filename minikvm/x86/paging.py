"""Page tables: building them in guest memory, and walking them like the CPU does.

With CR0.PG set, every address a guest uses is *linear* (virtual) and the CPU
translates it to a guest-physical address through tables in guest memory,
rooted at CR3. Each table is one 4 KiB page; each level uses some bits of the
linear address as an index and either points to the next table or, as a
*leaf*, to the page itself (Intel SDM vol. 3A, chapter 4):

* **32-bit paging** (CR0.PG, no CR4.PAE; SDM 4.3): 1024 entries of 4 bytes.
  Bits 31:22 index the page directory (PD), bits 21:12 the page table (PT).
  A PDE with PS set (allowed by CR4.PSE) maps a 4 MiB page itself.
* **4-level paging** (long mode: CR0.PG, CR4.PAE, EFER.LME; SDM 4.5): 512
  entries of 8 bytes. Bits 47:39 index the PML4, 38:30 the PDPT, 29:21 the
  PD, 20:12 the PT. A PDPT entry with PS maps a 1 GiB page, a PD entry with
  PS a 2 MiB page. Bits 63:48 must copy bit 47 ("canonical" addresses).

Permissions accumulate along the way (SDM 4.6): a page is writable only if
*every* entry on the path has R/W set, user-accessible only if every entry
has U/S set, and not executable if *any* entry has NX set (with EFER.NXE).

This module builds tables (identity maps for the CPU-mode setup, arbitrary
mappings for tests via :class:`PageTableBuilder`) and walks them
(:func:`walk_4level`, :func:`walk_32bit`, :func:`translate`) the way the CPU
would, reporting each level it visits, which is what the debugger shows.

What the walker checks, besides present bits: canonical addresses; reserved
bits as Intel defines them -- physical-address bits at and above MAXPHYADDR,
bit 63 when EFER.NXE is clear, PS in a PML4 entry, PS in a PDPT entry when
1 GiB pages are not offered, the unused low address bits of a large-page
leaf (bits 29:13 of a 1 GiB leaf, 20:13 of a 2 MiB leaf, 21 and the PSE-36
bits beyond MAXPHYADDR of a 4 MiB leaf). A reserved-bit fault makes the
translation invalid, as it does for ``KVM_TRANSLATE``. The walker never
writes: unlike the CPU it does not set the accessed and dirty bits. Every
table read goes through :class:`GuestMemory`; a table outside guest RAM makes
the translation invalid, never raises. PAE paging without long mode and
5-level paging are not modelled (:func:`translate` says so).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from minikvm.memory import GuestMemory, GuestMemoryError
from minikvm.x86.flags import Cr0, Cr4, Efer, PageFlag, flag_names
from minikvm.x86.layout import PAGE_TABLES_ADDR

__all__ = [
    "PAGE_4K", "PAGE_2M", "PAGE_4M", "PAGE_1G",
    "PageTableError",
    "PageTableAllocator",
    "PageTables",
    "PageTableBuilder",
    "build_identity_long_mode",
    "build_identity_32bit",
    "map_page",
    "map_page_32bit",
    "WalkStep",
    "Translation",
    "is_canonical",
    "walk_4level",
    "walk_32bit",
    "translate",
]

PAGE_4K = 4 << 10
PAGE_2M = 2 << 20
PAGE_4M = 4 << 20
PAGE_1G = 1 << 30

#: The architectural limit on physical-address width (SDM 4.1.4); a CPU
#: reports its own, smaller MAXPHYADDR in CPUID 0x8000_0008.
MAX_PHYADDR_BITS = 52

# (level name, shift of the address bits it indexes)
_LEVELS_4 = (("PML4", 39), ("PDPT", 30), ("PD", 21), ("PT", 12))
_LEVELS_32 = (("PD", 22), ("PT", 12))

# Which 4-level level a leaf of each size lives in, and which 32-bit one.
_LEAF_LEVEL_4 = {PAGE_1G: 1, PAGE_2M: 2, PAGE_4K: 3}
_LEAF_LEVEL_32 = {PAGE_4M: 0, PAGE_4K: 1}

# Bits of an entry that are flags (the rest are address or ignored bits).
_FLAG_BITS = 0x1FF | PageFlag.NX
# Flags a caller may ask for on a leaf; PRESENT and PS are set by the builder.
_LEAF_FLAGS = (PageFlag.RW | PageFlag.USER | PageFlag.PWT | PageFlag.PCD | PageFlag.ACCESSED
               | PageFlag.DIRTY | PageFlag.GLOBAL | PageFlag.NX)
# Upper-level entries the builders create: present, writable, user. They
# allow everything, so that the leaf alone decides a page's permissions.
_TABLE_FLAGS = PageFlag.PRESENT | PageFlag.RW | PageFlag.USER


def _bits(low: int, high: int) -> int:
    """Mask of bits ``low``..``high`` inclusive (0 when ``low > high``)."""
    if low > high:
        return 0
    return ((1 << (high - low + 1)) - 1) << low


def _size_name(size: int) -> str:
    return f"{size >> 30} GiB" if size >= PAGE_1G else (
        f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB")


class PageTableError(ValueError):
    """A page table cannot be built as asked (no room, overlap, bad alignment)."""


# -- building ------------------------------------------------------------------


class PageTableAllocator:
    """Hands out zeroed 4 KiB pages for tables from ``[base, end)`` of guest RAM.

    ``end=None`` means: until guest RAM ends.
    """

    def __init__(self, memory: GuestMemory, base: int, end: int | None = None) -> None:
        if base % PAGE_4K or (end is not None and end % PAGE_4K):
            raise PageTableError(f"page-table area {base:#x}-{end!r} must be 4 KiB aligned")
        self.memory = memory
        self.base = base
        self.end = end
        self.next = base

    @property
    def used(self) -> int:
        """Bytes handed out so far."""
        return self.next - self.base

    def alloc(self) -> int:
        """A fresh zeroed table; its guest-physical address."""
        addr = self.next
        if self.end is not None and addr + PAGE_4K > self.end:
            raise PageTableError(
                f"page-table area {self.base:#x}-{self.end - 1:#x} is full "
                f"({self.used // PAGE_4K} tables)")
        try:
            self.memory.fill(addr, PAGE_4K, 0)
        except GuestMemoryError:
            raise PageTableError(f"a page table at {addr:#x} would lie outside guest RAM") from None
        self.next = addr + PAGE_4K
        return addr


@dataclass(frozen=True)
class PageTables:
    """What an identity-map builder wrote: CR3's table and the memory it used."""

    root: int          # guest-physical address of the top table: the value for CR3
    start: int         # first byte the tables occupy
    end: int           # first byte after them
    page_size: int     # size of the leaf pages
    size_mapped: int   # linear = physical for [0, size_mapped)

    @property
    def table_count(self) -> int:
        return (self.end - self.start) // PAGE_4K


def _write_entries(memory: GuestMemory, table: int, entries: list[int], entry_size: int) -> None:
    fmt = "<%d%s" % (len(entries), "Q" if entry_size == 8 else "I")
    memory.write(table, struct.pack(fmt, *entries))


def _build_identity(memory: GuestMemory, allocator: PageTableAllocator, start: int, size: int,
                    shift: int, leaf_shift: int, step: int, entry_size: int,
                    leaf_flags: int, table_flags: int) -> int:
    """One table covering ``[start, start+size)``, each entry spanning ``1 << shift``.

    Entries at ``leaf_shift`` map pages; above it they point to child tables
    built the same way, depth first (so the tables lie in walk order).
    """
    table = allocator.alloc()
    span = 1 << shift
    entries = []
    for addr in range(start, start + size, span):
        if shift == leaf_shift:
            entries.append(addr | leaf_flags)
        else:
            child = _build_identity(memory, allocator, addr, min(span, start + size - addr),
                                    shift - step, leaf_shift, step, entry_size,
                                    leaf_flags, table_flags)
            entries.append(child | table_flags)
    _write_entries(memory, table, entries, entry_size)
    return table


def _check_identity_request(size_to_map: int, page_size: int, limit: int, tables: int,
                            base: int, end: int | None) -> None:
    if size_to_map <= 0 or size_to_map % page_size:
        raise PageTableError(f"size to map {size_to_map:#x} must be a positive multiple of "
                             f"the page size {_size_name(page_size)}")
    if size_to_map > limit:
        raise PageTableError(f"size to map {size_to_map:#x} exceeds {limit:#x}")
    if end is not None and base + tables * PAGE_4K > end:
        raise PageTableError(
            f"mapping {_size_name(size_to_map)} with {_size_name(page_size)} pages needs "
            f"{tables} tables ({tables * 4} KiB); {base:#x}-{end - 1:#x} holds "
            f"{(end - base) // PAGE_4K}")


def build_identity_long_mode(memory: GuestMemory, base: int = PAGE_TABLES_ADDR,
                             size_to_map: int = 4 << 30, page_size: int = PAGE_2M, *,
                             end: int | None = None,
                             flags: PageFlag = PageFlag.RW) -> PageTables:
    """4-level tables at ``base`` mapping linear ``[0, size_to_map)`` to the same physical.

    With 2 MiB pages (the default) 4 GiB take six tables: one PML4, one
    PDPT, four PDs of 512 large pages each. 4 KiB pages need a PT per 2 MiB;
    1 GiB pages need only a PML4 and a PDPT (but the guest's CPUID must offer
    them, ``pdpe1gb``, or KVM treats the PS bit as reserved). Raises
    PageTableError when the tables would not fit below ``end``.
    """
    if page_size not in _LEAF_LEVEL_4:
        raise PageTableError(f"4-level paging has 4 KiB, 2 MiB and 1 GiB pages, not {page_size:#x}")
    gib = -(-size_to_map // PAGE_1G)
    tables = 2 + (gib if page_size < PAGE_1G else 0) + (
        -(-size_to_map // PAGE_2M) if page_size == PAGE_4K else 0)
    _check_identity_request(size_to_map, page_size, 512 * PAGE_1G, tables, base, end)
    allocator = PageTableAllocator(memory, base, end)
    leaf_flags = (flags & _LEAF_FLAGS) | PageFlag.PRESENT | (
        PageFlag.PS if page_size != PAGE_4K else 0)
    leaf_shift = page_size.bit_length() - 1
    root = _build_identity(memory, allocator, 0, size_to_map, 39, leaf_shift, 9, 8,
                           int(leaf_flags), int(_TABLE_FLAGS))
    return PageTables(root, base, allocator.next, page_size, size_to_map)


def build_identity_32bit(memory: GuestMemory, base: int = PAGE_TABLES_ADDR,
                         large_pages: bool = True, size_to_map: int = 4 << 30, *,
                         end: int | None = None,
                         flags: PageFlag = PageFlag.RW) -> PageTables:
    """32-bit tables at ``base`` mapping linear ``[0, size_to_map)`` to the same physical.

    With ``large_pages`` (needs CR4.PSE) one page directory of 4 MiB pages
    maps all 4 GiB. With 4 KiB pages each 4 MiB needs a page table of its
    own, so map only what is needed (guest RAM, rounded up to 4 MiB).
    """
    page_size = PAGE_4M if large_pages else PAGE_4K
    tables = 1 + (0 if large_pages else -(-size_to_map // PAGE_4M))
    _check_identity_request(size_to_map, page_size, 1 << 32, tables, base, end)
    if flags & PageFlag.NX:
        raise PageTableError("32-bit paging has no NX bit")
    allocator = PageTableAllocator(memory, base, end)
    leaf_flags = (flags & _LEAF_FLAGS) | PageFlag.PRESENT | (PageFlag.PS if large_pages else 0)
    root = _build_identity(memory, allocator, 0, size_to_map, 22, 22 if large_pages else 12,
                           10, 4, int(leaf_flags), int(_TABLE_FLAGS))
    return PageTables(root, base, allocator.next, page_size, size_to_map)


def _check_leaf_flags(flags: int, allow_nx: bool) -> None:
    if flags & ~_LEAF_FLAGS & ~PageFlag.PRESENT:
        raise PageTableError(f"flags {flags:#x} may only hold permission and caching bits "
                             "(PRESENT and PS are set by the builder)")
    if flags & PageFlag.NX and not allow_nx:
        raise PageTableError("32-bit paging has no NX bit")


def _read_entry(memory: GuestMemory, addr: int, size: int) -> int:
    try:
        return memory.read_u64(addr) if size == 8 else memory.read_u32(addr)
    except GuestMemoryError:
        raise PageTableError(f"page-table entry at {addr:#x} is outside guest RAM") from None


def _map(memory: GuestMemory, root: int, vaddr: int, leaf_entry: int, leaf_depth: int,
         levels: tuple[tuple[str, int], ...], entry_size: int,
         allocator: PageTableAllocator) -> None:
    table = root
    index_mask = (PAGE_4K // entry_size) - 1
    address_mask = _bits(12, MAX_PHYADDR_BITS - 1) if entry_size == 8 else _bits(12, 31)
    for depth, (name, shift) in enumerate(levels):
        index = (vaddr >> shift) & index_mask
        entry_addr = table + index * entry_size
        entry = _read_entry(memory, entry_addr, entry_size)
        if depth == leaf_depth:
            if entry & PageFlag.PRESENT:
                raise PageTableError(f"{vaddr:#x} is already mapped ({name} entry {index})")
            memory.write_int(entry_addr, entry_size, leaf_entry)
            return
        if entry & PageFlag.PRESENT:
            if entry & PageFlag.PS:
                raise PageTableError(f"{vaddr:#x} lies in a large page that {name} "
                                     f"entry {index} already maps")
            table = entry & address_mask
        else:
            table = allocator.alloc()
            memory.write_int(entry_addr, entry_size, table | _TABLE_FLAGS)


def map_page(memory: GuestMemory, root: int, vaddr: int, paddr: int, size: int,
             flags: int, allocator: PageTableAllocator) -> None:
    """Map one 4 KiB, 2 MiB or 1 GiB page in the 4-level tables rooted at ``root``.

    ``flags`` are the leaf's permission and caching bits (``PageFlag.RW``,
    ``USER``, ``NX``, ...); PRESENT and PS are added here. Missing tables
    come from ``allocator`` and are created present, writable and user, so
    that the leaf alone decides the permissions. Raises PageTableError for a
    misaligned or non-canonical address, an address already mapped, or a
    table outside guest RAM.
    """
    if size not in _LEAF_LEVEL_4:
        raise PageTableError(f"4-level paging has 4 KiB, 2 MiB and 1 GiB pages, not {size:#x}")
    if not is_canonical(vaddr) or vaddr % size:
        raise PageTableError(f"virtual address {vaddr:#x} must be canonical and "
                             f"{_size_name(size)} aligned")
    if not 0 <= paddr < 1 << MAX_PHYADDR_BITS or paddr % size:
        raise PageTableError(f"physical address {paddr:#x} must be below 2**52 and "
                             f"{_size_name(size)} aligned")
    _check_leaf_flags(flags, allow_nx=True)
    leaf = paddr | flags | PageFlag.PRESENT | (PageFlag.PS if size != PAGE_4K else 0)
    _map(memory, root, vaddr, int(leaf), _LEAF_LEVEL_4[size], _LEVELS_4, 8, allocator)


def map_page_32bit(memory: GuestMemory, root: int, vaddr: int, paddr: int, size: int,
                   flags: int, allocator: PageTableAllocator) -> None:
    """Map one 4 KiB or 4 MiB page in the 32-bit tables rooted at ``root``.

    A 4 MiB page may lie above 4 GiB (up to 2**40): PSE-36 keeps physical
    bits 39:32 in PDE bits 20:13 (SDM 4.3, table 4-4).
    """
    if size not in _LEAF_LEVEL_32:
        raise PageTableError(f"32-bit paging has 4 KiB and 4 MiB pages, not {size:#x}")
    if not 0 <= vaddr < 1 << 32 or vaddr % size:
        raise PageTableError(f"virtual address {vaddr:#x} must be 32-bit and "
                             f"{_size_name(size)} aligned")
    phys_limit = 1 << (40 if size == PAGE_4M else 32)
    if not 0 <= paddr < phys_limit or paddr % size:
        raise PageTableError(f"physical address {paddr:#x} must be below {phys_limit:#x} and "
                             f"{_size_name(size)} aligned")
    _check_leaf_flags(flags, allow_nx=False)
    if size == PAGE_4M:
        leaf = (paddr & 0xFFC0_0000) | (paddr >> 32) << 13 | PageFlag.PS
    else:
        leaf = paddr
    leaf |= flags | PageFlag.PRESENT
    _map(memory, root, vaddr, int(leaf), _LEAF_LEVEL_32[size], _LEVELS_32, 4, allocator)


class PageTableBuilder:
    """Arbitrary mappings, for tests and lessons: a root table and an allocator.

    >>> mem = GuestMemory.with_size(2 << 20)
    >>> tables = PageTableBuilder(mem, 0x70000, 0x80000)
    >>> tables.map(0x7F00_0000_0000, 0x150000, PAGE_4K, PageFlag.RW)
    >>> walk_4level(mem, tables.cr3, 0x7F00_0000_0123).physical == 0x150123
    True
    """

    def __init__(self, memory: GuestMemory, base: int, end: int | None = None, *,
                 four_level: bool = True) -> None:
        self.memory = memory
        self.four_level = four_level
        self.allocator = PageTableAllocator(memory, base, end)
        self.root = self.allocator.alloc()

    @property
    def cr3(self) -> int:
        """The value to load into CR3."""
        return self.root

    def map(self, vaddr: int, paddr: int, size: int, flags: int = PageFlag.RW) -> None:
        """Map one page (see :func:`map_page` and :func:`map_page_32bit`)."""
        mapper = map_page if self.four_level else map_page_32bit
        mapper(self.memory, self.root, vaddr, paddr, size, flags, self.allocator)


# -- walking ---------------------------------------------------------------------


@dataclass(frozen=True)
class WalkStep:
    """One entry the walk read: which table, which index, what it held."""

    level: str           # "PML4", "PDPT", "PD" or "PT"
    table: int           # guest-physical address of the table
    index: int           # which entry of it the linear address selected
    entry_address: int   # guest-physical address of the entry
    entry: int           # its raw value
    entry_size: int      # 8 (4-level) or 4 (32-bit)
    leaf: bool = False   # this entry maps the page (PT entry or PS set)
    address: int | None = None  # next table or page frame it points to (None: not present)
    reserved: int = 0    # reserved bits found set (a fault)

    @property
    def flags(self) -> PageFlag:
        return PageFlag(self.entry & _FLAG_BITS)

    @property
    def present(self) -> bool:
        return bool(self.entry & PageFlag.PRESENT)

    @property
    def writable(self) -> bool:
        return bool(self.entry & PageFlag.RW)

    @property
    def user(self) -> bool:
        return bool(self.entry & PageFlag.USER)

    @property
    def nx(self) -> bool:
        return bool(self.entry & PageFlag.NX)

    @property
    def large(self) -> bool:
        """PS set in a PDPT or PD entry: the entry maps a large page."""
        return self.level in ("PDPT", "PD") and bool(self.entry & PageFlag.PS)

    @property
    def accessed(self) -> bool:
        return bool(self.entry & PageFlag.ACCESSED)

    @property
    def dirty(self) -> bool:
        return bool(self.entry & PageFlag.DIRTY)

    def describe(self) -> str:
        """``PD[2] @0x72010 = 0x0000000000400083 PS|RW|PRESENT -> 2 MiB page 0x400000``."""
        text = (f"{self.level}[{self.index}] @{self.entry_address:#x} = "
                f"{self.entry:#0{2 + 2 * self.entry_size}x} {flag_names(self.flags)}")
        if self.reserved:
            return f"{text} reserved bits {self.reserved:#x}"
        if self.address is None:
            return f"{text} not present"
        return f"{text} -> {'page' if self.leaf else 'table'} {self.address:#x}"


@dataclass
class Translation:
    """The outcome of a page walk: a physical address, or why there is none.

    ``writable``/``user``/``nx`` are the permissions accumulated over every
    entry of the walk (SDM 4.6): writable iff all entries allow writes, user
    iff all allow ring 3, nx iff any forbids execution. They are meaningful
    only when ``valid``. Without paging the translation is the identity and
    allows everything.
    """

    virtual: int
    physical: int | None
    valid: bool
    page_size: int | None
    levels: list[WalkStep] = field(default_factory=list)
    writable: bool = False
    user: bool = False
    nx: bool = False
    fault_reason: str | None = None
    paging: str = "none"   # "none", "32-bit" or "4-level"

    def describe(self) -> str:
        """Several lines: the result, then one line per entry read."""
        if self.valid:
            size = f"{_size_name(self.page_size)} page, " if self.page_size else ""
            perms = ("W" if self.writable else "R") + (" U" if self.user else " S") + (
                " NX" if self.nx else " X")
            head = f"{self.virtual:#x} -> {self.physical:#x} ({size}{perms})"
        else:
            head = f"{self.virtual:#x} -> invalid: {self.fault_reason}"
        return "\n".join([head] + ["  " + step.describe() for step in self.levels])


def _invalid(vaddr: int, reason: str, steps: list[WalkStep], paging: str) -> Translation:
    return Translation(vaddr, None, False, None, steps, fault_reason=reason, paging=paging)


def _valid(vaddr: int, physical: int, page_size: int, steps: list[WalkStep], nxe: bool,
           paging: str) -> Translation:
    return Translation(
        vaddr, physical, True, page_size, steps,
        writable=all(step.writable for step in steps),
        user=all(step.user for step in steps),
        nx=nxe and any(step.nx for step in steps),
        paging=paging,
    )


def is_canonical(vaddr: int, width: int = 48) -> bool:
    """True when bits 63:``width-1`` of a 64-bit address are all equal (SDM 3.3.7.1)."""
    if not 0 <= vaddr < 1 << 64:
        return False
    top = vaddr >> (width - 1)
    return top == 0 or top == (1 << (65 - width)) - 1


def _reserved_4level(level: str, entry: int, nxe: bool, gbpages: bool, maxphyaddr: int) -> int:
    """Reserved bits set in a present 4-level entry (SDM 4.5, tables 4-14..4-20)."""
    reserved = entry & _bits(maxphyaddr, MAX_PHYADDR_BITS - 1)
    if not nxe:
        reserved |= entry & PageFlag.NX
    if level == "PML4":
        reserved |= entry & PageFlag.PS
    elif level == "PDPT" and entry & PageFlag.PS:
        if gbpages:
            reserved |= entry & _bits(13, 29)
        else:
            reserved |= PageFlag.PS  # no 1 GiB pages: PS itself is reserved here
    elif level == "PD" and entry & PageFlag.PS:
        reserved |= entry & _bits(13, 20)
    return int(reserved)


def walk_4level(memory: GuestMemory, cr3: int, vaddr: int, *, nxe: bool = True,
                gbpages: bool = True, maxphyaddr: int = MAX_PHYADDR_BITS) -> Translation:
    """Translate ``vaddr`` through the 4-level tables at ``cr3`` (SDM 4.5).

    ``nxe`` is EFER.NXE (else bit 63 is reserved), ``gbpages`` whether 1 GiB
    pages exist, ``maxphyaddr`` the CPU's physical-address width.
    """
    paging = "4-level"
    if not is_canonical(vaddr):
        return _invalid(vaddr, f"{vaddr:#x} is not canonical: bits 63:47 must all be equal",
                        [], paging)
    maxphyaddr = max(32, min(maxphyaddr, MAX_PHYADDR_BITS))
    address_mask = _bits(12, maxphyaddr - 1)
    table = cr3 & address_mask
    steps: list[WalkStep] = []
    for name, shift in _LEVELS_4:
        index = (vaddr >> shift) & 0x1FF
        entry_address = table + index * 8
        try:
            entry = memory.read_u64(entry_address)
        except GuestMemoryError:
            return _invalid(vaddr, f"{name} table at {table:#x} is outside guest RAM",
                            steps, paging)
        step = dict(level=name, table=table, index=index, entry_address=entry_address,
                    entry=entry, entry_size=8)
        if not entry & PageFlag.PRESENT:
            steps.append(WalkStep(**step))
            return _invalid(vaddr, f"{name} entry {index} not present", steps, paging)
        reserved = _reserved_4level(name, entry, nxe, gbpages, maxphyaddr)
        if reserved:
            steps.append(WalkStep(**step, reserved=reserved))
            return _invalid(vaddr, f"{name} entry {index} has reserved bits set ({reserved:#x})",
                            steps, paging)
        if name == "PT" or entry & PageFlag.PS:
            page_size = 1 << shift
            frame = entry & address_mask & ~(page_size - 1)
            steps.append(WalkStep(**step, leaf=True, address=frame))
            return _valid(vaddr, frame | (vaddr & (page_size - 1)), page_size, steps, nxe, paging)
        table = entry & address_mask
        steps.append(WalkStep(**step, address=table))
    raise AssertionError("unreachable: the PT level is always a leaf")


def walk_32bit(memory: GuestMemory, cr3: int, vaddr: int, *, pse: bool = True,
               maxphyaddr: int = 40) -> Translation:
    """Translate ``vaddr`` through the 32-bit tables at ``cr3`` (SDM 4.3).

    ``pse`` is CR4.PSE: without it a PDE's PS bit is ignored and every PDE
    points to a page table. ``maxphyaddr`` bounds the PSE-36 bits of a 4 MiB
    leaf (at most 40 bits in 32-bit paging).
    """
    paging = "32-bit"
    if not 0 <= vaddr < 1 << 32:
        return _invalid(vaddr, f"{vaddr:#x} is wider than the 32-bit linear addresses "
                               "of 32-bit paging", [], paging)
    high_bits = max(0, min(maxphyaddr, 40) - 32)  # PSE-36: physical bits 39:32 in PDE 20:13
    table = cr3 & _bits(12, 31)
    steps: list[WalkStep] = []
    for name, shift in _LEVELS_32:
        index = (vaddr >> shift) & 0x3FF
        entry_address = table + index * 4
        try:
            entry = memory.read_u32(entry_address)
        except GuestMemoryError:
            return _invalid(vaddr, f"{name} table at {table:#x} is outside guest RAM",
                            steps, paging)
        step = dict(level=name, table=table, index=index, entry_address=entry_address,
                    entry=entry, entry_size=4)
        if not entry & PageFlag.PRESENT:
            steps.append(WalkStep(**step))
            return _invalid(vaddr, f"{name} entry {index} not present", steps, paging)
        if name == "PD" and pse and entry & PageFlag.PS:
            reserved = entry & (_bits(13 + high_bits, 20) | 1 << 21)
            if reserved:
                steps.append(WalkStep(**step, reserved=reserved))
                return _invalid(vaddr, f"PD entry {index} has reserved bits set ({reserved:#x})",
                                steps, paging)
            frame = (entry & 0xFFC0_0000) | ((entry >> 13) & 0xFF) << 32
            steps.append(WalkStep(**step, leaf=True, address=frame))
            return _valid(vaddr, frame | (vaddr & (PAGE_4M - 1)), PAGE_4M, steps, False, paging)
        if name == "PT":
            frame = entry & _bits(12, 31)
            steps.append(WalkStep(**step, leaf=True, address=frame))
            return _valid(vaddr, frame | (vaddr & (PAGE_4K - 1)), PAGE_4K, steps, False, paging)
        table = entry & _bits(12, 31)
        steps.append(WalkStep(**step, address=table))
    raise AssertionError("unreachable: the PT level is always a leaf")


def translate(memory: GuestMemory, sregs: Any, vaddr: int, *, gbpages: bool = True,
              maxphyaddr: int = MAX_PHYADDR_BITS) -> Translation:
    """Translate a linear address the way the vCPU described by ``sregs`` would.

    ``sregs`` is a ``kvm_sregs`` or anything with ``cr0``, ``cr3``, ``cr4``
    and ``efer``. The paging mode follows CR0.PG, CR4.PAE and EFER.LMA (SDM
    4.1.1). Segmentation is not applied: ``vaddr`` is already linear.

    To agree with ``KVM_TRANSLATE`` on a vCPU whose CPUID was never set,
    pass ``gbpages=False, maxphyaddr=36``: KVM's software walker takes both
    from the guest's CPUID, which then offers no 1 GiB pages and KVM's
    default of 36 address bits. (``KVM_TRANSLATE`` reports ``writeable=1``
    and ``usermode=0`` whatever the tables say; compare only ``valid`` and
    the physical address.)
    """
    cr0, cr3, cr4, efer = (int(sregs.cr0), int(sregs.cr3), int(sregs.cr4), int(sregs.efer))
    if not 0 <= vaddr < 1 << 64:
        return _invalid(vaddr, f"{vaddr:#x} is not a 64-bit address", [], "none")
    if not cr0 & Cr0.PG:
        if vaddr >= 1 << 32:
            return _invalid(vaddr, f"{vaddr:#x} is wider than the 32-bit linear addresses "
                                   "used without paging", [], "none")
        return Translation(vaddr, vaddr, True, None, [], writable=True, user=True)
    if efer & Efer.LMA:
        if cr4 & Cr4.LA57:
            return _invalid(vaddr, "5-level paging (CR4.LA57) is not modelled", [], "5-level")
        return walk_4level(memory, cr3, vaddr, nxe=bool(efer & Efer.NXE), gbpages=gbpages,
                           maxphyaddr=maxphyaddr)
    if cr4 & Cr4.PAE:
        return _invalid(vaddr, "PAE paging without long mode is not modelled", [], "PAE")
    return walk_32bit(memory, cr3, vaddr, pse=bool(cr4 & Cr4.PSE),
                      maxphyaddr=min(maxphyaddr, 40))
