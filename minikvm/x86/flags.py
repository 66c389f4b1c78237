"""Named bits of the x86 control registers, EFER, RFLAGS, descriptors and page tables.

Every bit a VMM sets to put a vCPU in a CPU mode is named here, with one line
saying what the CPU does with it. Section numbers are those of the Intel SDM
vol. 3A (control registers: 2.5; EFER: 2.2.1 and table 2-1 of vol. 4;
RFLAGS: vol. 1, 3.4.3; segment descriptors: 3.4.5; paging entries: 4.3 and
4.5). The class members are short (``Cr0.PE``); the module-level aliases carry
the prefix the Linux headers use for them without ``X86_`` (``CR0_PE``,
``EFER_LME``), so that a grep of a kernel or of kvm-hello-world finds them.

``IntFlag`` values combine with ``|`` and print their names, which the
debugger uses: ``flag_names(Cr0(0x80000011))`` is ``'PG|ET|PE'``.

Every command loads this module, and an enum costs ~25-40 us per member to
create. Those a start in real mode needs (``Cr0``, ``Rflags``,
``SegmentType``, ``SystemSegmentType``) are built at import; ``Cr4``,
``Efer`` and ``PageFlag`` -- where they stand, in a function -- on first use,
with the ``CR4_``/``EFER_`` aliases (:mod:`minikvm.kvm.lazy`):
``from minikvm.x86.flags import Cr4`` works as before.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from minikvm.kvm.lazy import lazy_enums

__all__ = [
    "Cr0", "Cr4", "Efer", "Rflags", "SegmentType", "SystemSegmentType", "PageFlag",
    "flag_names",
    "CR0_PE", "CR0_MP", "CR0_EM", "CR0_TS", "CR0_ET", "CR0_NE", "CR0_WP", "CR0_AM",
    "CR0_NW", "CR0_CD", "CR0_PG",
    "CR4_VME", "CR4_PVI", "CR4_TSD", "CR4_DE", "CR4_PSE", "CR4_PAE", "CR4_MCE", "CR4_PGE",
    "CR4_PCE", "CR4_OSFXSR", "CR4_OSXMMEXCPT", "CR4_UMIP", "CR4_LA57", "CR4_VMXE",
    "CR4_SMXE", "CR4_FSGSBASE", "CR4_PCIDE", "CR4_OSXSAVE", "CR4_SMEP", "CR4_SMAP", "CR4_PKE",
    "EFER_SCE", "EFER_LME", "EFER_LMA", "EFER_NXE",
    "RFLAGS_CF", "RFLAGS_FIXED", "RFLAGS_PF", "RFLAGS_AF", "RFLAGS_ZF", "RFLAGS_SF",
    "RFLAGS_TF", "RFLAGS_IF", "RFLAGS_DF", "RFLAGS_OF", "RFLAGS_IOPL", "RFLAGS_NT",
    "RFLAGS_RF", "RFLAGS_VM", "RFLAGS_AC", "RFLAGS_VIF", "RFLAGS_VIP", "RFLAGS_ID",
]


class Cr0(IntFlag):
    """CR0: the switches of the CPU's operating mode (SDM 2.5)."""

    PE = 1 << 0    # protection enable: segments come from descriptors, not selector*16
    MP = 1 << 1    # monitor coprocessor: WAIT/FWAIT honour CR0.TS
    EM = 1 << 2    # emulation: x87/SSE instructions raise #NM/#UD (no FPU present)
    TS = 1 << 3    # task switched: the next FPU/SSE instruction raises #NM (lazy FPU save)
    ET = 1 << 4    # extension type: 387-class FPU; reads as 1 on every CPU since the 486
    NE = 1 << 5    # numeric error: x87 errors raise #MF, not the legacy IRQ 13 via the PIC
    WP = 1 << 16   # write protect: ring-0 writes also obey read-only pages
    AM = 1 << 18   # alignment mask: with RFLAGS.AC, ring-3 misaligned accesses fault
    NW = 1 << 29   # not write-through (with CD, the power-on cache state)
    CD = 1 << 30   # cache disable: set at power-on, an OS clears it to use the caches
    PG = 1 << 31   # paging: linear addresses go through the page tables at CR3


def _cr4() -> type[IntFlag]:
    class Cr4(IntFlag):
        """CR4: extensions turned on one by one (SDM 2.5)."""

        VME = 1 << 0          # virtual-8086 mode extensions
        PVI = 1 << 1          # protected-mode virtual interrupts
        TSD = 1 << 2          # time stamp disable: RDTSC only in ring 0
        DE = 1 << 3           # debugging extensions: DR4/DR5 fault, I/O breakpoints
        PSE = 1 << 4          # page size extension: 4 MiB pages in 32-bit paging (PDE.PS)
        PAE = 1 << 5          # physical address extension: 64-bit entries; required by long mode
        MCE = 1 << 6          # machine-check exception enable
        PGE = 1 << 7          # page global enable: PTE.G entries survive a CR3 write
        PCE = 1 << 8          # RDPMC allowed outside ring 0
        OSFXSR = 1 << 9       # the OS saves SSE state with FXSAVE: SSE instructions allowed
        OSXMMEXCPT = 1 << 10  # the OS handles #XM: unmasked SIMD FP errors raise #XM, not #UD
        UMIP = 1 << 11        # SGDT/SIDT/SLDT/SMSW/STR only in ring 0
        LA57 = 1 << 12        # 5-level paging (57-bit linear addresses)
        VMXE = 1 << 13        # VMX enable (for a hypervisor inside the guest)
        SMXE = 1 << 14        # safer mode extensions enable
        FSGSBASE = 1 << 16    # RDFSBASE/WRFSBASE... instructions allowed
        PCIDE = 1 << 17       # process-context identifiers in CR3 bits 11:0
        OSXSAVE = 1 << 18     # XSAVE and XCR0 enabled (needed for AVX)
        SMEP = 1 << 20        # supervisor-mode execution prevention
        SMAP = 1 << 21        # supervisor-mode access prevention
        PKE = 1 << 22         # protection keys for user pages
    return Cr4


def _efer() -> type[IntFlag]:
    class Efer(IntFlag):
        """IA32_EFER, MSR 0xC000_0080: the extended feature enables (SDM 2.2.1)."""

        SCE = 1 << 0     # SYSCALL/SYSRET enable
        LME = 1 << 8     # long mode enable: long mode starts when CR0.PG is set with it
        LMA = 1 << 10    # long mode active: read-only on hardware, set by the CPU (KVM wants it set)
        NXE = 1 << 11    # no-execute enable: bit 63 of PAE/4-level entries means NX, not reserved
    return Efer


class Rflags(IntFlag):
    """RFLAGS: status flags and system flags (SDM vol. 1, 3.4.3)."""

    CF = 1 << 0      # carry
    FIXED = 1 << 1   # reserved, always 1: a valid RFLAGS value is at least 0x2
    PF = 1 << 2      # parity
    AF = 1 << 4      # auxiliary carry (BCD)
    ZF = 1 << 6      # zero
    SF = 1 << 7      # sign
    TF = 1 << 8      # trap: single-step, #DB after every instruction
    IF = 1 << 9      # interrupt enable: maskable interrupts are delivered
    DF = 1 << 10     # direction: string instructions count down
    OF = 1 << 11     # overflow
    IOPL = 3 << 12   # I/O privilege level (two bits): rings <= IOPL may use IN/OUT
    NT = 1 << 14     # nested task (hardware task switching)
    RF = 1 << 16     # resume: suppress instruction breakpoints for one instruction
    VM = 1 << 17     # virtual-8086 mode
    AC = 1 << 18     # alignment check (with CR0.AM) / SMAP override
    VIF = 1 << 19    # virtual interrupt flag
    VIP = 1 << 20    # virtual interrupt pending
    ID = 1 << 21     # toggling it proves CPUID exists


class SegmentType(IntFlag):
    """The 4-bit type field of a code or data descriptor (S=1) (SDM 3.4.5.1, table 3-1).

    KVM's ``kvm_segment.type`` holds exactly this field.
    """

    ACCESSED = 1 << 0    # set by the CPU when it loads the descriptor (VMX wants it set)
    RW = 1 << 1          # data: writable; code: readable
    DC = 1 << 2          # data: expands down; code: conforming
    EXECUTABLE = 1 << 3  # code segment (else data)


class SystemSegmentType(IntEnum):
    """Type field of a system descriptor (S=0) in 32-bit and IA-32e modes (SDM table 3-2)."""

    LDT = 2              # local descriptor table
    TSS16_BUSY = 3       # 16-bit TSS, busy (what a real-mode TR may hold)
    TSS_AVAILABLE = 9    # 32-bit TSS (64-bit TSS in IA-32e mode), available
    TSS_BUSY = 11        # 32-bit / 64-bit TSS, busy: what TR must hold to enter a guest


def _page_flag() -> type[IntFlag]:
    class PageFlag(IntFlag):
        """Bits of a paging-structure entry (SDM 4.3 tables 4-4..4-6, 4.5 tables 4-14..4-20).

        The low bits mean the same at every level; PS turns a PDPT or PD entry
        (or a 32-bit PDE) into a leaf that maps a large page. In a PT entry, bit 7
        is PAT instead of PS. NX is bit 63 of 64-bit entries only, and only when
        EFER.NXE is set (otherwise the bit is reserved).
        """

        PRESENT = 1 << 0     # the entry is used; if clear the rest is ignored (#PF)
        RW = 1 << 1          # writable (if clear, writes fault; ring 0 too when CR0.WP)
        USER = 1 << 2        # ring 3 may access (U/S); if clear, supervisor only
        PWT = 1 << 3         # page-level write-through
        PCD = 1 << 4         # page-level cache disable
        ACCESSED = 1 << 5    # set by the CPU when it uses the entry for a translation
        DIRTY = 1 << 6       # set by the CPU on a write through a leaf entry
        PS = 1 << 7          # page size: this PDPT/PD entry maps a 1 GiB/2 MiB/4 MiB page
        GLOBAL = 1 << 8      # leaf survives CR3 writes when CR4.PGE
        PAT_LARGE = 1 << 12  # PAT bit of a large-page leaf (bit 7 there is PS)
        NX = 1 << 63         # execute disable (64-bit entries, EFER.NXE)
    return PageFlag


def flag_names(value: IntFlag) -> str:
    """The names of the set bits, highest first, joined by ``|``; unknown bits in hex.

    A field of several bits (RFLAGS.IOPL) shows its value: ``IOPL=3``.

    >>> flag_names(Cr0.PG | Cr0.ET | Cr0.PE)
    'PG|ET|PE'
    >>> flag_names(Rflags(0x3202))
    'IOPL=3|IF|FIXED'
    >>> flag_names(Efer(0))
    '0'
    """
    raw = int(value)
    names = []
    known = 0
    members = sorted(type(value).__members__.values(), key=int, reverse=True)
    for member in members:
        bits = int(member)
        if bits == 0 or raw & bits == 0:
            continue
        if bits & (bits - 1):  # a multi-bit field
            shift = (bits & -bits).bit_length() - 1
            names.append(f"{member.name}={(raw & bits) >> shift}")
        else:
            names.append(member.name)
        known |= bits
    unknown = raw & ~known
    if unknown:
        names.append(hex(unknown))
    return "|".join(names) if names else "0"


# Prefixed aliases (Linux spells them X86_CR0_PE, kvm-hello-world CR0_PE).
CR0_PE, CR0_MP, CR0_EM, CR0_TS = Cr0.PE, Cr0.MP, Cr0.EM, Cr0.TS
CR0_ET, CR0_NE, CR0_WP, CR0_AM = Cr0.ET, Cr0.NE, Cr0.WP, Cr0.AM
CR0_NW, CR0_CD, CR0_PG = Cr0.NW, Cr0.CD, Cr0.PG

# (CR4_* and EFER_* come with their enum, on first use: ``__getattr__`` below.)

RFLAGS_CF, RFLAGS_FIXED, RFLAGS_PF, RFLAGS_AF = Rflags.CF, Rflags.FIXED, Rflags.PF, Rflags.AF
RFLAGS_ZF, RFLAGS_SF, RFLAGS_TF, RFLAGS_IF = Rflags.ZF, Rflags.SF, Rflags.TF, Rflags.IF
RFLAGS_DF, RFLAGS_OF, RFLAGS_IOPL, RFLAGS_NT = Rflags.DF, Rflags.OF, Rflags.IOPL, Rflags.NT
RFLAGS_RF, RFLAGS_VM, RFLAGS_AC, RFLAGS_VIF = Rflags.RF, Rflags.VM, Rflags.AC, Rflags.VIF
RFLAGS_VIP, RFLAGS_ID = Rflags.VIP, Rflags.ID


# ---------------------------------------------------------------------------
# Enumerations built on first use (PEP 562; see the module docstring)
# ---------------------------------------------------------------------------

__getattr__, __dir__ = lazy_enums(globals(), {"Cr4": _cr4, "Efer": _efer, "PageFlag": _page_flag},
                                  (("CR4_", "Cr4", "CR4_"), ("EFER_", "Efer", "EFER_")))
