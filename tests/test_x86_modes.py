"""CPU-mode setup: the register state KVM_SET_SREGS/KVM_SET_REGS will receive.

No KVM here: the register structures are plain stand-ins with the kernel's
field names, filled the way ``KVM_GET_SREGS`` leaves them after a vCPU reset.
``assert_enterable`` states, as a checklist, the rules KVM and VM entry
apply to such a state (KVM's ``kvm_is_valid_sregs`` and Intel SDM vol. 3C
26.3.1); the KVM-backed guest tests then prove the same state really runs.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from minikvm.memory import GuestMemory
from minikvm.x86.flags import Cr0, Cr4, Efer, PageFlag, Rflags, SegmentType
from minikvm.x86.gdt import SegmentDescriptor
from minikvm.x86.layout import (
    FLAT_LOAD_ADDR,
    GDT_ADDR,
    GDT_END,
    PAGE_TABLES_ADDR,
    PAGE_TABLES_END,
    SEL_CODE32,
    SEL_CODE64,
    SEL_DATA,
    STACK_TOP,
    STACK_TOP_REAL,
)
from minikvm.x86.modes import (
    CpuMode,
    ModeError,
    code_bitness,
    cpu_mode_of,
    setup_mode,
)
from minikvm.x86.paging import PAGE_2M, PAGE_4K, PAGE_4M, translate

MIB = 1 << 20
ELF_ENTRY = 0x10_0000
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")


def reset_segment(selector=0, base=0, type_=3, s=1):
    return SimpleNamespace(base=base, limit=0xFFFF, selector=selector, type=type_, present=1,
                           dpl=0, db=0, s=s, l=0, g=0, avl=0, unusable=0, padding=0)


def reset_sregs():
    """What KVM_GET_SREGS returns after a vCPU reset (SDM 9.1.1, table 9-1)."""
    return SimpleNamespace(
        cs=reset_segment(0xF000, 0xFFFF_0000, 0xB), ds=reset_segment(), es=reset_segment(),
        fs=reset_segment(), gs=reset_segment(), ss=reset_segment(),
        tr=reset_segment(type_=0xB, s=0), ldt=reset_segment(type_=2, s=0),
        gdt=SimpleNamespace(base=0, limit=0xFFFF), idt=SimpleNamespace(base=0, limit=0xFFFF),
        cr0=0x6000_0010, cr2=0, cr3=0, cr4=0, cr8=0, efer=0, apic_base=0xFEE0_0900)


def reset_regs():
    return SimpleNamespace(rax=0, rbx=0, rcx=0, rdx=0x600, rsi=0, rdi=0, rsp=0, rbp=0,
                           rip=0xFFF0, rflags=0x2)


@pytest.fixture
def mem() -> GuestMemory:
    return GuestMemory.with_size(2 * MIB)


def run_setup(mem, mode, entry, **options):
    sregs, regs = reset_sregs(), reset_regs()
    result = setup_mode(mode, mem, sregs, regs, entry, **options)
    return sregs, regs, result


def assert_enterable(sregs, regs):
    """The consistency rules a state must meet for KVM_SET_SREGS and VM entry."""
    cr0, cr4, efer = int(sregs.cr0), int(sregs.cr4), int(sregs.efer)
    assert not (cr0 & Cr0.PG) or cr0 & Cr0.PE, "paging needs protected mode"
    assert not (cr0 & Cr0.NW) or cr0 & Cr0.CD, "NW without CD is invalid"
    long_mode = bool(efer & Efer.LME and cr0 & Cr0.PG)
    assert bool(efer & Efer.LMA) == long_mode, "EFER.LMA must equal LME && PG"
    if long_mode:
        assert cr4 & Cr4.PAE, "long mode needs CR4.PAE"
        assert not (sregs.cs.l and sregs.cs.db), "CS.L and CS.D both set"
    cs, ss = sregs.cs, sregs.ss
    assert cs.present and cs.s and cs.type & SegmentType.EXECUTABLE
    assert ss.present and ss.s and not ss.type & SegmentType.EXECUTABLE and ss.type & SegmentType.RW
    for name in SEGMENTS:
        seg = getattr(sregs, name)
        assert seg.type & SegmentType.ACCESSED, f"{name}: VMX wants the accessed bit"
        assert seg.unusable == 0
        if seg.g:
            assert seg.limit & 0xFFF == 0xFFF, f"{name}: G=1 needs limit bits 11:0 set"
        else:
            assert seg.limit <= 0xF_FFFF, f"{name}: a limit above 1 MiB needs G=1"
    if cr0 & Cr0.PE:
        assert ss.dpl == cs.dpl == ss.selector & 3
    assert sregs.tr.present and not sregs.tr.s
    assert sregs.tr.type == 11 or (sregs.tr.type == 3 and not long_mode)
    assert int(regs.rflags) & Rflags.FIXED and not int(regs.rflags) & Rflags.IF


def assert_gdt_matches_segments(mem, sregs):
    """Every selector loaded must decode, from guest memory, to the hidden part."""
    assert sregs.gdt.base == GDT_ADDR
    assert GDT_ADDR + sregs.gdt.limit < GDT_END
    for name in SEGMENTS:
        seg = getattr(sregs, name)
        index = seg.selector >> 3
        assert seg.selector & 4 == 0 and index * 8 + 7 <= sregs.gdt.limit
        desc = SegmentDescriptor.unpack(mem.read_u64(GDT_ADDR + index * 8))
        assert (desc.base, desc.byte_limit, desc.type, desc.s, desc.dpl, desc.present,
                desc.l, desc.db, desc.g) == (seg.base, seg.limit, seg.type, seg.s, seg.dpl,
                                             seg.present, seg.l, seg.db, seg.g), name


# -- real mode ---------------------------------------------------------------------------


def test_real_mode_starts_at_cs0_ip_entry(mem):
    sregs, regs, result = run_setup(mem, "real", FLAT_LOAD_ADDR)
    assert result.mode is CpuMode.REAL
    assert (sregs.cs.selector, sregs.cs.base, regs.rip) == (0, 0, 0x1000)
    assert regs.rsp == STACK_TOP_REAL and sregs.ss.selector == 0
    assert regs.rflags == Rflags.FIXED


def test_real_mode_segments_are_selector_times_16_with_64k_limit(mem):
    sregs, regs, _ = run_setup(mem, CpuMode.REAL, 0x2_3456)
    assert (sregs.cs.selector, sregs.cs.base, regs.rip) == (0x2000, 0x2_0000, 0x3456)
    for name in SEGMENTS:
        seg = getattr(sregs, name)
        assert seg.base == seg.selector << 4
        assert (seg.limit, seg.db, seg.g, seg.l, seg.present, seg.s) == (0xFFFF, 0, 0, 0, 1, 1)
    assert_enterable(sregs, regs)


def test_real_mode_clears_protection_paging_and_cache_disable(mem):
    sregs, regs, _ = run_setup(mem, "real", FLAT_LOAD_ADDR)
    assert sregs.cr0 == Cr0.ET  # reset had CD|NW|ET
    assert (sregs.cr3, sregs.cr4, sregs.efer) == (0, 0, 0)
    assert (sregs.idt.base, sregs.idt.limit) == (0, 0x3FF)  # the IVT
    assert cpu_mode_of(sregs) is CpuMode.REAL and code_bitness(sregs) == 16


def test_real_mode_leaves_a_gdt_for_the_guest_to_enter_protected_mode(mem):
    sregs, _, result = run_setup(mem, "real", FLAT_LOAD_ADDR)
    assert (sregs.gdt.base, result.gdt_addr) == (GDT_ADDR, GDT_ADDR)
    code32 = SegmentDescriptor.unpack(mem.read_u64(GDT_ADDR + SEL_CODE32))
    assert code32.db == 1 and code32.type & SegmentType.EXECUTABLE


@pytest.mark.parametrize("entry", [0x10_0000, -1, 0x1F_FFFF])
def test_real_mode_refuses_an_entry_it_cannot_reach(mem, entry):
    with pytest.raises(ModeError, match="entry"):
        run_setup(mem, "real", entry)


# -- protected mode -------------------------------------------------------------------


def test_protected_mode_uses_flat_32bit_segments(mem):
    sregs, regs, result = run_setup(mem, "protected", ELF_ENTRY)
    assert result.mode is CpuMode.PROTECTED and result.page_tables is None
    assert sregs.cs.selector == SEL_CODE32 and (sregs.cs.db, sregs.cs.l) == (1, 0)
    for name in SEGMENTS:
        seg = getattr(sregs, name)
        assert (seg.base, seg.limit) == (0, 0xFFFF_FFFF)
        if name != "cs":
            assert seg.selector == SEL_DATA and seg.db == 1
    assert (regs.rip, regs.rsp) == (ELF_ENTRY, STACK_TOP)
    assert_enterable(sregs, regs)
    assert_gdt_matches_segments(mem, sregs)


def test_protected_mode_has_pe_without_paging(mem):
    sregs, _, _ = run_setup(mem, "protected", ELF_ENTRY)
    assert sregs.cr0 & Cr0.PE and not sregs.cr0 & (Cr0.PG | Cr0.CD | Cr0.NW)
    assert sregs.efer == 0 and not sregs.cr4 & Cr4.PAE
    assert (sregs.idt.base, sregs.idt.limit) == (0, 0)  # no IDT: a fault is a triple fault
    assert cpu_mode_of(sregs) is CpuMode.PROTECTED and code_bitness(sregs) == 32
    assert translate(mem, sregs, 0x12345).physical == 0x12345


def test_protected_mode_writes_nothing_at_the_page_table_area(mem):
    run_setup(mem, "protected", ELF_ENTRY)
    assert mem.read(PAGE_TABLES_ADDR, PAGE_TABLES_END - PAGE_TABLES_ADDR) == bytes(0x10000)


# -- paged mode ------------------------------------------------------------------------


def test_paged_mode_identity_maps_4g_with_4m_pages(mem):
    sregs, regs, result = run_setup(mem, "paged", ELF_ENTRY)
    assert sregs.cr0 & (Cr0.PE | Cr0.PG) == Cr0.PE | Cr0.PG
    assert sregs.cr4 & Cr4.PSE and not sregs.cr4 & Cr4.PAE and sregs.efer == 0
    assert sregs.cr3 == PAGE_TABLES_ADDR == result.page_tables.root
    for addr in (ELF_ENTRY, STACK_TOP - 4, 0xD000_0000, 0xFFFF_FFFF):
        t = translate(mem, sregs, addr)
        assert (t.physical, t.page_size, t.writable) == (addr, PAGE_4M, True)
    assert cpu_mode_of(sregs) is CpuMode.PAGED and code_bitness(sregs) == 32
    assert_enterable(sregs, regs)
    assert_gdt_matches_segments(mem, sregs)


def test_paged_mode_with_4k_pages_maps_ram_rounded_to_4m(mem):
    sregs, regs, result = run_setup(mem, "paged", ELF_ENTRY, large_pages=False)
    assert not sregs.cr4 & Cr4.PSE
    assert result.page_tables.size_mapped == 4 * MIB
    t = translate(mem, sregs, ELF_ENTRY + 0x10)
    assert (t.physical, t.page_size) == (ELF_ENTRY + 0x10, PAGE_4K)
    assert not translate(mem, sregs, 4 * MIB).valid


def test_paged_mode_with_4k_pages_refuses_more_than_the_table_area_holds():
    mem = GuestMemory.with_size(256 * MIB)
    with pytest.raises(ModeError, match="page tables"):
        run_setup(mem, "paged", ELF_ENTRY, large_pages=False)


# -- long mode ---------------------------------------------------------------------------


def test_long_mode_enables_pae_lme_lma_and_paging(mem):
    sregs, regs, _ = run_setup(mem, "long", ELF_ENTRY)
    assert sregs.cr0 & (Cr0.PE | Cr0.PG | Cr0.WP) == Cr0.PE | Cr0.PG | Cr0.WP
    assert sregs.cr4 & Cr4.PAE
    assert sregs.efer & (Efer.LME | Efer.LMA) == Efer.LME | Efer.LMA
    assert not sregs.efer & Efer.NXE
    assert_enterable(sregs, regs)
    assert_gdt_matches_segments(mem, sregs)


def test_long_mode_code_segment_is_64bit(mem):
    sregs, regs, _ = run_setup(mem, "long", ELF_ENTRY)
    assert sregs.cs.selector == SEL_CODE64 and (sregs.cs.l, sregs.cs.db) == (1, 0)
    assert cpu_mode_of(sregs) is CpuMode.LONG and code_bitness(sregs) == 64
    assert (regs.rip, regs.rsp, regs.rflags) == (ELF_ENTRY, STACK_TOP, 0x2)


def test_long_mode_tables_identity_map_4g_with_2m_pages_in_the_table_area(mem):
    sregs, _, result = run_setup(mem, "long", ELF_ENTRY)
    tables = result.page_tables
    assert sregs.cr3 == tables.root == PAGE_TABLES_ADDR
    assert PAGE_TABLES_ADDR <= tables.start < tables.end <= PAGE_TABLES_END
    for addr in (0, ELF_ENTRY, STACK_TOP - 8, 0xD000_0000, 0xFFFF_FFFF):
        t = translate(mem, sregs, addr)
        assert (t.physical, t.page_size, t.writable, t.nx) == (addr, PAGE_2M, True, False)
    assert not translate(mem, sregs, 1 << 32).valid
    first_pde = mem.read_u64(tables.root + 2 * 4096)  # PML4, PDPT, then PD 0
    assert first_pde == PageFlag.PRESENT | PageFlag.RW | PageFlag.PS


def test_long_mode_in_compatibility_mode_decodes_32bit(mem):
    sregs, _, _ = run_setup(mem, "long", ELF_ENTRY)
    sregs.cs.l, sregs.cs.db = 0, 1
    assert cpu_mode_of(sregs) is CpuMode.LONG and code_bitness(sregs) == 32


def test_virtual_8086_mode_decodes_16bit(mem):
    sregs, _, _ = run_setup(mem, "protected", ELF_ENTRY)
    assert code_bitness(sregs, rflags=Rflags.VM | Rflags.FIXED) == 16


def test_long_mode_with_nxe_and_1g_pages(mem):
    sregs, regs, result = run_setup(mem, "long", ELF_ENTRY, nxe=True, page_size=1 << 30)
    assert sregs.efer & Efer.NXE
    assert result.page_tables.table_count == 2
    assert translate(mem, sregs, ELF_ENTRY).page_size == 1 << 30


@pytest.mark.parametrize("mode", ["protected", "paged", "long"])
def test_sse_is_enabled_for_compiled_guests(mem, mode):
    sregs, _, _ = run_setup(mem, mode, ELF_ENTRY)
    assert sregs.cr4 & (Cr4.OSFXSR | Cr4.OSXMMEXCPT) == Cr4.OSFXSR | Cr4.OSXMMEXCPT
    assert sregs.cr0 & Cr0.MP and not sregs.cr0 & (Cr0.EM | Cr0.TS)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["real", "protected", "paged", "long"])
def test_entry_outside_ram_is_refused(mem, mode):
    entry = 0x30_0000 if mode != "real" else 0xF_0000
    small = GuestMemory.with_size(512 * 1024) if mode == "real" else mem
    with pytest.raises(ModeError, match="not in guest RAM"):
        run_setup(small, mode, entry)


def test_long_mode_entry_beyond_the_identity_map_is_refused(mem):
    with pytest.raises(ModeError, match="out of reach"):
        run_setup(mem, "long", 1 << 32)


def test_ram_too_small_for_the_page_tables_is_a_mode_error():
    mem = GuestMemory.with_size(256 * 1024)
    with pytest.raises(ModeError):
        run_setup(mem, "long", FLAT_LOAD_ADDR, stack_top=0x8000)


def test_unknown_mode_is_a_mode_error(mem):
    with pytest.raises(ModeError, match="real, protected, paged, long"):
        run_setup(mem, "unreal", FLAT_LOAD_ADDR)


@pytest.mark.parametrize("mode, entry", [("real", FLAT_LOAD_ADDR), ("long", ELF_ENTRY)])
def test_setup_keeps_other_general_registers(mem, mode, entry):
    _, regs, _ = run_setup(mem, mode, entry)
    assert regs.rdx == 0x600


# -- with the real ctypes structures --------------------------------------------------------


@pytest.mark.parametrize("mode", ["real", "protected", "paged", "long"])
def test_setup_fills_the_kvm_structures(mem, mode):
    uapi = pytest.importorskip("minikvm.kvm.uapi")
    sregs, regs = uapi.kvm_sregs(), uapi.kvm_regs()
    sregs.cr0 = 0x6000_0010
    entry = FLAT_LOAD_ADDR if mode == "real" else ELF_ENTRY
    setup_mode(mode, mem, sregs, regs, entry)
    assert cpu_mode_of(sregs).value == mode
    assert regs.rip == entry and regs.rflags == 2
    assert_enterable(sregs, regs)
    if mode != "real":
        assert_gdt_matches_segments(mem, sregs)
