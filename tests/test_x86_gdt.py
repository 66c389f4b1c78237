"""Segment descriptors (SDM vol. 3A 3.4.5) and the flat GDT in guest memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.memory import GuestMemory
from minikvm.x86.gdt import (
    FLAT_CODE32,
    FLAT_CODE64,
    FLAT_DATA,
    NULL_DESCRIPTOR,
    SegmentDescriptor,
    flat_gdt,
    load_segment,
    selector_index,
    write_gdt,
)
from minikvm.x86.layout import GDT_ADDR, GDT_END, SEL_CODE32, SEL_CODE64, SEL_DATA, SEL_NULL


# The values every x86 OS tutorial and boot loader writes for a flat ring-0 GDT
# (Linux's boot GDT uses the same: GDT_ENTRY(0xa09b, 0, 0xfffff) for 64-bit code).
@pytest.mark.parametrize("descriptor, raw", [
    (FLAT_CODE64, 0x00AF_9B00_0000_FFFF),
    (FLAT_CODE32, 0x00CF_9B00_0000_FFFF),
    (FLAT_DATA, 0x00CF_9300_0000_FFFF),
    (NULL_DESCRIPTOR, 0),
])
def test_flat_descriptors_pack_to_the_well_known_values(descriptor, raw):
    assert descriptor.pack() == raw
    assert SegmentDescriptor.unpack(raw) == descriptor


def test_base_and_limit_are_split_across_the_descriptor():
    desc = SegmentDescriptor(base=0x1234_5678, limit=0xA_BCDE, type=0x3)
    raw = desc.pack()
    assert raw & 0xFFFF == 0xBCDE                      # limit 15:0
    assert (raw >> 16) & 0xFF_FFFF == 0x34_5678        # base 23:0
    assert (raw >> 48) & 0xF == 0xA                    # limit 19:16
    assert raw >> 56 == 0x12                           # base 31:24


def test_granularity_scales_the_limit_to_4k_units():
    assert SegmentDescriptor(limit=0xF_FFFF, g=1).byte_limit == 0xFFFF_FFFF
    assert SegmentDescriptor(limit=0x1, g=1).byte_limit == 0x1FFF
    assert SegmentDescriptor(limit=0xFFFF, g=0).byte_limit == 0xFFFF


descriptors = st.builds(
    SegmentDescriptor, base=st.integers(0, 2**32 - 1), limit=st.integers(0, 2**20 - 1),
    type=st.integers(0, 15), s=st.integers(0, 1), dpl=st.integers(0, 3),
    present=st.integers(0, 1), avl=st.integers(0, 1), l=st.integers(0, 1),
    db=st.integers(0, 1), g=st.integers(0, 1))


@settings(max_examples=100)
@given(descriptors)
def test_pack_and_unpack_are_inverse(desc):
    assert SegmentDescriptor.unpack(desc.pack()) == desc


@settings(max_examples=100)
@given(st.integers(0, 2**64 - 1))
def test_any_guest_written_value_decodes_without_error(raw):
    assert SegmentDescriptor.unpack(raw).pack() == raw


@pytest.mark.parametrize("field, value", [("base", 1 << 32), ("limit", 1 << 20), ("type", 16),
                                          ("dpl", 4), ("g", 2)])
def test_out_of_range_fields_are_refused(field, value):
    with pytest.raises(ValueError):
        SegmentDescriptor(**{field: value})


def test_flat_gdt_has_the_documented_selectors():
    table = flat_gdt()
    assert table[selector_index(SEL_NULL)] == NULL_DESCRIPTOR
    assert table[selector_index(SEL_CODE64)].l == 1
    assert table[selector_index(SEL_CODE32)].db == 1
    assert table[selector_index(SEL_DATA)] == FLAT_DATA


def test_write_gdt_stores_the_descriptors_and_returns_the_limit():
    mem = GuestMemory.with_size(1 << 20)
    limit = write_gdt(mem, GDT_ADDR)
    assert limit == 4 * 8 - 1
    assert GDT_ADDR + limit < GDT_END
    assert mem.read_u64(GDT_ADDR + SEL_CODE64) == 0x00AF_9B00_0000_FFFF
    assert mem.read_u64(GDT_ADDR + SEL_DATA) == 0x00CF_9300_0000_FFFF


def test_write_gdt_refuses_to_overflow_its_area():
    mem = GuestMemory.with_size(1 << 20)
    with pytest.raises(ValueError, match="overflow"):
        write_gdt(mem, GDT_ADDR, [NULL_DESCRIPTOR] * 33)


class Segment:
    """A stand-in with kvm_segment's field names."""


def test_load_segment_fills_the_hidden_part_with_the_byte_limit():
    seg = Segment()
    load_segment(seg, SEL_CODE32, FLAT_CODE32)
    assert (seg.selector, seg.base, seg.limit, seg.type, seg.s, seg.dpl, seg.present,
            seg.l, seg.db, seg.g, seg.avl, seg.unusable) == (
        SEL_CODE32, 0, 0xFFFF_FFFF, 0xB, 1, 0, 1, 0, 1, 1, 0, 0)


def test_descriptions_name_the_kind_of_segment():
    assert FLAT_CODE64.describe().startswith("code64 base=0x0 limit=0xffffffff")
    assert FLAT_DATA.describe().startswith("data32")
    assert NULL_DESCRIPTOR.describe() == "null"
