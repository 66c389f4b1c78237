"""Putting a vCPU in a CPU mode: real, 32-bit protected, 32-bit paged, long.

A real PC starts in real mode and its boot code climbs through the modes
itself: load a GDT, set CR0.PE, far-jump; build page tables, set CR3 and
CR0.PG; for long mode also CR4.PAE and EFER.LME first. A VMM can skip the
climb: ``KVM_SET_SREGS`` writes the control registers and the hidden parts of
the segment registers directly, so the guest's first instruction already runs
in the mode it was built for. The VMM still has to leave in guest memory what
the CPU would read later -- the GDT, the page tables -- because the guest
will use them (an interrupt return reloads CS from the GDT, every memory
access walks the page tables). Where they go is fixed by
:mod:`minikvm.x86.layout`.

One function per mode, each a recipe a reader can check against the Intel SDM
vol. 3A (2.5 control registers, 9.8 "Software initialization for
protected-mode operation", 9.8.5 "Initializing IA-32e mode"):

* :func:`setup_real_mode` -- segments are ``selector * 16``; nothing else.
* :func:`setup_protected_mode` -- flat GDT, CR0.PE, 32-bit code segment.
* :func:`setup_paged_mode` -- the same plus 32-bit paging: identity page
  directory with 4 MiB pages (CR4.PSE) or 4 KiB page tables, CR3, CR0.PG.
* :func:`setup_long_mode` -- 4-level identity tables (2 MiB pages by
  default), CR4.PAE, EFER.LME and LMA, CR0.PG, 64-bit code segment.

Every function takes ``sregs`` and ``regs`` by duck typing: a ``kvm_sregs``
and ``kvm_regs`` from ``KVM_GET_SREGS``/``KVM_GET_REGS``, or anything with the
same attribute names. It fills them in place (the caller writes them back
with ``KVM_SET_SREGS``/``KVM_SET_REGS``) and returns a :class:`ModeSetup`
saying what it put where. General-purpose registers other than RSP are left
as they were.

No IDT is installed in protected, paged or long mode (IDTR limit 0): any
exception becomes a triple fault, which KVM reports as a shutdown exit --
for these small guests a crash that says "stop" is what we want.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

from minikvm.memory import GuestMemory, GuestMemoryError
from minikvm.record import FrozenRecord
from minikvm.x86 import flags
from minikvm.x86.flags import Cr0, Rflags, SegmentType, SystemSegmentType
from minikvm.x86.gdt import (
    FLAT_CODE32,
    FLAT_CODE64,
    FLAT_DATA,
    SegmentDescriptor,
    load_segment,
    write_gdt,
)
from minikvm.x86.layout import (
    FLAT_LOAD_ADDR,
    GDT_ADDR,
    PAGE_TABLES_ADDR,
    PAGE_TABLES_END,
    SEL_CODE32,
    SEL_CODE64,
    SEL_DATA,
    STACK_TOP,
    STACK_TOP_REAL,
)

if TYPE_CHECKING:
    from minikvm.x86.paging import PageTables

#: 2 MiB and 4 MiB pages (:data:`minikvm.x86.paging.PAGE_2M`, ``PAGE_4M``).
#: The page-table builder itself is imported by the two paged modes only: a
#: real-mode or flat protected-mode guest (``minikvm run hello.bin``) starts
#: without loading it.
_PAGE_2M = 2 << 20
_PAGE_4M = 4 << 20

__all__ = [
    "CpuMode",
    "ModeError",
    "ModeSetup",
    "setup_real_mode",
    "setup_protected_mode",
    "setup_paged_mode",
    "setup_long_mode",
    "setup_mode",
    "cpu_mode_of",
    "code_bitness",
]


class CpuMode(str, Enum):
    """The four modes a guest can be started in (``minikvm run --mode``)."""

    REAL = "real"            # 16-bit, segment * 16 + offset, 1 MiB
    PROTECTED = "protected"  # 32-bit, flat segments, no paging
    PAGED = "paged"          # 32-bit with 32-bit paging
    LONG = "long"            # 64-bit (IA-32e), 4-level paging


class ModeError(ValueError):
    """The CPU mode cannot be set up as asked (entry unreachable, RAM too small)."""


class ModeSetup(FrozenRecord):
    """What a setup function did: the mode, where the CPU starts, what it
    wrote (a frozen record, :mod:`minikvm.record`)."""

    __slots__ = ("mode", "entry", "stack_top", "gdt_addr", "gdt_limit", "page_tables")
    mode: CpuMode
    entry: int
    stack_top: int
    gdt_addr: int | None
    gdt_limit: int | None
    page_tables: PageTables | None

    def __init__(self, mode: CpuMode, entry: int, stack_top: int, gdt_addr: int | None = None,
                 gdt_limit: int | None = None, page_tables: PageTables | None = None) -> None:
        self._set(mode=mode, entry=entry, stack_top=stack_top, gdt_addr=gdt_addr,
                  gdt_limit=gdt_limit, page_tables=page_tables)


# Control-register values shared by the modes, with the reason for each bit.
#
# CR0.ET reads as 1 on every CPU since the 486. CR0.CD and CR0.NW, set at
# power-on (and in KVM's reset state), are left clear: that is the state an
# OS runs in, with caches on; on AMD hosts the guest's CD really disables
# caching and makes the guest crawl.
_CR0_REAL = Cr0.ET
# PE: descriptors, not selector * 16. MP and NE: the modern x87 setup (WAIT
# honours TS; x87 errors raise #MF instead of going through the PIC).
_CR0_PROTECTED = Cr0.PE | Cr0.MP | Cr0.ET | Cr0.NE
# PG: translate through CR3. WP: read-only pages are read-only for ring 0 too.
_CR0_PAGED = _CR0_PROTECTED | Cr0.PG | Cr0.WP


def _cr4_sse() -> int:
    """OSFXSR and OSXMMEXCPT: the "OS" saves SSE state and handles SIMD faults,
    so SSE instructions run instead of raising #UD. x86-64 compilers use SSE
    for floating point and to copy memory; the guests here need no OS to allow
    it. (CR4, like EFER, is ``flags.Cr4``: built when first used, which a
    real-mode start never does.)"""
    return flags.Cr4.OSFXSR | flags.Cr4.OSXMMEXCPT


_REAL_MODE_LIMIT = 1 << 20  # real mode reaches 1 MiB (plus the HMA; not used here)
_IVT_LIMIT = 256 * 4 - 1     # 256 real-mode vectors of 4 bytes


def _segment_reset_state(sregs: Any) -> None:
    """TR and LDTR as a vCPU has them after reset (SDM 9.1.1, table 9-1).

    The guests here use neither, but VM entry checks them: TR must hold a
    busy TSS and be present (SDM vol. 3C, 26.3.1.2). KVM's reset values are
    these; set here so that a state built from scratch passes too.
    """
    load_segment(sregs.tr, 0, SegmentDescriptor(limit=0xFFFF, type=SystemSegmentType.TSS_BUSY, s=0))
    load_segment(sregs.ldt, 0, SegmentDescriptor(limit=0xFFFF, type=SystemSegmentType.LDT, s=0))


def _flat_segments(sregs: Any, code_selector: int, code: SegmentDescriptor) -> None:
    """CS from ``code``; DS, ES, FS, GS, SS the flat data segment."""
    load_segment(sregs.cs, code_selector, code)
    for name in ("ds", "es", "fs", "gs", "ss"):
        load_segment(getattr(sregs, name), SEL_DATA, FLAT_DATA)


def _load_gdt(memory: GuestMemory, sregs: Any) -> int:
    """Write the flat GDT at GDT_ADDR and point GDTR at it; return the limit."""
    try:
        limit = write_gdt(memory, GDT_ADDR)
    except GuestMemoryError:
        raise ModeError(f"the GDT at {GDT_ADDR:#x} is not in guest RAM") from None
    sregs.gdt.base = GDT_ADDR
    sregs.gdt.limit = limit
    return limit


def _no_idt(sregs: Any) -> None:
    sregs.idt.base = 0
    sregs.idt.limit = 0


def _start(regs: Any, entry: int, stack_top: int) -> None:
    regs.rip = entry
    regs.rsp = stack_top
    # Bit 1 always reads 1; IF clear: no interrupt until the guest asks.
    regs.rflags = Rflags.FIXED


def _check_start(memory: GuestMemory, where: str, entry: int, entry_limit: int,
                 stack_top: int, stack_limit: int) -> None:
    """Entry and stack must be reachable in the mode and lie in guest RAM."""
    if not isinstance(entry, int) or not 0 <= entry < entry_limit:
        shown = f"{entry:#x}" if isinstance(entry, int) else repr(entry)
        raise ModeError(f"entry {shown} is out of reach in {where} "
                        f"(must be below {entry_limit:#x})")
    if not isinstance(stack_top, int) or not 0 < stack_top <= stack_limit:
        shown = f"{stack_top:#x}" if isinstance(stack_top, int) else repr(stack_top)
        raise ModeError(f"stack top {shown} is out of reach in {where} "
                        f"(must be 1..{stack_limit:#x})")
    if not memory.contains(entry):
        raise ModeError(f"entry {entry:#x} is not in guest RAM")
    if not memory.contains(stack_top - 1):
        raise ModeError(f"the stack below {stack_top:#x} is not in guest RAM")


def _ram_top(memory: GuestMemory) -> int:
    return max((region.end for region in memory.regions), default=0)


def setup_real_mode(memory: GuestMemory, sregs: Any, regs: Any, entry: int = FLAT_LOAD_ADDR, *,
                    stack_top: int = STACK_TOP_REAL) -> ModeSetup:
    """Start in real mode at physical ``entry`` (below 1 MiB), SS:SP = 0:``stack_top``.

    Real mode computes ``segment * 16 + offset``, so entry ``0x1000`` is
    ``CS = 0, IP = 0x1000``; an entry above 64 KiB gets ``CS = entry's 64 KiB
    block / 16`` and ``IP = entry % 64 KiB``. The hidden segment parts KVM
    wants are those real mode implies: base ``selector * 16``, limit 64 KiB,
    16-bit, present. The flat GDT is written and GDTR loaded too, so that a
    real-mode guest can enter protected mode with ``mov cr0`` and a far jump
    to ``SEL_CODE32`` and no table of its own.
    """
    _check_start(memory, "real mode", entry, _REAL_MODE_LIMIT, stack_top, 0xFFFF)

    code_selector = (entry & 0xF_0000) >> 4
    code = SegmentDescriptor(base=code_selector << 4, limit=0xFFFF,
                             type=SegmentType.EXECUTABLE | SegmentType.RW | SegmentType.ACCESSED)
    data = SegmentDescriptor(limit=0xFFFF, type=SegmentType.RW | SegmentType.ACCESSED)
    load_segment(sregs.cs, code_selector, code)
    for name in ("ds", "es", "fs", "gs", "ss"):
        load_segment(getattr(sregs, name), 0, data)
    _segment_reset_state(sregs)
    limit = _load_gdt(memory, sregs)
    sregs.idt.base = 0               # the real-mode IVT at address 0
    sregs.idt.limit = _IVT_LIMIT

    sregs.cr0 = _CR0_REAL            # PE clear: real mode; PG clear
    sregs.cr3 = 0
    sregs.cr4 = 0
    sregs.efer = 0
    _start(regs, entry & 0xFFFF, stack_top)
    return ModeSetup(CpuMode.REAL, entry, stack_top, GDT_ADDR, limit)


def setup_protected_mode(memory: GuestMemory, sregs: Any, regs: Any, entry: int, *,
                         stack_top: int = STACK_TOP) -> ModeSetup:
    """Start in 32-bit protected mode without paging, flat 4 GiB segments.

    CS = ``SEL_CODE32`` (32-bit code), the other segments ``SEL_DATA``;
    CR0.PE on, paging off: linear addresses are physical.
    """
    _check_start(memory, "protected mode", entry, 1 << 32, stack_top, 1 << 32)

    limit = _load_gdt(memory, sregs)
    _flat_segments(sregs, SEL_CODE32, FLAT_CODE32)
    _segment_reset_state(sregs)
    _no_idt(sregs)

    sregs.cr0 = _CR0_PROTECTED
    sregs.cr3 = 0
    sregs.cr4 = _cr4_sse()
    sregs.efer = 0
    _start(regs, entry, stack_top)
    return ModeSetup(CpuMode.PROTECTED, entry, stack_top, GDT_ADDR, limit)


def setup_paged_mode(memory: GuestMemory, sregs: Any, regs: Any, entry: int, *,
                     stack_top: int = STACK_TOP, large_pages: bool = True,
                     size_to_map: int | None = None) -> ModeSetup:
    """Start in 32-bit protected mode with 32-bit paging, identity-mapped.

    ``large_pages`` (default): one page directory of 4 MiB pages maps all
    4 GiB; CR4.PSE lets a PDE map a page. Otherwise page tables of 4 KiB
    pages map ``size_to_map`` bytes (default: guest RAM rounded up to 4 MiB;
    the page-table area holds tables for at most 60 MiB).
    """
    from minikvm.x86.paging import PageTableError, build_identity_32bit

    _check_start(memory, "paged mode", entry, 1 << 32, stack_top, 1 << 32)
    if size_to_map is None:
        size_to_map = 1 << 32 if large_pages else -(-_ram_top(memory) // _PAGE_4M) * _PAGE_4M
    _check_start(memory, "paged mode (identity-mapped range)", entry, size_to_map,
                 stack_top, size_to_map)
    try:
        tables = build_identity_32bit(memory, PAGE_TABLES_ADDR, large_pages, size_to_map,
                                      end=PAGE_TABLES_END)
    except PageTableError as err:
        raise ModeError(f"cannot build the page tables: {err}") from None

    limit = _load_gdt(memory, sregs)
    _flat_segments(sregs, SEL_CODE32, FLAT_CODE32)
    _segment_reset_state(sregs)
    _no_idt(sregs)

    sregs.cr3 = tables.root          # the page directory (PCD, PWT clear: cached)
    sregs.cr4 = _cr4_sse() | (flags.Cr4.PSE if large_pages else 0)
    sregs.efer = 0
    sregs.cr0 = _CR0_PAGED
    _start(regs, entry, stack_top)
    return ModeSetup(CpuMode.PAGED, entry, stack_top, GDT_ADDR, limit, tables)


def setup_long_mode(memory: GuestMemory, sregs: Any, regs: Any, entry: int, *,
                    stack_top: int = STACK_TOP, page_size: int = _PAGE_2M,
                    size_to_map: int = 4 << 30, nxe: bool = False) -> ModeSetup:
    """Start in 64-bit long mode with the first ``size_to_map`` bytes identity-mapped.

    Long mode needs paging, and paging with PAE-format 64-bit entries: CR4.PAE,
    EFER.LME, CR0.PG (SDM 9.8.5). On hardware, setting CR0.PG with LME makes
    the CPU set EFER.LMA; KVM_SET_SREGS takes the state *after* that step, so
    LMA is set here and KVM checks it is consistent. CS gets ``SEL_CODE64``:
    L=1 is what makes the code 64-bit (with L=0 the CPU would run 32-bit
    "compatibility mode"). ``nxe`` sets EFER.NXE; only ask for it when the
    guest's CPUID (KVM_SET_CPUID2) offers NX, or KVM refuses the state.
    """
    from minikvm.x86.paging import PageTableError, build_identity_long_mode

    _check_start(memory, "long mode (identity-mapped range)", entry, size_to_map,
                 stack_top, size_to_map)
    try:
        tables = build_identity_long_mode(memory, PAGE_TABLES_ADDR, size_to_map, page_size,
                                          end=PAGE_TABLES_END)
    except PageTableError as err:
        raise ModeError(f"cannot build the page tables: {err}") from None

    limit = _load_gdt(memory, sregs)
    _flat_segments(sregs, SEL_CODE64, FLAT_CODE64)
    _segment_reset_state(sregs)
    _no_idt(sregs)

    sregs.cr3 = tables.root          # the PML4
    sregs.cr4 = flags.Cr4.PAE | _cr4_sse()   # PAE: 64-bit entries, required by long mode
    efer = flags.Efer
    sregs.efer = efer.LME | efer.LMA | (efer.NXE if nxe else 0)
    sregs.cr0 = _CR0_PAGED
    _start(regs, entry, stack_top)
    return ModeSetup(CpuMode.LONG, entry, stack_top, GDT_ADDR, limit, tables)


_SETUP = {
    CpuMode.REAL: setup_real_mode,
    CpuMode.PROTECTED: setup_protected_mode,
    CpuMode.PAGED: setup_paged_mode,
    CpuMode.LONG: setup_long_mode,
}


def setup_mode(mode: CpuMode | str, memory: GuestMemory, sregs: Any, regs: Any, entry: int,
               **options: Any) -> ModeSetup:
    """Call the setup function of ``mode`` (a CpuMode or its name, e.g. ``"long"``)."""
    try:
        mode = CpuMode(mode)
    except ValueError:
        names = ", ".join(m.value for m in CpuMode)
        raise ModeError(f"unknown CPU mode {mode!r}: choose one of {names}") from None
    return _SETUP[mode](memory, sregs, regs, entry, **options)


def cpu_mode_of(sregs: Any) -> CpuMode:
    """The mode the registers describe: CR0.PE, then EFER.LMA, then CR0.PG.

    Long mode includes compatibility mode (a 32-bit CS in long mode); PAE
    paging without long mode counts as PAGED.
    """
    cr0, efer = int(sregs.cr0), int(sregs.efer)
    if not cr0 & Cr0.PE:
        return CpuMode.REAL
    if efer & flags.Efer.LMA:
        return CpuMode.LONG
    if cr0 & Cr0.PG:
        return CpuMode.PAGED
    return CpuMode.PROTECTED


def code_bitness(sregs: Any, rflags: int | None = None) -> int:
    """16, 32 or 64: how the CPU decodes instructions now (SDM 3.4.5, the L and D bits).

    Real mode and virtual-8086 mode (RFLAGS.VM, when ``rflags`` is given) are
    16-bit; in long mode CS.L selects 64-bit; otherwise CS.D/B picks 32 or 16.
    The debugger disassembles with this.
    """
    if not int(sregs.cr0) & Cr0.PE or (rflags is not None and rflags & Rflags.VM):
        return 16
    if int(sregs.efer) & flags.Efer.LMA and sregs.cs.l:
        return 64
    return 32 if sregs.cs.db else 16
