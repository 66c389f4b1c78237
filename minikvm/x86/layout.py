"""The machine's guest-physical memory map: where the VMM puts what.

A real PC's firmware leaves tables in memory before it jumps to a boot loader;
our VMM plays firmware, so it too writes a few structures into guest RAM before
the first ``KVM_RUN``: the GDT (every mode except real mode uses it, and real
mode gets it too, see :mod:`minikvm.x86.modes`) and the page tables (paged and
long mode). This module is the one place that says where. Guests, lessons,
the loaders and the debugger all rely on it, so every number here is part of
the guest contract (DESIGN.md) and is repeated in ``docs/memory-map.md``.

RAM starts at guest-physical 0 (2 MiB by default):

=========================  ==============================================================
guest-physical             what
=========================  ==============================================================
0x0000_0000-0x0000_04FF    real-mode IVT and BIOS data area: left zero (no BIOS here)
0x0000_0500-0x0000_05FF    ``GDT_ADDR``: the flat GDT the VMM writes (selectors below)
0x0000_0600-0x0000_0FFF    free
0x0000_1000-...            ``FLAT_LOAD_ADDR``: flat binaries are loaded and started here
...-0x0000_7BFF            real-mode stack, grows down from ``STACK_TOP_REAL`` = 0x7C00
0x0006_0000-0x0006_0FFF    ``RESULT_ADDR``: a page guests fill with results for the host
0x0006_1000-0x0006_EFFF    32/64-bit stack, grows down from ``STACK_TOP`` = 0x6F000
0x0006_F000-0x0006_FFFF    free (slack between the stack and the page tables)
0x0007_0000-0x0007_FFFF    ``PAGE_TABLES_ADDR``: the VMM's identity page tables
0x0008_0000-0x000F_FFFF    free (this machine has no VGA hole and no BIOS ROM)
0x0010_0000-end of RAM     ``ELF_LOAD_MIN``: ELF guests are linked at 1 MiB
=========================  ==============================================================

Outside RAM (nothing is stored there, but the addresses are taken):

=========================  ==============================================================
0xD000_0000-...            virtio-mmio windows, 4 KiB each (DESIGN.md, guest contract)
0xFFFB_C000-0xFFFB_CFFF    ``KVM_IDENTITY_MAP_ADDR``: page KVM uses on Intel (see below)
0xFFFB_D000-0xFFFB_FFFF    ``KVM_TSS_ADDR``: three pages KVM uses on Intel (see below)
=========================  ==============================================================

The two KVM areas exist because Intel VT-x without "unrestricted guest"
cannot run real-mode or unpaged code directly: KVM runs it in virtual-8086
mode (which needs a TSS) or under an identity page table of its own. KVM
keeps those structures in guest-physical memory, so the VMM must name
addresses no guest RAM or device uses (``KVM_SET_TSS_ADDR``,
``KVM_SET_IDENTITY_MAP_ADDR``; Documentation/virt/kvm/api.rst). AMD and
kvm-pvm ignore them. They sit just below the 4 GiB line, clear of the
virtio windows and of RAM.
"""

from __future__ import annotations

from minikvm.record import FrozenRecord

__all__ = [
    "RAM_BASE",
    "IVT_BDA_ADDR", "IVT_BDA_END",
    "GDT_ADDR", "GDT_END",
    "SEL_NULL", "SEL_CODE64", "SEL_CODE32", "SEL_DATA",
    "FLAT_LOAD_ADDR",
    "STACK_TOP_REAL",
    "RESULT_ADDR",
    "STACK_TOP",
    "PAGE_TABLES_ADDR", "PAGE_TABLES_END",
    "ELF_LOAD_MIN",
    "VIRTIO_MMIO_BASE",
    "KVM_IDENTITY_MAP_ADDR", "KVM_TSS_ADDR", "KVM_TSS_SIZE",
    "MapEntry", "MEMORY_MAP", "VMM_RESERVED", "map_entry_at",
]

KiB = 1024
MiB = 1024 * KiB

#: Guest RAM starts at guest-physical address 0.
RAM_BASE = 0

#: The real-mode interrupt vector table (256 far pointers) and the BIOS data
#: area after it. No BIOS runs here, so the VMM leaves them zero.
IVT_BDA_ADDR = 0x0000
IVT_BDA_END = 0x0500

#: The VMM's GDT: the first conventional-memory byte a BIOS leaves free.
#: 256 bytes are set aside (room for 32 descriptors); 4 are used.
GDT_ADDR = 0x0500
GDT_END = 0x0600

# Selectors into that GDT (index * 8, table indicator 0, RPL 0).
SEL_NULL = 0x00    # the null descriptor: the CPU never loads it
SEL_CODE64 = 0x08  # 64-bit code, ring 0 (long mode CS)
SEL_CODE32 = 0x10  # 32-bit flat code, ring 0 (protected and paged mode CS)
SEL_DATA = 0x18    # flat read/write data, ring 0 (DS, ES, FS, GS, SS)

#: Where flat binaries are loaded and started by default (``--load-addr``).
#: The assembly guests are linked for it (guests/Makefile).
FLAT_LOAD_ADDR = 0x1000

#: Initial SP of real-mode guests (SS = 0). The stack must sit inside SS's
#: 64 KiB; 0x7C00 is where a BIOS puts a boot sector and, by the same
#: tradition, the top of the boot stack. It leaves 0x1000-0x7BFF (27 KiB)
#: for a real-mode program and its stack together.
STACK_TOP_REAL = 0x7C00

#: A page that C guests fill with results for the host to check
#: (guests/include/guest.h). The VMM never writes it.
RESULT_ADDR = 0x60000

#: Initial RSP/ESP of protected, paged and long mode guests. The stack grows
#: down towards ``RESULT_ADDR`` + 4 KiB: 56 KiB. 16-byte aligned, as the
#: SysV ABI wants at a function's entry.
STACK_TOP = 0x6F000

#: The VMM's page tables: 64 KiB, 16 pages. Long mode uses 6 of them
#: (PML4, PDPT, 4 PDs of 2 MiB pages for the first 4 GiB); 32-bit paging
#: with 4 MiB pages uses 1 (a page directory); with 4 KiB pages a page
#: directory and one page table per 4 MiB mapped (at most 15).
PAGE_TABLES_ADDR = 0x70000
PAGE_TABLES_END = 0x80000

#: C guests (ELF) are linked at 1 MiB (guests/c/guest.ld), above everything
#: the VMM writes.
ELF_LOAD_MIN = 0x100000

#: The first virtio-mmio window (DESIGN.md); not RAM.
VIRTIO_MMIO_BASE = 0xD000_0000

#: ``KVM_SET_IDENTITY_MAP_ADDR``: one page, just below the TSS.
KVM_IDENTITY_MAP_ADDR = 0xFFFB_C000

#: ``KVM_SET_TSS_ADDR``: KVM uses three pages from here.
KVM_TSS_ADDR = 0xFFFB_D000
KVM_TSS_SIZE = 3 * 4 * KiB


class MapEntry(FrozenRecord):
    """One range of the memory map: ``[start, end)``, a short name and why
    (a frozen record, :mod:`minikvm.record`)."""

    __slots__ = ("start", "end", "name", "description")
    start: int
    end: int
    name: str
    description: str

    def __init__(self, start: int, end: int, name: str, description: str) -> None:
        self._set(start=start, end=end, name=name, description=description)

    def __contains__(self, addr: object) -> bool:
        return isinstance(addr, int) and self.start <= addr < self.end

    def overlaps(self, start: int, size: int) -> bool:
        """True when ``[start, start+size)`` shares a byte with this range."""
        return size > 0 and start < self.end and self.start < start + size


#: The map above as data, in address order (the TUI and docs show it).
MEMORY_MAP: tuple[MapEntry, ...] = (
    MapEntry(IVT_BDA_ADDR, IVT_BDA_END, "IVT/BDA", "real-mode interrupt vectors, BIOS data (zero)"),
    MapEntry(GDT_ADDR, GDT_END, "GDT", "flat GDT written by the VMM"),
    MapEntry(FLAT_LOAD_ADDR, STACK_TOP_REAL, "flat image", "flat binaries load here; "
             "the real-mode stack grows down from 0x7C00"),
    MapEntry(RESULT_ADDR, RESULT_ADDR + 4 * KiB, "results", "guests leave results here"),
    MapEntry(RESULT_ADDR + 4 * KiB, STACK_TOP, "stack", "32/64-bit stack, grows down"),
    MapEntry(PAGE_TABLES_ADDR, PAGE_TABLES_END, "page tables", "identity page tables of the VMM"),
    MapEntry(ELF_LOAD_MIN, VIRTIO_MMIO_BASE, "ELF image", "ELF guests are linked from 1 MiB on"),
    MapEntry(VIRTIO_MMIO_BASE, VIRTIO_MMIO_BASE + 0x10_0000, "virtio-mmio",
             "virtio-mmio windows (not RAM)"),
    MapEntry(KVM_IDENTITY_MAP_ADDR, KVM_IDENTITY_MAP_ADDR + 4 * KiB, "KVM identity map",
             "KVM_SET_IDENTITY_MAP_ADDR (not RAM)"),
    MapEntry(KVM_TSS_ADDR, KVM_TSS_ADDR + KVM_TSS_SIZE, "KVM TSS", "KVM_SET_TSS_ADDR (not RAM)"),
)

#: What the VMM itself writes: a loader refuses to put an image there, since
#: setting up the CPU mode would overwrite it.
VMM_RESERVED: tuple[MapEntry, ...] = (
    MEMORY_MAP[1],  # GDT
    MEMORY_MAP[5],  # page tables
)


def map_entry_at(addr: int) -> MapEntry | None:
    """The memory-map entry holding ``addr`` (the first one, in address order)."""
    for entry in MEMORY_MAP:
        if addr in entry:
            return entry
    return None
