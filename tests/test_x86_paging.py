"""Page walks (SDM vol. 3A ch. 4) against tables whose answers are known by construction.

The hand-built tables below are written entry by entry with ``write_u64`` /
``write_u32``, not with the builders, so each test states the expected
answer independently of the code under test. The property tests build
random mappings with the builder and expect, from the mapping list alone,
the physical address of every probe.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.memory import GuestMemory
from minikvm.x86.flags import Cr0, Cr4, Efer, PageFlag
from minikvm.x86.layout import PAGE_TABLES_ADDR, PAGE_TABLES_END
from minikvm.x86.paging import (
    PAGE_1G,
    PAGE_2M,
    PAGE_4K,
    PAGE_4M,
    PageTableAllocator,
    PageTableBuilder,
    PageTableError,
    build_identity_32bit,
    build_identity_long_mode,
    is_canonical,
    map_page,
    translate,
    walk_4level,
    walk_32bit,
)

MIB = 1 << 20
P, RW, U, PS, NX = (PageFlag.PRESENT, PageFlag.RW, PageFlag.USER, PageFlag.PS, PageFlag.NX)
ALL = P | RW | U

# Hand-built 4-level tables: PML4 at 0x10000, PDPT 0x11000, PD 0x12000, PT 0x13000.
PML4, PDPT, PD, PT = 0x10000, 0x11000, 0x12000, 0x13000


def va(pml4: int, pdpt: int, pd: int, pt: int, offset: int = 0) -> int:
    """A linear address from its four indices (sign-extended from bit 47)."""
    addr = pml4 << 39 | pdpt << 30 | pd << 21 | pt << 12 | offset
    return addr | (0xFFFF << 48 if addr & 1 << 47 else 0)


@pytest.fixture
def mem() -> GuestMemory:
    return GuestMemory.with_size(2 * MIB)


def four_levels(mem, pml4_flags=ALL, pdpt_flags=ALL, pd_flags=ALL, pt_flags=ALL,
                frame=0x1AB000):
    """PML4[1] -> PDPT[2] -> PD[3] -> PT[4] -> frame, with the given flags."""
    mem.write_u64(PML4 + 8 * 1, PDPT | pml4_flags)
    mem.write_u64(PDPT + 8 * 2, PD | pdpt_flags)
    mem.write_u64(PD + 8 * 3, PT | pd_flags)
    mem.write_u64(PT + 8 * 4, frame | pt_flags)
    return va(1, 2, 3, 4, 0x567)


# -- 4-level: leaves of each size ------------------------------------------------------


def test_4k_page_walks_all_four_levels(mem):
    vaddr = four_levels(mem)
    t = walk_4level(mem, PML4, vaddr)
    assert t.valid and t.fault_reason is None
    assert t.physical == 0x1AB567
    assert t.page_size == PAGE_4K
    assert [s.level for s in t.levels] == ["PML4", "PDPT", "PD", "PT"]
    assert [s.index for s in t.levels] == [1, 2, 3, 4]
    assert [s.table for s in t.levels] == [PML4, PDPT, PD, PT]
    assert [s.entry_address for s in t.levels] == [PML4 + 8, PDPT + 16, PD + 24, PT + 32]
    assert [s.address for s in t.levels] == [PDPT, PD, PT, 0x1AB000]
    assert t.levels[-1].entry == 0x1AB000 | ALL
    assert [s.leaf for s in t.levels] == [False, False, False, True]


def test_2m_page_is_a_pd_entry_with_ps(mem):
    mem.write_u64(PML4, PDPT | ALL)
    mem.write_u64(PDPT + 8 * 5, PD | ALL)
    mem.write_u64(PD + 8 * 7, 0x0060_0000 | ALL | PS)
    t = walk_4level(mem, PML4, va(0, 5, 7, 0x1F, 0xABC))
    assert t.valid
    assert t.page_size == PAGE_2M
    assert t.physical == 0x0060_0000 + (0x1F << 12) + 0xABC
    assert [s.level for s in t.levels] == ["PML4", "PDPT", "PD"]
    assert t.levels[-1].large


def test_1g_page_is_a_pdpt_entry_with_ps(mem):
    mem.write_u64(PML4 + 8 * 3, PDPT | ALL)
    mem.write_u64(PDPT + 8 * 9, 0x80_4000_0000 | ALL | PS)
    t = walk_4level(mem, PML4, va(3, 9, 0x155, 0x1AA, 0x123))
    assert t.valid
    assert t.page_size == PAGE_1G
    assert t.physical == 0x80_4000_0000 + (0x155 << 21) + (0x1AA << 12) + 0x123
    assert [s.level for s in t.levels] == ["PML4", "PDPT"]


def test_leaf_outside_ram_is_a_valid_translation(mem):
    """A page may be MMIO: only the tables must be in RAM."""
    mem.write_u64(PML4, PDPT | ALL)
    mem.write_u64(PDPT + 8 * 3, PD | ALL)
    mem.write_u64(PD + 8 * 0x80, 0xD000_0000 | ALL | PS)
    t = walk_4level(mem, PML4, 0xD000_0010)
    assert t.valid and t.physical == 0xD000_0010


def test_higher_half_address_uses_the_top_pml4_entries(mem):
    mem.write_u64(PML4 + 8 * 511, PDPT | ALL)
    mem.write_u64(PDPT + 8 * 510, 0x4000_0000 | ALL | PS)
    t = walk_4level(mem, PML4, 0xFFFF_FFFF_8000_1234)
    assert t.valid and t.physical == 0x4000_1234
    assert [s.index for s in t.levels] == [511, 510]


def test_cr3_low_bits_are_not_part_of_the_table_address(mem):
    vaddr = four_levels(mem)
    assert walk_4level(mem, PML4 | 0x018, vaddr).physical == 0x1AB567  # PWT|PCD


# -- 4-level: faults --------------------------------------------------------------------


@pytest.mark.parametrize("depth, name, index", [(0, "PML4", 1), (1, "PDPT", 2), (2, "PD", 3),
                                                (3, "PT", 4)])
def test_not_present_entry_at_each_level_ends_the_walk(mem, depth, name, index):
    flags = [ALL] * 4
    flags[depth] = RW | U  # everything but PRESENT
    vaddr = four_levels(mem, *flags)
    t = walk_4level(mem, PML4, vaddr)
    assert not t.valid and t.physical is None and t.page_size is None
    assert t.fault_reason == f"{name} entry {index} not present"
    assert len(t.levels) == depth + 1
    assert not t.levels[-1].present


def test_empty_tables_fault_at_the_pml4(mem):
    t = walk_4level(mem, PML4, 0x1000)
    assert t.fault_reason == "PML4 entry 0 not present"


@pytest.mark.parametrize("addr", [1 << 47, 0x0000_8000_0000_1000, 0xFFFF_7FFF_FFFF_FFFF,
                                  0x1234_0000_0000_0000, 1 << 63])
def test_non_canonical_addresses_are_invalid(mem, addr):
    four_levels(mem)
    t = walk_4level(mem, PML4, addr)
    assert not t.valid
    assert "not canonical" in t.fault_reason
    assert t.levels == []


@pytest.mark.parametrize("addr, expected", [
    (0, True), ((1 << 47) - 1, True), (1 << 47, False), (0xFFFF_8000_0000_0000, True),
    (0xFFFF_FFFF_FFFF_FFFF, True), (0xFFFE_FFFF_FFFF_FFFF, False), (-1, False), (1 << 64, False),
])
def test_canonical_means_bits_63_to_47_are_equal(addr, expected):
    assert is_canonical(addr) is expected


def test_table_outside_ram_makes_the_translation_invalid(mem):
    mem.write_u64(PML4, 0x4000_0000 | ALL)  # PDPT at 1 GiB: no RAM there
    t = walk_4level(mem, PML4, 0x1000)
    assert not t.valid
    assert t.fault_reason == "PDPT table at 0x40000000 is outside guest RAM"
    assert [s.level for s in t.levels] == ["PML4"]


def test_cr3_outside_ram_makes_the_translation_invalid(mem):
    t = walk_4level(mem, 0x7FFF_F000, 0x1000)
    assert not t.valid and "PML4 table at 0x7ffff000 is outside guest RAM" == t.fault_reason


def test_ps_in_a_pml4_entry_is_reserved(mem):
    mem.write_u64(PML4, PDPT | ALL | PS)
    t = walk_4level(mem, PML4, 0x1000)
    assert not t.valid
    assert t.fault_reason == "PML4 entry 0 has reserved bits set (0x80)"
    assert t.levels[-1].reserved == PS


def test_nx_bit_is_reserved_without_efer_nxe(mem):
    vaddr = four_levels(mem, pt_flags=ALL | NX)
    assert walk_4level(mem, PML4, vaddr, nxe=True).valid
    t = walk_4level(mem, PML4, vaddr, nxe=False)
    assert not t.valid and "PT entry 4 has reserved bits" in t.fault_reason


def test_low_address_bits_of_a_2m_leaf_are_reserved(mem):
    mem.write_u64(PML4, PDPT | ALL)
    mem.write_u64(PDPT, PD | ALL)
    mem.write_u64(PD, 0x20_0000 | 1 << 13 | ALL | PS)
    t = walk_4level(mem, PML4, 0x1000)
    assert not t.valid and t.levels[-1].reserved == 1 << 13


def test_pat_bit_12_of_a_2m_leaf_is_not_an_address_bit(mem):
    mem.write_u64(PML4, PDPT | ALL)
    mem.write_u64(PDPT, PD | ALL)
    mem.write_u64(PD, 0x20_0000 | PageFlag.PAT_LARGE | ALL | PS)
    t = walk_4level(mem, PML4, 0x1234)
    assert t.valid and t.physical == 0x20_1234


def test_low_address_bits_of_a_1g_leaf_are_reserved(mem):
    mem.write_u64(PML4, PDPT | ALL)
    mem.write_u64(PDPT, 0x4000_0000 | 1 << 21 | ALL | PS)
    assert not walk_4level(mem, PML4, 0x1000).valid


def test_1g_leaf_is_reserved_where_the_cpu_has_no_1g_pages(mem):
    mem.write_u64(PML4, PDPT | ALL)
    mem.write_u64(PDPT, 0x4000_0000 | ALL | PS)
    assert walk_4level(mem, PML4, 0x1000, gbpages=True).valid
    t = walk_4level(mem, PML4, 0x1000, gbpages=False)
    assert not t.valid and t.levels[-1].reserved == PS


def test_address_bits_above_maxphyaddr_are_reserved(mem):
    vaddr = four_levels(mem, frame=1 << 40)
    assert walk_4level(mem, PML4, vaddr, maxphyaddr=46).physical == (1 << 40) + 0x567
    t = walk_4level(mem, PML4, vaddr, maxphyaddr=40)
    assert not t.valid and t.levels[-1].reserved == 1 << 40


def test_reserved_bits_of_a_not_present_entry_are_ignored(mem):
    mem.write_u64(PML4, PDPT | PS | NX)  # PRESENT clear: the CPU looks no further
    t = walk_4level(mem, PML4, 0x1000, nxe=False)
    assert t.fault_reason == "PML4 entry 0 not present"


# -- 4-level: permissions accumulate (SDM 4.6) -------------------------------------------


def test_all_levels_writable_and_user_give_a_writable_user_page(mem):
    t = walk_4level(mem, PML4, four_levels(mem))
    assert (t.writable, t.user, t.nx) == (True, True, False)


@pytest.mark.parametrize("depth", range(4))
def test_one_read_only_level_makes_the_page_read_only(mem, depth):
    flags = [ALL] * 4
    flags[depth] = P | U
    t = walk_4level(mem, PML4, four_levels(mem, *flags))
    assert t.valid and not t.writable and t.user
    assert [s.writable for s in t.levels] == [i != depth for i in range(4)]


@pytest.mark.parametrize("depth", range(4))
def test_one_supervisor_level_makes_the_page_supervisor_only(mem, depth):
    flags = [ALL] * 4
    flags[depth] = P | RW
    t = walk_4level(mem, PML4, four_levels(mem, *flags))
    assert t.valid and t.writable and not t.user


@pytest.mark.parametrize("depth", range(4))
def test_nx_at_any_level_makes_the_page_non_executable(mem, depth):
    flags = [ALL] * 4
    flags[depth] = ALL | NX
    t = walk_4level(mem, PML4, four_levels(mem, *flags))
    assert t.valid and t.nx
    assert [s.nx for s in t.levels] == [i == depth for i in range(4)]


def test_walk_description_names_each_level(mem):
    text = walk_4level(mem, PML4, four_levels(mem, pd_flags=P | RW)).describe()
    lines = text.splitlines()
    assert lines[0].startswith("0x8080604567 -> 0x1ab567 (4 KiB page, W S X)")
    assert [line.split("[")[0].strip() for line in lines[1:]] == ["PML4", "PDPT", "PD", "PT"]


# -- 32-bit paging --------------------------------------------------------------------------

PD32, PT32 = 0x20000, 0x21000


def test_32bit_4k_page_walks_directory_and_table(mem):
    mem.write_u32(PD32 + 4 * 0x301, PT32 | ALL)
    mem.write_u32(PT32 + 4 * 0x2A, 0x0015_3000 | ALL)
    t = walk_32bit(mem, PD32, 0x301 << 22 | 0x2A << 12 | 0xFED)
    assert t.valid and t.page_size == PAGE_4K
    assert t.physical == 0x0015_3FED
    assert [(s.level, s.index, s.entry_address) for s in t.levels] == [
        ("PD", 0x301, PD32 + 4 * 0x301), ("PT", 0x2A, PT32 + 4 * 0x2A)]
    assert t.levels[0].entry_size == 4 and not t.nx


def test_32bit_4m_page_with_pse(mem):
    mem.write_u32(PD32 + 4 * 3, 0x0080_0000 | ALL | PS)
    t = walk_32bit(mem, PD32, 3 << 22 | 0x12_3456, pse=True)
    assert t.valid and t.page_size == PAGE_4M
    assert t.physical == 0x0080_0000 + 0x12_3456
    assert [s.level for s in t.levels] == ["PD"]


def test_32bit_ps_is_ignored_without_cr4_pse(mem):
    """Without PSE the PDE points to a page table, whatever bit 7 says."""
    mem.write_u32(PD32, PT32 | ALL | PS)
    mem.write_u32(PT32 + 4 * 1, 0x0019_9000 | ALL)
    t = walk_32bit(mem, PD32, 0x1234, pse=False)
    assert t.valid and t.page_size == PAGE_4K and t.physical == 0x0019_9234


def test_32bit_pse36_4m_page_above_4g(mem):
    # physical bits 39:32 live in PDE bits 20:13
    mem.write_u32(PD32, 0x0040_0000 | 0x12 << 13 | ALL | PS)
    t = walk_32bit(mem, PD32, 0x10, maxphyaddr=40)
    assert t.physical == 0x12_0040_0010
    assert not walk_32bit(mem, PD32, 0x10, maxphyaddr=36).valid  # bit 36 is reserved there


def test_32bit_bit_21_of_a_4m_leaf_is_reserved(mem):
    mem.write_u32(PD32, 0x0040_0000 | 1 << 21 | ALL | PS)
    t = walk_32bit(mem, PD32, 0x10)
    assert not t.valid and t.fault_reason == "PD entry 0 has reserved bits set (0x200000)"


@pytest.mark.parametrize("pd_present, name", [(False, "PD entry 5 not present"),
                                              (True, "PT entry 6 not present")])
def test_32bit_not_present_at_each_level(mem, pd_present, name):
    mem.write_u32(PD32 + 4 * 5, PT32 | (ALL if pd_present else RW))
    mem.write_u32(PT32 + 4 * 6, 0x0015_3000 | RW)
    t = walk_32bit(mem, PD32, 5 << 22 | 6 << 12)
    assert not t.valid and t.fault_reason == name


@pytest.mark.parametrize("pde, pte, writable, user", [
    (ALL, ALL, True, True), (P | U, ALL, False, True), (ALL, P | U, False, True),
    (P | RW, ALL, True, False), (ALL, P | RW, True, False), (P, P, False, False)])
def test_32bit_permissions_accumulate(mem, pde, pte, writable, user):
    mem.write_u32(PD32, PT32 | pde)
    mem.write_u32(PT32, 0x0015_3000 | pte)
    t = walk_32bit(mem, PD32, 0x10)
    assert (t.valid, t.writable, t.user) == (True, writable, user)


def test_32bit_addresses_are_32_bits_wide(mem):
    assert "32-bit" in walk_32bit(mem, PD32, 1 << 32).fault_reason


def test_32bit_page_table_outside_ram_is_invalid(mem):
    mem.write_u32(PD32, 0xFFFF_F000 | ALL)
    t = walk_32bit(mem, PD32, 0x10)
    assert not t.valid and "outside guest RAM" in t.fault_reason


# -- translate(): the paging mode follows the control registers ------------------------


def sregs(cr0=0, cr3=0, cr4=0, efer=0):
    return SimpleNamespace(cr0=cr0, cr3=cr3, cr4=cr4, efer=efer)


def test_without_paging_linear_is_physical(mem):
    t = translate(mem, sregs(cr0=Cr0.PE), 0x12345)
    assert t.valid and t.physical == 0x12345 and t.levels == [] and t.writable and t.user
    assert not translate(mem, sregs(), 1 << 32).valid


def test_long_mode_uses_4level_paging_and_efer_nxe(mem):
    vaddr = four_levels(mem, pt_flags=ALL | NX)
    long_mode = dict(cr0=Cr0.PE | Cr0.PG, cr3=PML4, cr4=Cr4.PAE)
    t = translate(mem, sregs(**long_mode, efer=Efer.LME | Efer.LMA | Efer.NXE), vaddr)
    assert t.paging == "4-level" and t.physical == 0x1AB567 and t.nx
    t = translate(mem, sregs(**long_mode, efer=Efer.LME | Efer.LMA), vaddr)
    assert not t.valid  # NX is a reserved bit without EFER.NXE


def test_32bit_paging_follows_cr4_pse(mem):
    mem.write_u32(PD32, 0x0000_0000 | ALL | PS)  # with PSE: 4 MiB page 0; without: PT at 0
    mem.write_u32(0x0000_0000, 0x0015_3000 | ALL)
    with_pse = translate(mem, sregs(cr0=Cr0.PE | Cr0.PG, cr3=PD32, cr4=Cr4.PSE), 0x10)
    without = translate(mem, sregs(cr0=Cr0.PE | Cr0.PG, cr3=PD32), 0x10)
    assert with_pse.paging == without.paging == "32-bit"
    assert (with_pse.page_size, with_pse.physical) == (PAGE_4M, 0x10)
    assert (without.page_size, without.physical) == (PAGE_4K, 0x0015_3010)


@pytest.mark.parametrize("cr4, efer, words", [(Cr4.PAE, 0, "PAE"),
                                              (Cr4.PAE | Cr4.LA57, Efer.LMA, "5-level")])
def test_paging_modes_not_modelled_say_so(mem, cr4, efer, words):
    t = translate(mem, sregs(cr0=Cr0.PE | Cr0.PG, cr4=cr4, efer=efer), 0x1000)
    assert not t.valid and words in t.fault_reason


# -- identity builders ------------------------------------------------------------------------


def test_long_mode_identity_map_fits_the_page_table_area(mem):
    tables = build_identity_long_mode(mem, PAGE_TABLES_ADDR, end=PAGE_TABLES_END)
    assert tables.root == PAGE_TABLES_ADDR
    assert tables.table_count == 6  # PML4, PDPT, four PDs
    assert tables.end <= PAGE_TABLES_END


@pytest.mark.parametrize("addr", [0, 0x1000, 0x1F_FFFF, 0x20_0000, 0x3FFF_FFFF, 0x4000_0000,
                                  0xD000_0004, 0xFFFF_FFFF])
def test_long_mode_identity_map_translates_to_the_same_address(mem, addr):
    tables = build_identity_long_mode(mem, PAGE_TABLES_ADDR)
    t = walk_4level(mem, tables.root, addr)
    assert (t.physical, t.page_size, t.writable, t.user) == (addr, PAGE_2M, True, False)


def test_long_mode_identity_map_ends_at_4g(mem):
    tables = build_identity_long_mode(mem, PAGE_TABLES_ADDR)
    assert walk_4level(mem, tables.root, 1 << 32).fault_reason == "PDPT entry 4 not present"


@pytest.mark.parametrize("page_size, size, tables", [(PAGE_1G, 4 << 30, 2),
                                                     (PAGE_4K, 4 * MIB, 5)])
def test_long_mode_identity_map_with_other_page_sizes(mem, page_size, size, tables):
    built = build_identity_long_mode(mem, PAGE_TABLES_ADDR, size, page_size)
    assert built.table_count == tables
    for addr in (0, size // 2 + 0x123, size - 1):
        t = walk_4level(mem, built.root, addr)
        assert (t.physical, t.page_size) == (addr, page_size)
    assert not walk_4level(mem, built.root, size).valid


def test_identity_map_that_does_not_fit_is_refused(mem):
    with pytest.raises(PageTableError, match="needs 2054 tables"):
        build_identity_long_mode(mem, PAGE_TABLES_ADDR, 4 << 30, PAGE_4K, end=PAGE_TABLES_END)


@pytest.mark.parametrize("large_pages, page_size", [(True, PAGE_4M), (False, PAGE_4K)])
def test_32bit_identity_maps(mem, large_pages, page_size):
    size = 4 << 30 if large_pages else 8 * MIB
    built = build_identity_32bit(mem, PAGE_TABLES_ADDR, large_pages, size, end=PAGE_TABLES_END)
    assert built.table_count == (1 if large_pages else 3)
    for addr in (0, 0x1234, 0x7F_FFFF, size - 1):
        t = walk_32bit(mem, built.root, addr)
        assert (t.physical, t.page_size) == (addr, page_size)


# -- map_page -----------------------------------------------------------------------------


def test_map_page_refuses_a_second_mapping_of_the_same_page(mem):
    builder = PageTableBuilder(mem, PAGE_TABLES_ADDR, PAGE_TABLES_END)
    builder.map(0x4000_0000, 0x20_0000, PAGE_2M)
    with pytest.raises(PageTableError, match="already mapped"):
        builder.map(0x4000_0000, 0x40_0000, PAGE_2M)
    with pytest.raises(PageTableError, match="large page"):
        builder.map(0x4000_1000, 0x40_0000, PAGE_4K)


@pytest.mark.parametrize("vaddr, paddr, size", [(0x1000, 0x1800, PAGE_4K), (0x1000, 0, PAGE_2M),
                                                (1 << 47, 0, PAGE_4K), (0, 0, 8192)])
def test_map_page_refuses_bad_arguments(mem, vaddr, paddr, size):
    allocator = PageTableAllocator(mem, PAGE_TABLES_ADDR, PAGE_TABLES_END)
    with pytest.raises(PageTableError):
        map_page(mem, allocator.alloc(), vaddr, paddr, size, RW, allocator)


def test_allocator_stops_at_the_end_of_its_area(mem):
    allocator = PageTableAllocator(mem, 0x10000, 0x12000)
    allocator.alloc(), allocator.alloc()
    with pytest.raises(PageTableError, match="full"):
        allocator.alloc()


# -- property: the walk returns exactly what was mapped ------------------------------------

# Regions where mappings cluster (so they share tables) besides anywhere at all.
_HOT_SPOTS = [0, 0x7F00_0000_0000, 0xFFFF_8000_0000_0000, 0x0000_0080_0000_0000]


def _sign_extend(addr: int) -> int:
    addr &= (1 << 48) - 1
    return addr | (0xFFFF << 48) if addr & 1 << 47 else addr


@st.composite
def mappings_4level(draw):
    """Non-overlapping (vaddr, paddr, size, writable, user, nx) pages."""
    result = []
    for _ in range(draw(st.integers(1, 10))):
        size = draw(st.sampled_from([PAGE_4K, PAGE_2M, PAGE_1G]))
        if draw(st.booleans()):
            base = draw(st.sampled_from(_HOT_SPOTS))
            vaddr = _sign_extend(base + draw(st.integers(0, 64)) * size)
        else:
            vaddr = _sign_extend(draw(st.integers(0, (1 << 48) // size - 1)) * size)
        if any(vaddr < v + s and v < vaddr + size for v, _, s, *_ in result):
            continue
        paddr = draw(st.integers(0, (1 << 46) // size - 1)) * size
        result.append((vaddr, paddr, size, *draw(st.tuples(st.booleans(), st.booleans(),
                                                           st.booleans()))))
    return result


def _flags(writable: bool, user: bool, nx: bool) -> PageFlag:
    return (RW if writable else PageFlag(0)) | (U if user else 0) | (NX if nx else 0)


@settings(max_examples=100, deadline=None)
@given(mappings=mappings_4level(), data=st.data())
def test_walk_4level_returns_the_mapped_physical_address(mappings, data):
    mem = GuestMemory.with_size(2 * MIB)
    builder = PageTableBuilder(mem, 0x10000, 0x80000)
    for vaddr, paddr, size, writable, user, nx in mappings:
        builder.map(vaddr, paddr, size, _flags(writable, user, nx))
    for vaddr, paddr, size, writable, user, nx in mappings:
        offset = data.draw(st.integers(0, size - 1))
        t = walk_4level(mem, builder.cr3, vaddr + offset)
        assert t.valid, t.fault_reason
        assert (t.physical, t.page_size) == (paddr + offset, size)
        assert (t.writable, t.user, t.nx) == (writable, user, nx)
    probe = _sign_extend(data.draw(st.integers(0, (1 << 48) - 1)))
    if not any(v <= probe < v + s for v, _, s, *_ in mappings):
        t = walk_4level(mem, builder.cr3, probe)
        assert not t.valid and "not present" in t.fault_reason


@st.composite
def mappings_32bit(draw):
    result = []
    for _ in range(draw(st.integers(1, 10))):
        size = draw(st.sampled_from([PAGE_4K, PAGE_4M]))
        vaddr = draw(st.integers(0, (1 << 32) // size - 1)) * size
        if any(vaddr < v + s and v < vaddr + size for v, _, s, *_ in result):
            continue
        phys_bits = 40 if size == PAGE_4M else 32  # PSE-36 for 4 MiB pages
        paddr = draw(st.integers(0, (1 << phys_bits) // size - 1)) * size
        result.append((vaddr, paddr, size, draw(st.booleans()), draw(st.booleans())))
    return result


@settings(max_examples=100, deadline=None)
@given(mappings=mappings_32bit(), data=st.data())
def test_walk_32bit_returns_the_mapped_physical_address(mappings, data):
    mem = GuestMemory.with_size(2 * MIB)
    builder = PageTableBuilder(mem, 0x10000, 0x80000, four_level=False)
    for vaddr, paddr, size, writable, user in mappings:
        builder.map(vaddr, paddr, size, _flags(writable, user, False))
    for vaddr, paddr, size, writable, user in mappings:
        offset = data.draw(st.integers(0, size - 1))
        t = walk_32bit(mem, builder.cr3, vaddr + offset)
        assert t.valid, t.fault_reason
        assert (t.physical, t.page_size, t.writable, t.user) == (paddr + offset, size,
                                                                 writable, user)
