"""The memory map and the named bits: the contract guests and the VMM share."""

from __future__ import annotations

from minikvm.memory import GuestMemory
from minikvm.x86 import layout
from minikvm.x86.flags import Cr0, Cr4, Efer, PageFlag, Rflags, SegmentType, flag_names
from minikvm.x86.paging import build_identity_long_mode

DEFAULT_RAM = 2 << 20


def test_memory_map_is_in_address_order_without_overlaps():
    entries = layout.MEMORY_MAP
    for first, second in zip(entries, entries[1:]):
        assert first.start < first.end <= second.start, (first.name, second.name)


def test_everything_the_vmm_writes_lies_in_the_default_ram():
    for area in layout.VMM_RESERVED:
        assert area.end <= DEFAULT_RAM
    assert layout.STACK_TOP <= DEFAULT_RAM and layout.ELF_LOAD_MIN < DEFAULT_RAM


def test_kvm_areas_lie_outside_ram_below_4g_and_clear_of_virtio():
    tss = range(layout.KVM_TSS_ADDR, layout.KVM_TSS_ADDR + layout.KVM_TSS_SIZE)
    identity = range(layout.KVM_IDENTITY_MAP_ADDR, layout.KVM_IDENTITY_MAP_ADDR + 4096)
    assert layout.KVM_TSS_SIZE == 3 * 4096  # KVM_SET_TSS_ADDR takes three pages
    assert identity.stop == tss.start and tss.stop <= 1 << 32
    assert identity.start > layout.VIRTIO_MMIO_BASE + 0x10_0000 > 256 << 20


def test_stack_sits_between_the_result_page_and_the_page_tables():
    assert layout.RESULT_ADDR + 4096 < layout.STACK_TOP <= layout.PAGE_TABLES_ADDR
    assert layout.STACK_TOP % 16 == 0


def test_real_mode_stack_and_flat_image_share_the_first_64k():
    assert layout.FLAT_LOAD_ADDR < layout.STACK_TOP_REAL <= 0xFFFF
    assert layout.GDT_END <= layout.FLAT_LOAD_ADDR


def test_long_mode_identity_tables_fit_in_the_page_table_area():
    mem = GuestMemory.with_size(DEFAULT_RAM)
    tables = build_identity_long_mode(mem, layout.PAGE_TABLES_ADDR, end=layout.PAGE_TABLES_END)
    assert tables.end <= layout.PAGE_TABLES_END


def test_gdt_selectors_are_consecutive_ring0_gdt_entries():
    selectors = [layout.SEL_NULL, layout.SEL_CODE64, layout.SEL_CODE32, layout.SEL_DATA]
    assert selectors == [0, 8, 16, 24]
    assert layout.GDT_ADDR + selectors[-1] + 8 <= layout.GDT_END


def test_map_entry_at_names_the_area():
    assert layout.map_entry_at(0x70123).name == "page tables"
    assert layout.map_entry_at(0x12_3456).name == "ELF image"
    assert layout.map_entry_at(0xD000_0000).name == "virtio-mmio"
    assert layout.map_entry_at(0x0600) is None


def test_linux_long_mode_cr0_decodes_to_its_flag_names():
    # CR0 as Linux runs with it on x86-64 (arch/x86: PE MP ET NE WP AM PG)
    assert flag_names(Cr0(0x8005_0033)) == "PG|AM|WP|NE|ET|MP|PE"


def test_flag_names_show_fields_and_unknown_bits():
    assert flag_names(Rflags(0x3202)) == "IOPL=3|IF|FIXED"
    assert flag_names(Efer(0x500 | 1 << 40)) == "LMA|LME|0x10000000000"
    assert flag_names(Cr4(0)) == "0"
    assert flag_names(SegmentType(0xB)) == "EXECUTABLE|RW|ACCESSED"


def test_architectural_bit_positions():
    # Spot checks against the SDM's register figures (2-7 CR0/CR4, table 2-1 EFER).
    assert (Cr0.PE, Cr0.PG, Cr0.WP) == (1, 1 << 31, 1 << 16)
    assert (Cr4.PSE, Cr4.PAE, Cr4.OSFXSR) == (1 << 4, 1 << 5, 1 << 9)
    assert (Efer.LME, Efer.LMA, Efer.NXE) == (1 << 8, 1 << 10, 1 << 11)
    assert (PageFlag.PS, PageFlag.NX) == (1 << 7, 1 << 63)
